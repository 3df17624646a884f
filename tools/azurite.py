"""Azurite, Microsoft's Azure Storage emulator, as a Pulumi `azblob://` state backend for the tests and the bench.

`make azurite` installs the pinned npm package (tools/azurite/package.json + package-lock.json) into
.tools/azurite. `Azurite.start(tmp_dir)` runs its Blob service on a free port with its data under
`tmp_dir`, creates the state container, and returns a handle whose `backend_url` and `env` a Pulumi CLI
uses as its backend; `.stop()` ends it. With `latency_ms`, a small proxy in front of it holds every
storage request that long before passing it on (what a storage account across a network costs).

    .venv/bin/python -m tools.azurite --latency-ms 20   # serve in the foreground, print the export lines

Sources:
- The development account and key Azurite accepts: "Use a well-known storage account and key",
  https://learn.microsoft.com/azure/storage/common/storage-connect-azurite#use-a-well-known-storage-account-and-key
  (not a secret: published by Microsoft, it opens only a local emulator).
- The IP-style address (`http://127.0.0.1:<port>/<account>/<container>`): "IP-style URL",
  https://learn.microsoft.com/azure/storage/common/storage-use-azurite#ip-style-url
- The container create (`PUT ?restype=container`, 201 Created / 409 ContainerAlreadyExists):
  https://learn.microsoft.com/rest/api/storageservices/create-container ; its Shared Key signature:
  https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key
- Pulumi's URL for Azurite (`localemu=true&domain=…&protocol=http`, account from AZURE_STORAGE_ACCOUNT, key
  from AZURE_STORAGE_KEY): gocloud.dev's azureblob URL opener, which Pulumi's DIY backend uses (module
  gocloud.dev v0.46.1-0.20260810195832-b5401c07b5f1, blob/azureblob/azureblob.go, as the CLI pin resolves it).
  The container must exist: Pulumi does not create it (login answers 404 ContainerNotFound).
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import hashlib
import hmac
import http.client
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
AZURITE_DIR = REPO / ".tools" / "azurite"
AZURITE_BLOB = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="  # noqa: S105
API_VERSION = "2021-08-06"
CONTAINER = "pulumi-state"
START_TIMEOUT = 60.0
_LISTENING = re.compile(r"successfully listens on https?://[^:]+:(\d+)")


class AzuriteError(RuntimeError):
    """Azurite could not be started or prepared; the message says what to do."""


@dataclass
class Azurite:
    """A running Azurite Blob service (and the latency proxy in front of it, if any)."""

    port: int
    container: str
    data_dir: Path
    process: subprocess.Popen
    proxy: _LatencyProxy | None = None
    log: list[str] = field(default_factory=list)

    # --- what a Pulumi CLI needs ------------------------------------------------------------------
    @property
    def endpoint_port(self) -> int:
        """The port Pulumi talks to: the proxy's when latency is added, else Azurite's."""
        return self.proxy.port if self.proxy else self.port

    @property
    def backend_url(self) -> str:
        return (f"azblob://{self.container}?localemu=true&domain=127.0.0.1:{self.endpoint_port}"
                f"&protocol=http")

    @property
    def env(self) -> dict[str, str]:
        """AZURE_STORAGE_ACCOUNT / AZURE_STORAGE_KEY (the emulator's published development account) and
        PULUMI_BACKEND_URL."""
        return {"AZURE_STORAGE_ACCOUNT": ACCOUNT, "AZURE_STORAGE_KEY": ACCOUNT_KEY,
                "PULUMI_BACKEND_URL": self.backend_url}

    @property
    def requests(self) -> int:
        """Storage requests that went through the latency proxy (0 without one)."""
        return self.proxy.count if self.proxy else 0

    # --- life cycle -------------------------------------------------------------------------------
    @classmethod
    def start(cls, tmp_dir: Path, latency_ms: float = 0, *, container: str = CONTAINER,
              timeout: float = START_TIMEOUT) -> Azurite:
        """Azurite's Blob service on a free port (its own choice: `--blobPort 0`), data in `tmp_dir/azurite`,
        the `container` created; ready when this returns, or AzuriteError within `timeout` seconds."""
        if not AZURITE_BLOB.exists():
            raise AzuriteError(f"Azurite is not installed ({AZURITE_BLOB} missing): run `make azurite`")
        data_dir = Path(tmp_dir) / "azurite"
        data_dir.mkdir(parents=True, exist_ok=True)
        # --skipApiVersionCheck: the Pulumi CLI's Azure SDK speaks a newer storage API version than this
        # Azurite knows and would otherwise be refused with 400 InvalidHeaderValue.
        process = subprocess.Popen(
            [str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", "0", "--location", str(data_dir),
             "--skipApiVersionCheck", "--disableTelemetry", "--silent"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        lines: queue.Queue[str | None] = queue.Queue()
        log: list[str] = []
        threading.Thread(target=_pump, args=(process, lines, log), daemon=True).start()
        port = None
        try:
            while port is None:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise AzuriteError(f"Azurite did not report its port within {timeout:.0f}s: "
                                       + " | ".join(log[-5:])) from None
                if line is None:
                    raise AzuriteError(f"Azurite exited with code {process.wait()}: " + " | ".join(log[-5:]))
                match = _LISTENING.search(line)
                port = int(match.group(1)) if match else None
            handle = cls(port, container, data_dir, process, None, log)
            handle._create_container(deadline)
            if latency_ms > 0:
                handle.proxy = _LatencyProxy(port, latency_ms / 1000.0)
            return handle
        except BaseException:
            _end(process)
            raise

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        _end(self.process)

    def __enter__(self) -> Azurite:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- storage requests -------------------------------------------------------------------------
    def _create_container(self, deadline: float) -> None:
        """Create Container, Shared Key signed; 201 or 409 (already there) is success. Retried until the
        deadline while the port refuses connections."""
        while True:
            try:
                status, body = self.request("PUT", f"/{self.container}", {"restype": "container"})
            except OSError as error:
                if time.monotonic() > deadline:
                    raise AzuriteError(f"Azurite on port {self.port} does not answer: {error}") from None
                time.sleep(0.1)  # polling a port that is about to open, bounded by the deadline
                continue
            if status in (201, 409):
                return
            raise AzuriteError(f"Azurite refused to create container {self.container!r}: HTTP {status} "
                               f"{body[:200]!r}")

    def request(self, method: str, path: str, query: dict[str, str] | None = None) -> tuple[int, bytes]:
        """One Shared Key signed request (no body) to Azurite itself: (status, body)."""
        query = query or {}
        headers = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": API_VERSION}
        headers["Authorization"] = f"SharedKey {ACCOUNT}:{_signature(method, f'/{ACCOUNT}{path}', query, headers)}"
        target = f"/{ACCOUNT}{path}" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, target, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


def _signature(method: str, path: str, query: dict[str, str], headers: dict[str, str]) -> str:
    """Shared Key for the Blob service (version 2009-09-19 and later) of a request without a body."""
    canonical_headers = "".join(f"{k.lower()}:{v}\n" for k, v in sorted(headers.items())
                                if k.lower().startswith("x-ms-"))
    resource = f"/{ACCOUNT}{path}" + "".join(f"\n{k.lower()}:{v}" for k, v in sorted(query.items()))
    # VERB, Content-Encoding, -Language, -Length, -MD5, -Type, Date, If-Modified-Since, If-Match,
    # If-None-Match, If-Unmodified-Since, Range: all empty here (the date is in x-ms-date).
    to_sign = method + "\n" * 12 + canonical_headers + resource
    digest = hmac.new(base64.b64decode(ACCOUNT_KEY), to_sign.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _pump(process: subprocess.Popen, lines: queue.Queue[str | None], log: list[str]) -> None:
    """Azurite's output, line by line, to the starter (readiness) and a short log (errors)."""
    assert process.stdout is not None
    for line in process.stdout:
        log.append(line.rstrip())
        del log[:-50]
        lines.put(line)
    lines.put(None)


def _end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


# --- latency -----------------------------------------------------------------------------------------
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class _LatencyProxy:
    """An HTTP/1.1 reverse proxy on 127.0.0.1 that holds each request `delay` seconds, then forwards it to
    Azurite (one upstream connection per client connection). Signatures stay valid: Shared Key signs the
    path, the query and the x-ms-* headers, never the Host."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.count = 0
        counter = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            upstream: http.client.HTTPConnection | None = None

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
                pass

            def _forward(self) -> None:
                body = self._body()
                with counter:
                    proxy.count += 1
                time.sleep(delay)  # the simulated network latency itself, not a synchronisation
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body:
                    headers["Content-Length"] = str(len(body))
                for attempt in (1, 2):
                    if self.upstream is None:
                        self.upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
                    try:
                        self.upstream.request(self.command, self.path, body=body or None, headers=headers)
                        response = self.upstream.getresponse()
                        data = response.read()
                        break
                    except (ConnectionError, http.client.HTTPException):
                        self.upstream.close()
                        self.upstream = None  # Azurite closed an idle keep-alive connection: reconnect once
                        if attempt == 2:
                            raise
                self.send_response_only(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP and not (key.lower() == "content-length"
                                                               and self.command != "HEAD"):
                        self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline().strip():
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="azurite-latency", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.azurite",
                                     description="Serve Azurite as a Pulumi azblob:// backend until Ctrl-C.")
    parser.add_argument("--dir", type=Path, default=REPO / ".azurite", help="where its data goes (default .azurite)")
    parser.add_argument("--latency-ms", type=float, default=0, help="added to every storage request (default 0)")
    parser.add_argument("--container", default=CONTAINER)
    args = parser.parse_args(argv)
    try:
        azurite = Azurite.start(args.dir, args.latency_ms, container=args.container)
    except AzuriteError as error:
        print(f"azurite: {error}", file=sys.stderr)
        return 2
    with azurite:
        for key, value in azurite.env.items():
            print(f"export {key}={shlex.quote(value)}")
        print(f"# Azurite on port {azurite.port}, data in {azurite.data_dir}; Ctrl-C stops it", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
