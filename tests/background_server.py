"""A captioner app served by uvicorn in a daemon thread, for the tests that talk HTTP to it."""
from __future__ import annotations

import socket
import threading
import time

from captioner.serve import BODY_TIMEOUT, HEADER_TIMEOUT, url_for


class BackgroundServer:
    """Run an app with uvicorn in a daemon thread on a free loopback port. Use as a context
    manager; ``url`` ends with ``/``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT):
        import uvicorn

        from captioner.serve.protocol import timed_protocol

        self.app = app
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.url = url_for(host, self.port)
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5,
                                                    http=timed_protocol(header_timeout, body_timeout)))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, timeout: float = 60.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server at {self.url} did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
