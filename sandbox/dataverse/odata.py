"""The OData subset of the Dataverse emulator: $select, $filter (eq/ne/gt/ge/lt/le, and/or/not,
contains/startswith/endswith), $top, $expand, server-driven paging with $skiptoken paging cookies, and
the projection of a row into its JSON shape. No organization state lives here.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote

from sandbox.common import GUID_PATTERN
from sandbox.dataverse.protocol import bad_request
from sandbox.dataverse.schema import BOOL, DATE, GUID, INT, STR, Table, unknown_property

# ---------------------------------------------------------------- server-driven paging

MAX_PAGE_SIZE = 5000  # Dataverse's default and largest page (docs/sandbox.md, "Paging")
_MAXPAGESIZE = re.compile(r"(?:^|[,;\s])odata\.maxpagesize\s*=\s*\"?(\d+)\"?", re.I)
_PAGENUMBER = re.compile(r'pagenumber="(\d+)"')
_LAST = re.compile(r'last="\{?([0-9a-fA-F-]{36})\}?"')


def preferred_page_size(prefer: str) -> int | None:
    """N of `Prefer: odata.maxpagesize=N` (capped at 5000), or None when not asked for."""
    m = _MAXPAGESIZE.search(prefer or "")
    if not m:
        return None
    size = int(m.group(1))
    if size < 1:
        raise bad_request("The value of odata.maxpagesize must be a positive integer.")
    return min(size, MAX_PAGE_SIZE)


def skiptoken(key: str, page_number: int, first: str, last: str) -> str:
    """A paging cookie in the shape Dataverse puts in @odata.nextLink's $skiptoken."""
    inner = f'<cookie page="{page_number - 1}"><{key} last="{{{last.upper()}}}" first="{{{first.upper()}}}" /></cookie>'
    return f'<cookie pagenumber="{page_number}" pagingcookie="{quote(quote(inner, safe=""), safe="")}" istracking="False" />'


def page_start(token: str, rows: list[dict], key: str, size: int) -> tuple[int, int]:
    """(index of the first row of the page a $skiptoken asks for, that page's number)."""
    m = _PAGENUMBER.search(token or "")
    if not m:
        raise bad_request(f"Invalid $skiptoken value '{token[:80]}'.")
    page = int(m.group(1))
    last = _LAST.search(unquote(unquote(token)))
    if last:  # resume after the last row served, like the paging cookie does
        wanted = last.group(1).lower()
        for index, row in enumerate(rows):
            if row.get(key) == wanted:
                return index + 1, page
    return max(0, (page - 1) * size), page


# ---------------------------------------------------------------- $select / $top / $expand

def parse_select(table: Table, text: str | None) -> list[str] | None:
    if text is None:
        return None
    cols = [c.strip() for c in text.split(",") if c.strip()]
    for c in cols:
        if c not in table.columns:
            raise unknown_property(c, table)
    return cols


def parse_top(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise bad_request(f"Invalid value '{text}' for $top query option found.")
    return int(text)


def parse_expand(table: Table, text: str | None) -> list[tuple[str, dict[str, str]]]:
    """`nav($select=a,b;$filter=…)` items; only the navigation properties the table declares."""
    if not text:
        return []
    out = []
    for item in _split_top_level(text, ","):
        m = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", item)
        if not m:
            raise bad_request(f"Syntax error in $expand: '{item}'.")
        nav, inner = m.group(1), m.group(2) or ""
        if nav not in table.navigations:
            raise unknown_property(nav, table)
        opts = {}
        for opt in _split_top_level(inner, ";"):
            if opt.strip():
                k, _, v = opt.partition("=")
                opts[k.strip()] = v
        out.append((nav, opts))
    return out


def _split_top_level(text: str, sep: str) -> list[str]:
    parts, depth, cur, quote = [], 0, [], False
    for ch in text:
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        if ch == sep and depth == 0 and not quote:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def etag(row: dict) -> str:
    return f'W/"{row.get("versionnumber", 0)}"'


def project(table: Table, row: dict, select: list[str] | None) -> dict:
    cols = select if select is not None else list(table.columns)
    out: dict[str, Any] = {"@odata.etag": etag(row)} if "versionnumber" in table.columns else {}
    for c in cols:
        out[c] = row.get(c)
    if table.key not in out:
        out[table.key] = row.get(table.key)
    return out


# ---------------------------------------------------------------- $filter

_TOKEN = re.compile(
    rf"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<guid>{GUID_PATTERN})"
    r"|(?P<num>-?\d+(?:\.\d+)?)|(?P<word>[A-Za-z_][\w.]*)|(?P<punc>[(),]))"
)


def _tokenize(text: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise bad_request(f"Syntax error at position {pos} in '{text}'.")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent: or-expr := and-expr ('or' and-expr)*; and-expr := cmp ('and' cmp)*;
    cmp := '(' or-expr ')' | 'not' cmp | operand (eq|ne) operand | func '(' col ',' str ')'."""

    def __init__(self, table: Table, text: str):
        self.table, self.text, self.toks, self.i = table, text, _tokenize(text), 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def parse(self):
        node = self.or_expr()
        if self.i != len(self.toks):
            raise bad_request(f"Syntax error: unexpected '{self.peek()[1]}' in $filter '{self.text}'.")
        return node

    def or_expr(self):
        node = self.and_expr()
        while self.peek() == ("word", "or"):
            self.take()
            node = ("or", node, self.and_expr())
        return node

    def and_expr(self):
        node = self.cmp()
        while self.peek() == ("word", "and"):
            self.take()
            node = ("and", node, self.cmp())
        return node

    def cmp(self):
        kind, val = self.peek()
        if (kind, val) == ("punc", "("):
            self.take()
            node = self.or_expr()
            if self.take() != ("punc", ")"):
                raise bad_request(f"Syntax error: ')' expected in $filter '{self.text}'.")
            return node
        if (kind, val) == ("word", "not"):
            self.take()
            return ("not", self.cmp())
        if kind == "word" and val in ("contains", "startswith", "endswith"):
            self.take()
            if self.take() != ("punc", "("):
                raise bad_request(f"Syntax error: '(' expected after {val}.")
            col = self.operand()
            if self.take() != ("punc", ","):
                raise bad_request(f"Syntax error: ',' expected in {val}().")
            lit = self.operand()
            if self.take() != ("punc", ")"):
                raise bad_request(f"Syntax error: ')' expected in {val}().")
            return (val, col, lit)
        left = self.operand()
        op = self.take()
        if op[0] != "word" or op[1] not in ("eq", "ne", "gt", "ge", "lt", "le"):
            raise bad_request(f"Syntax error: comparison operator expected in $filter '{self.text}'.")
        right = self.operand()
        self._check_types(left, right, op[1])
        return (op[1], left, right)

    def operand(self):
        kind, val = self.take()
        if kind == "str":
            return ("lit", STR, val[1:-1].replace("''", "'"))
        if kind == "guid":
            return ("lit", GUID, val.lower())
        if kind == "num":
            return ("lit", INT, float(val) if "." in val else int(val))
        if kind == "word":
            if val == "null":
                return ("lit", None, None)
            if val in ("true", "false"):
                return ("lit", BOOL, val == "true")
            if val not in self.table.columns:
                raise unknown_property(val, self.table)
            return ("col", self.table.columns[val], val)
        raise bad_request(f"Syntax error: operand expected in $filter '{self.text}'.")

    def _check_types(self, left, right, op):
        lt, rt = left[1], right[1]
        if lt is None or rt is None:
            return
        numeric = {INT, "Edm.Double"}
        if lt != rt and not (lt in numeric and rt in numeric) and not ({lt, rt} <= {STR, DATE}):
            names = {"eq": "Equal", "ne": "NotEqual", "gt": "GreaterThan", "ge": "GreaterThanOrEqual",
                     "lt": "LessThan", "le": "LessThanOrEqual"}
            raise bad_request(f"A binary operator with incompatible types was detected. Found operand types "
                              f"'{lt}' and '{rt}' for operator kind '{names[op]}'.")


def parse_filter(table: Table, text: str | None):
    if text is None:
        return None
    if not text.strip():
        raise bad_request("The $filter expression is empty.")
    return _Parser(table, text).parse()


def _value(node, row):
    if node[0] == "lit":
        return node[2]
    return row.get(node[2])


def _norm(v):
    if isinstance(v, str):
        return v.casefold()  # Dataverse string comparison is case-insensitive (default collation)
    return v


def matches(node, row: dict) -> bool:
    if node is None:
        return True
    op = node[0]
    if op == "or":
        return matches(node[1], row) or matches(node[2], row)
    if op == "and":
        return matches(node[1], row) and matches(node[2], row)
    if op == "not":
        return not matches(node[1], row)
    if op in ("contains", "startswith", "endswith"):
        hay, needle = _value(node[1], row), _value(node[2], row)
        if hay is None or needle is None:
            return False
        hay, needle = _norm(str(hay)), _norm(str(needle))
        return {"contains": needle in hay, "startswith": hay.startswith(needle),
                "endswith": hay.endswith(needle)}[op]
    a, b = _norm(_value(node[1], row)), _norm(_value(node[2], row))
    if op == "eq":
        return a == b
    if op == "ne":
        return a != b
    if a is None or b is None:
        return False
    return {"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b}[op]
