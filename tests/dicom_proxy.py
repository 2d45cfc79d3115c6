"""A loopback TCP proxy between the node and a DICOM peer, for crash tests.

:class:`DicomProxy` listens on a free port of 127.0.0.1 and relays each
connection to an upstream peer (Orthanc). What it does with a connection is
decided when the connection arrives, from the proxy's current settings:

``hold=True``
    Accept the connection and never connect upstream: the caller's
    A-ASSOCIATE-RQ is read and dropped, so its association hangs until its
    ACSE timeout. The export is "in flight" and nothing reached the peer.
``forward_responses=None`` (default)
    Relay both directions unchanged.
``forward_responses=N``
    Relay the caller's bytes unchanged, and from the peer relay every PDU
    except P-DATA-TF (PS3.8 9.3.5, type 0x04) after the first `N` of them.
    Association set-up passes, the peer receives and stores each object, but
    the caller never sees the C-STORE responses after the N-th: the peer has
    the object, the caller cannot know it.

Connections of a held or mute proxy stay open until :meth:`DicomProxy.close`
(or until the caller dies). The proxy counts accepted connections and
dropped PDUs so that a test can wait for the moment to strike.
"""
from __future__ import annotations

import logging
import socket
import threading

LOGGER = logging.getLogger(__name__)

__all__ = ["DicomProxy"]

#: PDU type of P-DATA-TF (PS3.8 Table 9-22).
P_DATA_TF = 0x04
#: Bytes of a PDU header: type, reserved, 4-byte big-endian length.
PDU_HEADER = 6


def _read_exactly(sock: socket.socket, count: int) -> bytes | None:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data.extend(chunk)
    return bytes(data)


class DicomProxy:
    """Relays DICOM connections from 127.0.0.1:`port` to `upstream`.

    Parameters
    ----------
    upstream_port: int
        The peer's port on 127.0.0.1.

    Attributes
    ----------
    hold: bool
        New connections are accepted and held (see the module docstring).
    forward_responses: int | None
        P-DATA-TF PDUs relayed from the peer per connection; ``None``: all.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = int(upstream_port)
        self.hold = False
        self.forward_responses: int | None = None
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        self.accepted = 0
        self.dropped_pdus = 0
        self._thread = threading.Thread(target=self._accept_loop, name="dicom-proxy", daemon=True)

    def __enter__(self) -> DicomProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting and close every relayed connection."""
        self._closed.set()
        self._listener.close()
        self.drop_connections()
        self._thread.join(5.0)

    def drop_connections(self) -> None:
        """Close every open connection (held ones included)."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            with self._lock:
                self.accepted += 1
                hold, limit = self.hold, self.forward_responses
            if hold:
                threading.Thread(target=self._drain, args=(client,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                LOGGER.warning("proxy: upstream port %d refused", self.upstream_port)
                client.close()
                continue
            upstream.settimeout(None)
            self._track(upstream)
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(
                target=self._pdus, args=(upstream, client, limit), daemon=True
            ).start()

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            try:
                target.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _pdus(self, source: socket.socket, target: socket.socket, limit: int | None) -> None:
        relayed = 0
        try:
            while True:
                header = _read_exactly(source, PDU_HEADER)
                if header is None:
                    break
                body = _read_exactly(source, int.from_bytes(header[2:6], "big"))
                if body is None:
                    break
                if header[0] == P_DATA_TF and limit is not None:
                    if relayed >= limit:
                        with self._lock:
                            self.dropped_pdus += 1
                        continue
                    relayed += 1
                target.sendall(header + body)
        except OSError:
            pass
        finally:
            try:
                target.shutdown(socket.SHUT_WR)
            except OSError:
                pass
