"""Run an ASGI app (model server or gateway) with uvicorn on a loopback port in a background thread (notebook 10).

``BackgroundServer`` binds port 0 by default, so the operating system picks a free port (no race
between finding a port and binding it), waits until uvicorn has started, and ``stop`` shuts it down
and joins the thread: nothing keeps running after a notebook or a test ends. The command-line entries
(``python -m dsnb.serve``) run the same apps in the foreground.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

#: Seconds a server keeps an idle keep-alive connection open. Longer than its clients keep theirs (httpx 5 s,
#: a load balancer's 60 s): when a server closes an idle connection first, a client that reuses it at that very
#: moment sees the connection drop without an answer. uvicorn's own default is 5 s, the same as httpx's.
KEEP_ALIVE_S = 75.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, for a server in another process that must be told its port.

    In-process servers bind port 0 instead (``BackgroundServer``), which leaves no window for another
    program to take the port between finding it and binding it.
    """
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """``with BackgroundServer(app) as srv: httpx.get(srv.url + "/healthz")``: uvicorn in a thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0) -> None:
        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                     lifespan="on", timeout_keep_alive=KEEP_ALIVE_S)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{host}:{port}", daemon=True)
        self.start_timeout = start_timeout
        self.host, self.port = host, port

    def start(self) -> BackgroundServer:
        """Start serving; returns once uvicorn accepts connections (raises if it failed to start)."""
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"the server on {self.host}:{self.port} failed to start (port in use?)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start within {self.start_timeout} s")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43125``."""
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        """Ask uvicorn to exit and wait for its thread."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
