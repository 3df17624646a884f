"""Files served without authentication at `/files/{name}`, like a public blob URL (a solution zip for
`source_url`), put and removed through `/_control/files`."""

from __future__ import annotations

import hashlib
import re
import threading
from typing import Any

from werkzeug.wrappers import Request, Response

FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class HostedFiles:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._lock = threading.Lock()
        self._files: dict[str, bytes] = {}

    def clear(self) -> None:
        with self._lock:
            self._files.clear()

    def put(self, name: str, data: bytes) -> dict[str, Any]:
        if not isinstance(name, str) or not FILE_NAME.match(name):
            raise ValueError("file name must match [A-Za-z0-9][A-Za-z0-9._-]*")
        with self._lock:
            self._files[name] = data
        return {"name": name, "url": f"{self.base_url}/files/{name}", "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest()}

    def remove(self, name: str) -> None:
        with self._lock:
            self._files.pop(name, None)

    def serve(self, request: Request, name: str) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response("Method Not Allowed", status=405, headers={"Allow": "GET, HEAD"})
        with self._lock:
            data = self._files.get(name)
        if data is None:
            return Response("The specified blob does not exist.", status=404, mimetype="text/plain")
        mimetype = "application/zip" if name.lower().endswith(".zip") else "application/octet-stream"
        return Response(data, status=200, mimetype=mimetype)
