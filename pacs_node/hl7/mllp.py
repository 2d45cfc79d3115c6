"""Minimal Lower Layer Protocol (MLLP) client: one message out, its ACK back.

Framing (HL7 v2.5.1 Appendix C, MLLP release 2)::

    <VT 0x0B> message bytes <FS 0x1C><CR 0x0D>

:func:`send_message` opens a TCP connection (connect timeout), sends one
framed message, reads until the end block (read timeout, size limit) and
closes. Every failure raises :class:`MLLPError` with a short reason that
holds no message content.
"""
from __future__ import annotations

import logging
import socket
import time

LOGGER = logging.getLogger(__name__)

__all__ = ["END_BLOCK", "MAX_ACK_BYTES", "MLLPError", "START_BLOCK", "frame", "send_message"]

#: Start of a block (VT).
START_BLOCK = b"\x0b"
#: End of a block (FS CR).
END_BLOCK = b"\x1c\x0d"
#: Largest ACK accepted.
MAX_ACK_BYTES = 1 << 20


class MLLPError(Exception):
    """A message could not be sent or no well-framed answer came back."""


def frame(message: str, encoding: str = "utf-8") -> bytes:
    """The MLLP block of an ER7 message."""
    return START_BLOCK + message.encode(encoding) + END_BLOCK


def send_message(
    host: str, port: int, message: str, *, timeout: float, encoding: str = "utf-8"
) -> str:
    """Send one message over MLLP and return the answer (usually an ACK).

    Parameters
    ----------
    host, port: str, int
        The MLLP listener.
    message: str
        ER7 text, segments separated by CR (no framing).
    timeout: float
        Seconds for the TCP connect, and in total for sending and reading
        the answer.
    encoding: str
        Character encoding of message and answer (MSH-18). Default UTF-8.

    Returns
    -------
    str
        The answer without its framing.

    Raises
    ------
    MLLPError
        Connection refused or timed out, closed before a complete answer,
        an answer not framed as MLLP, or larger than :data:`MAX_ACK_BYTES`.
    """
    deadline = time.monotonic() + timeout
    try:
        connection = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise MLLPError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    with connection:
        try:
            connection.settimeout(max(0.001, deadline - time.monotonic()))
            connection.sendall(frame(message, encoding))
            buffer = bytearray()
            while END_BLOCK not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise MLLPError(f"no ACK from {host}:{port} within {timeout:g} s")
                connection.settimeout(remaining)
                chunk = connection.recv(65536)
                if not chunk:
                    raise MLLPError(f"{host}:{port} closed the connection before a complete ACK")
                buffer += chunk
                if len(buffer) > MAX_ACK_BYTES:
                    raise MLLPError(f"answer of {host}:{port} exceeds {MAX_ACK_BYTES} bytes")
        except socket.timeout as exc:
            raise MLLPError(f"no ACK from {host}:{port} within {timeout:g} s") from exc
        except OSError as exc:
            raise MLLPError(f"connection to {host}:{port} failed: {exc.strerror or exc}") from exc
    block = bytes(buffer[: buffer.index(END_BLOCK)])
    start = block.find(START_BLOCK)
    if start < 0 or block[:start].strip():
        raise MLLPError(f"answer of {host}:{port} is not an MLLP block")
    try:
        return block[start + 1 :].decode(encoding)
    except UnicodeDecodeError as exc:
        raise MLLPError(f"answer of {host}:{port} is not {encoding}") from exc
