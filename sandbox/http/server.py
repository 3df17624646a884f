"""The sandbox's HTTPS server: TLS from a persisted trustme CA, werkzeug's threaded server with
HTTP/1.1 keep-alive, the in-process `Sandbox` (start/stop on a background thread) and
`python -m sandbox serve`. What each request does is SandboxApp's (sandbox/http/app.py)."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import ssl
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import trustme
from werkzeug.serving import WSGIRequestHandler, make_server

from sandbox.common import (
    ADMIN_CLIENT_ID,
    ADMIN_CLIENT_SECRET,
    DEFAULT_ORG,
    DEFAULT_PORT,
    LEADWRITER_CLIENT_ID,
    LEADWRITER_CLIENT_SECRET,
    TENANT_ID,
)
from sandbox.http.app import SandboxApp

HOST = "127.0.0.1"
KEEP_ALIVE_IDLE_SECONDS = 120  # Azure front ends keep idle connections ~4 min; long enough for any test file


class _LazyHandshake:
    """Wraps an SSLContext so the TLS handshake runs in the request thread, not the accept loop."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    def wrap_socket(self, sock: socket.socket, server_side: bool = True) -> ssl.SSLSocket:
        return self.context.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False)


class _KeepAliveInput:
    """The connection's read side. After werkzeug has written an answer it "drains" the socket with
    read(10 MB) while it looks readable, assuming the connection then closes; on a kept-alive
    connection that would swallow (or block on) the client's next request. Once the app's answer is
    complete (`mark_answered`), read() returns b"" so the drain stops at once; readline, which
    http.server uses for the next request line and headers, is untouched."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.answered = False

    def mark_answered(self) -> None:
        self.answered = True

    def read(self, size: int | None = -1) -> bytes:
        if self.answered:
            return b""
        return self._raw.read(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _then(chunks: Any, done: Any) -> Any:
    """The answer's chunks, then `done()` (the body has been handed to the server in full)."""
    try:
        yield from chunks
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if done is not None:
        done()


class _QuietHandler(WSGIRequestHandler):
    """HTTP/1.1 keep-alive, as Dataverse's front end does, so a client pays one TLS handshake per
    connection instead of one per request. werkzeug sends `Connection: close` on every answer because
    http.server cannot drain an unread request body; the sandbox app reads every body whole before it
    answers (SandboxApp.__call__), so the connection is safe to reuse and that header is dropped unless
    the exchange must end (client asked, parse error, reset fault). Every answer has a Content-Length
    (werkzeug sets it for byte bodies; 204/304 have none), else werkzeug would chunk it.
    No per-request access lines on stderr: the sandbox keeps its own request log. TCP_NODELAY, or
    Nagle + delayed ACK add ~20 ms to every keep-alive answer (headers and body are separate writes)."""

    protocol_version = "HTTP/1.1"
    timeout = KEEP_ALIVE_IDLE_SECONDS  # an idle connection is closed after this long (socket timeout)
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.rfile = _KeepAliveInput(self.rfile)  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        self.rfile.answered = False  # type: ignore[attr-defined]
        super().handle_one_request()

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        environ["sandbox.answered"] = self.rfile.mark_answered  # type: ignore[attr-defined]
        return environ

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "connection" and value.lower() == "close" and not self.close_connection \
                and self.environ_keep_alive():
            return
        super().send_header(keyword, value)

    def environ_keep_alive(self) -> bool:
        """Keep the connection unless the client asked to close it (HTTP/1.0 without keep-alive included)."""
        asked = (self.headers.get("Connection", "") if self.headers else "").lower()
        if self.request_version == "HTTP/1.0":
            return asked == "keep-alive"
        return asked != "close"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass


def load_or_create_ca(state_dir: Path) -> trustme.CA:
    """The CA persisted as ca.pem (+ ca-key.pem) in the state dir, created on first use."""
    cert_path, key_path = state_dir / "ca.pem", state_dir / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        return trustme.CA.from_pem(cert_path.read_bytes(), key_path.read_bytes())
    ca = trustme.CA(organization_name="lead-destination sandbox")
    state_dir.mkdir(parents=True, exist_ok=True)
    ca.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)
    ca.cert_pem.write_to_path(str(cert_path))
    return ca


class Sandbox:
    """An in-process sandbox: `start()` serves on a background thread and returns the info dict."""

    def __init__(self, port: int = 0, state_dir: str | Path | None = None) -> None:
        self.port = port
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="sandbox-"))
        self.app: SandboxApp | None = None
        self.info: dict[str, Any] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> dict[str, Any]:
        ca = load_or_create_ca(self.state_dir)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(HOST, "localhost").configure_cert(context)
        holder: dict[str, SandboxApp] = {}

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            return _then(holder["app"](environ, start_response), environ.get("sandbox.answered"))

        # Bound here so that a busy port is an OSError for the caller (werkzeug would print and sys.exit).
        listener = socket.create_server((HOST, self.port))
        try:
            self._server = make_server(HOST, self.port, app, threaded=True, request_handler=_QuietHandler,
                                       ssl_context=_LazyHandshake(context),  # type: ignore[arg-type]
                                       fd=listener.fileno())
        finally:
            listener.close()  # the server holds its own duplicate of the descriptor
        self._server.daemon_threads = True
        port = self._server.port
        base = f"https://{HOST}:{port}"
        ca_bundle = str((self.state_dir / "ca.pem").resolve())
        self.app = holder["app"] = SandboxApp(base, ca_bundle)
        self.info = {
            "instance_url": self.app.instance_url(DEFAULT_ORG),
            "authority": f"{base}/{TENANT_ID}",
            "authority_host": f"{HOST}:{port}",
            "tenant_id": TENANT_ID,
            "ca_bundle": ca_bundle,
            "admin_client_id": ADMIN_CLIENT_ID,
            "admin_client_secret": ADMIN_CLIENT_SECRET,
            "leadwriter_client_id": LEADWRITER_CLIENT_ID,
            "leadwriter_client_secret": LEADWRITER_CLIENT_SECRET,
            "control_url": f"{base}/_control",
            "partner_center_url": self.app.partner_center_url,
            "port": port,
        }
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"sandbox-{port}", daemon=True)
        self._thread.start()
        (self.state_dir / "serve.json").write_text(json.dumps(self.info) + "\n")
        return dict(self.info)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0-65535; 0 picks a free one)")
    return port


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox serve", description="Serve the sandbox over HTTPS.")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT,
                        help=f"TCP port (default {DEFAULT_PORT}; 0 = a free one, printed in the JSON line)")
    parser.add_argument("--state-dir", default=".sandbox", help="where ca.pem and serve.json live (default .sandbox)")
    args = parser.parse_args(argv)
    sandbox = Sandbox(port=args.port, state_dir=args.state_dir)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        info = sandbox.start()
    except OSError as exc:
        print(f"python -m sandbox serve: cannot listen on {HOST}:{args.port} ({exc.strerror or exc}): stop what "
              "uses that port, or pass another --port (0 picks a free one).", file=sys.stderr)
        return 1
    print(json.dumps(info), flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
