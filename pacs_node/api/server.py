"""Serve an ASGI application with uvicorn in a background thread, with a clean stop.

The listening socket is bound in the caller's thread, so a port in use or
an address that does not exist fails :meth:`HTTPServer.start` at once with
an :class:`OSError` (the node turns it into ``NodeStartError``), and port 0
binds a free port (:attr:`HTTPServer.port`). uvicorn runs its event loop in
a daemon thread; signals stay with the main thread (uvicorn installs no
handlers outside it). :meth:`HTTPServer.stop` asks uvicorn to finish open
requests and waits for the thread.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import Any

import uvicorn

LOGGER = logging.getLogger(__name__)

__all__ = ["HTTPServer"]


def _bind(host: str, port: int) -> socket.socket:
    try:
        family = (
            socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        )
    except ValueError:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class HTTPServer:
    """An ASGI app served by uvicorn in a thread.

    Parameters
    ----------
    app: ASGI application
        What to serve.
    host: str
        Address to listen on.
    port: int
        Port (0: any free port).
    access_log: bool
        Log each request (method, path, status) on ``uvicorn.access`` at
        INFO. Paths hold UIDs and job numbers only, never PHI.
    """

    def __init__(self, app: Any, host: str, port: int, *, access_log: bool = True) -> None:
        self.app = app
        self.host = host
        self.requested_port = int(port)
        self.access_log = access_log
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def port(self) -> int:
        """The bound port.

        Raises
        ------
        RuntimeError
            If the server was not started.
        """
        if self._socket is None:
            raise RuntimeError("the HTTP server is not started")
        return int(self._socket.getsockname()[1])

    def start(self, timeout: float = 10.0) -> HTTPServer:
        """Bind, start serving, and wait until uvicorn accepts connections.

        Raises
        ------
        OSError
            If the address cannot be bound (port in use...).
        RuntimeError
            If uvicorn does not start within `timeout` seconds.
        """
        if self._thread is not None:
            raise RuntimeError("the HTTP server was already started")
        self._socket = _bind(self.host, self.requested_port)
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=self.access_log,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        sockets = [self._socket]
        server = self._server

        def run() -> None:
            try:
                server.run(sockets=sockets)
            except BaseException as exc:  # SystemExit from uvicorn's startup included
                self._error = exc
                LOGGER.error("HTTP server stopped with an error: %r", exc)

        self._thread = threading.Thread(target=run, name="http-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop(1.0)
                raise RuntimeError(
                    f"the HTTP server on {self.host}:{self.requested_port} did not start"
                    + (f": {self._error!r}" if self._error else "")
                )
            time.sleep(0.02)
        LOGGER.info("HTTP API listening on http://%s:%d", self.host, self.port)
        return self

    def is_serving(self) -> bool:
        """Whether the server thread runs and uvicorn has started."""
        return bool(
            self._thread is not None
            and self._thread.is_alive()
            and self._server is not None
            and self._server.started
            and not self._server.should_exit
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let open requests finish, and join the thread (idempotent)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(2.0)
            if self._thread.is_alive():
                LOGGER.warning("HTTP server thread still running after stop")
            self._thread = None
        if self._socket is not None:
            self._socket.close()
        self._server = None
