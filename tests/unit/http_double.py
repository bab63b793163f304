"""A local HTTP server for CLI tests that talk to "the service": every request goes to
one function, which returns the status, content type and body to answer with."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# (method, path, headers, body) -> (status, content type, body)
Answer = Callable[[str, str, Message, bytes], tuple[int, str, bytes]]


@contextlib.contextmanager
def local_http(answer: Answer, name: str = "fake-service") -> Iterator[str]:
    """Serve ``answer`` on 127.0.0.1 in a thread; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def handle_one(self) -> None:
            sent = self.rfile.read(int(self.headers.get("content-length") or 0))
            status, content_type, data = answer(self.command, self.path, self.headers, sent)
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = handle_one

        def log_message(self, *_: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
