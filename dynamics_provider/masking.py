"""The one way a message quotes a value it was given: `quote`. URL credentials (user info), queries and
fragments are cut from every URL in it, secrets are replaced, and long values are shortened.

Every message of the program and of the providers that quotes a configuration value or an input
goes through `quote`, so what may be echoed is decided here and nowhere else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

SECRET = "[secret]"  # noqa: S105 - the placeholder shown instead of a secret
UNSET = "<unset>"
MAX_SHOWN = 120

# scheme://[userinfo@]host[:port][/path][?query][#fragment], inside any text
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s'\"<>]*)")


def mask_url(text: str, *, bare: bool = False) -> str:
    """`text` with the user info, query and fragment of every URL in it cut (`***@`, `?…`).

    `bare`: `text` is one URL-valued setting, perhaps without a scheme (`user:pw@host?x`): cut it too.
    """

    def cut(rest: str) -> str:
        query = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
        head = rest if query < 0 else rest[:query]
        if "@" in head:  # the user info ends at the last @ before the query (it may hold '/' or ':')
            head = "***@" + head.rsplit("@", 1)[1]
        return head if query < 0 else head + "?…"

    if bare and not _URL.match(text.strip()):
        return cut(text)
    return _URL.sub(lambda m: m.group("scheme") + cut(m.group("rest")), text)


def quote(value: Any, *, secret: bool = False, url: bool = False) -> str:
    """How a message shows `value`: `[secret]` for a secret, `<unset>` for nothing, a string in quotes
    with URL credentials and queries cut, an object as the names of its fields (their values can hold
    anything), other values as JSON; at most MAX_SHOWN characters. `url`: the value is one URL or host
    setting, so its user info and query are cut even without a scheme."""
    if value is None:
        return UNSET
    if secret:
        return SECRET
    if isinstance(value, Mapping):
        names = ", ".join(str(k) for k in value)
        return f"an object with {names}" if names else "an empty object"
    if isinstance(value, str):
        text = mask_url(value, bare=url)
        text = text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"
        return repr(text)
    if isinstance(value, list | tuple):
        if any(isinstance(item, Mapping) for item in value):
            return f"a list of {len(value)} item(s)"
        text = "[" + ", ".join(quote(item, url=url) for item in value) + "]"
        return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "…"
