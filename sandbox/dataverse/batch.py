"""The multipart/mixed framing of the Dataverse emulator's $batch: parsing the request's parts and
formatting the response's (change sets are not supported)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from sandbox.dataverse.protocol import bad_request

MAX_BATCH_REQUESTS = 1000


@dataclass
class BatchPart:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


def parse_batch(content_type: str, body: bytes) -> list[BatchPart]:
    m = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not content_type.lower().startswith("multipart/mixed") or not m:
        raise bad_request("The batch request must have a Content-Type of multipart/mixed with a boundary.")
    boundary = m.group(1).encode()
    text = body.replace(b"\r\n", b"\n")
    chunks = text.split(b"--" + boundary)
    parts: list[BatchPart] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.lstrip(b"\n")
        head, _, rest = chunk.partition(b"\n\n")
        outer = _headers(head)
        if outer.get("content-type", "").lower().startswith("multipart/mixed"):
            raise bad_request("Change sets are not supported by this sandbox; send GET requests outside change sets.")
        if not outer.get("content-type", "").lower().startswith("application/http"):
            raise bad_request("Each batch part must have Content-Type application/http.")
        inner_head, _, inner_body = rest.partition(b"\n\n")
        lines = inner_head.decode("utf-8", "replace").split("\n")
        m = re.fullmatch(r"([A-Za-z]+) (.+?)(?: HTTP/\d\.\d)?", lines[0].strip())
        if not m:
            raise bad_request(f"Invalid request line in batch part: '{lines[0].strip()}'.")
        parts.append(BatchPart(m.group(1).upper(), m.group(2), _headers("\n".join(lines[1:]).encode()),
                               inner_body.rstrip(b"\n")))
        if len(parts) > MAX_BATCH_REQUESTS:
            raise bad_request(f"The number of requests in a batch exceeds the limit of {MAX_BATCH_REQUESTS}.")
    return parts


def _headers(raw: bytes) -> dict[str, str]:
    out = {}
    for line in raw.decode("utf-8", "replace").split("\n"):
        if ":" in line:
            k, _, v = line.partition(":")
            out[k.strip().lower()] = v.strip()
    return out


_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 412: "Precondition Failed",
            429: "Too Many Requests", 500: "Internal Server Error"}


def format_batch(responses: list[tuple[int, dict[str, str], bytes]]) -> tuple[str, bytes]:
    boundary = f"batchresponse_{uuid.uuid4()}"
    out = []
    for status, headers, body in responses:
        lines = [f"--{boundary}", "Content-Type: application/http", "Content-Transfer-Encoding: binary", "",
                 f"HTTP/1.1 {status} {_REASONS.get(status, '')}".rstrip()]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append("")
        out.append("\r\n".join(lines).encode() + b"\r\n" + body + b"\r\n")
    payload = b"".join(out) + f"--{boundary}--\r\n".encode()
    return f"multipart/mixed; boundary={boundary}", payload

