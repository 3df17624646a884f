"""Which hosts may receive a token: Dynamics 365 instance-URL validation per cloud, and the
Entra authority host and Microsoft Graph resource of each cloud.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from .errors import InvalidAuthorityHost, InvalidInstanceUrl, UnknownCloud
from .masking import quote

CLOUDS = ("public", "usgovernment", "dod", "china")

_AUTHORITY_HOSTS = {
    "public": "login.microsoftonline.com",
    "usgovernment": "login.microsoftonline.us",
    "dod": "login.microsoftonline.us",
    "china": "login.chinacloudapi.cn",
}

_GRAPH = {
    "public": "https://graph.microsoft.com",
    "usgovernment": "https://graph.microsoft.us",
    "dod": "https://dod-graph.microsoft.us",
    "china": "https://microsoftgraph.chinacloudapi.cn",
}

# Names people and pulumi-azuread / ARM_ENVIRONMENT use for the same clouds.
_CLOUD_ALIASES = {
    "public": "public",
    "global": "public",
    "azurecloud": "public",
    "azurepubliccloud": "public",
    "gcc": "public",
    "usgovernment": "usgovernment",
    "usgov": "usgovernment",
    "azureusgovernment": "usgovernment",
    "azureusgovernmentcloud": "usgovernment",
    "gcchigh": "usgovernment",
    "dod": "dod",
    "usgovernmentdod": "dod",
    "china": "china",
    "azurechina": "china",
    "azurechinacloud": "china",
}

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_PATTERNS: dict[str, re.Pattern[str]] = {
    # public, regional crmN (crm9 is GCC, which belongs to the public cloud), and the api. variant
    "public": re.compile(rf"^{_LABEL}\.(?:api\.)?crm\d*\.dynamics\.com$"),
    "usgovernment": re.compile(rf"^{_LABEL}\.(?:api\.)?crm\.microsoftdynamics\.us$"),
    "dod": re.compile(rf"^{_LABEL}\.(?:api\.)?crm\.appsplatform\.us$"),
    "china": re.compile(rf"^{_LABEL}\.(?:api\.)?crm\.dynamics\.cn$"),
}

_ACCEPTED = {
    "public": "https://{org}.crm[N].dynamics.com or https://{org}.api.crm[N].dynamics.com (GCC: crm9)",
    "usgovernment": "https://{org}.crm.microsoftdynamics.us (GCC High)",
    "dod": "https://{org}.crm.appsplatform.us (DoD)",
    "china": "https://{org}.crm.dynamics.cn",
}

_LOOPBACK_PATH = re.compile(r"^(?:/[A-Za-z0-9._~-]+)*/?$")


def normalize_cloud(cloud: str | None) -> str:
    """The canonical cloud name for `cloud` (accepts pulumi-azuread/ARM spellings); UnknownCloud if unknown."""
    if cloud is None or str(cloud).strip() == "":
        return "public"
    key = re.sub(r"[\s_-]", "", str(cloud)).lower()
    try:
        return _CLOUD_ALIASES[key]
    except KeyError:
        raise UnknownCloud(
            f"unknown cloud {quote(cloud)}", hint=f"use one of: {', '.join(CLOUDS)} (GCC is 'public')"
        ) from None


def authority_host(cloud: str) -> str:
    """Entra login host of a cloud, e.g. login.microsoftonline.com."""
    return _AUTHORITY_HOSTS[normalize_cloud(cloud)]


def graph_resource(cloud: str) -> str:
    """Microsoft Graph resource (token audience) of a cloud, e.g. https://graph.microsoft.com."""
    return _GRAPH[normalize_cloud(cloud)]


# Entra login hosts a credential may be sent to: each cloud's, plus Microsoft's documented aliases.
ENTRA_LOGIN_HOSTS = frozenset({*_AUTHORITY_HOSTS.values(), "login.microsoft.com", "login.windows.net",
                               "sts.windows.net", "login.partner.microsoftonline.cn"})


def validate_authority_host(host: str, *, allow_loopback: bool = False) -> str:
    """An authority host override (`host[:port]`) that may receive the deploying identity's credential:
    an Entra login host, or — only with the sandbox opt-in — a loopback host. Normalized, lower case."""
    value = (host or "").strip().removeprefix("https://").rstrip("/").lower()
    parts = urlsplit(f"https://{value}")
    if parts.path or parts.query or parts.fragment or parts.username or not parts.hostname:
        raise InvalidAuthorityHost(
            f"authorityHost {quote(host, url=True)} is not a host name; expected e.g. login.microsoftonline.com",
            hint="set lead-destination:authorityHost to a host (and optional port) only, or leave it unset",
        )
    if parts.hostname in ENTRA_LOGIN_HOSTS and parts.port in (None, 443):
        return parts.hostname
    if allow_loopback and is_loopback_host(parts.hostname):
        return value
    accepted = ", ".join(sorted(ENTRA_LOGIN_HOSTS))
    raise InvalidAuthorityHost(
        f"authorityHost {quote(host, url=True)} is not an Entra login host, so no credential is sent to it; "
        f"accepted: {accepted}"
        + (" or a loopback host (sandbox)" if allow_loopback else ""),
        hint="leave lead-destination:authorityHost unset to use the cloud's login host "
        "(lead-destination:cloud); a loopback host needs lead-destination:allowLoopback true (sandbox only)",
    )


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cloud_of_host(host: str) -> str | None:
    """The cloud whose Dynamics host pattern matches `host`, or None."""
    for cloud, pattern in _HOST_PATTERNS.items():
        if pattern.match(host):
            return cloud
    return None


def _refuse(url: str, reason: str, cloud: str, allow_loopback: bool) -> InvalidInstanceUrl:
    accepted = _ACCEPTED[cloud]
    if allow_loopback:
        accepted += ", or a loopback sandbox URL https://127.0.0.1:{port}/orgs/{name}"
    return InvalidInstanceUrl(
        f"instance URL {quote(url, url=True)} refused: {reason}",
        hint=f"Accepted for cloud '{cloud}': {accepted}; https only, no path, query, user info or port",
    )


def validate_instance_url(url: str, *, cloud: str = "public", allow_loopback: bool = False) -> str:
    """Return the normalized instance URL (lower-case host, no trailing slash) or raise InvalidInstanceUrl.

    Only https hosts matching the Dynamics host pattern of `cloud` are accepted; loopback hosts
    (127.0.0.0/8, localhost, ::1) only with `allow_loopback`, and then with any port and a path.
    """
    cloud = normalize_cloud(cloud)
    if not isinstance(url, str) or not url.strip():
        raise _refuse(str(url), "empty", cloud, allow_loopback)
    raw = url.strip()
    if any(ch.isspace() or ord(ch) < 0x20 for ch in raw) or not raw.isascii():
        raise _refuse(raw, "contains whitespace, control or non-ASCII characters", cloud, allow_loopback)
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise _refuse(raw, "not a valid URL (host or port)", cloud, allow_loopback) from None
    if parts.scheme.lower() != "https":
        raise _refuse(raw, "only https is accepted", cloud, allow_loopback)
    if "@" in parts.netloc:
        raise _refuse(raw, "user info is not allowed", cloud, allow_loopback)
    if "?" in raw or "#" in raw:
        raise _refuse(raw, "query strings and fragments are not allowed", cloud, allow_loopback)
    host = (parts.hostname or "").lower()
    if not host:
        raise _refuse(raw, "no host", cloud, allow_loopback)

    if is_loopback_host(host):
        if not allow_loopback:
            raise _refuse(raw, "loopback hosts are only accepted with the sandbox opt-in (allowLoopback)",
                          cloud, allow_loopback)
        if not _LOOPBACK_PATH.match(parts.path or "/"):
            raise _refuse(raw, "unexpected characters in the path", cloud, allow_loopback)
        netloc = f"[{host}]" if ":" in host else host
        if port is not None:
            netloc += f":{port}"
        return f"https://{netloc}{parts.path.rstrip('/')}"

    if not _HOST_PATTERNS[cloud].match(host):
        other = cloud_of_host(host)
        if other is not None:
            raise _refuse(raw, f"the host belongs to the '{other}' cloud, but the configured cloud is '{cloud}'",
                          cloud, allow_loopback)
        raise _refuse(raw, "not a Dynamics 365 host", cloud, allow_loopback)
    if port not in (None, 443):
        raise _refuse(raw, "only the default https port is accepted", cloud, allow_loopback)
    if parts.path not in ("", "/"):
        raise _refuse(raw, "a path is not allowed (give the organization root URL)", cloud, allow_loopback)
    return f"https://{host}"
