"""A real HL7 MLLP listener for tests: python-hl7's asyncio server in its own thread.

:class:`MLLPListener` runs :func:`hl7.mllp.start_hl7_server` on 127.0.0.1
with its own event loop in a daemon thread, records every message it
receives (as text) and answers each with the next scripted answer:
``"AA"``, ``"AE"``, ``"AR"``, ``"CA"`` (an ACK built by python-hl7's
``Message.create_ack``), ``"WRONG-ID"`` (AA for another control ID),
``"GARBLED"`` (an MLLP block that is not HL7), ``"CLOSE"`` (close without an
answer) or ``"HANG"`` (never answer). After the script: ``"AA"``.
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from types import TracebackType

import hl7
import hl7.mllp

from tests.peers import free_port

__all__ = ["MLLPListener"]


class MLLPListener:
    """python-hl7's MLLP server on loopback, answering from a script."""

    def __init__(self, port: int | None = None, answers: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.answers = list(answers)
        self.received: list[str] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mllp-listener", daemon=True)

    def __enter__(self) -> MLLPListener:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> MLLPListener:
        """Start listening (fails when the port is taken)."""
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("MLLP listener did not start within 10 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        """Stop listening and end the thread (within 10 s)."""
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if self._thread.is_alive():
                raise RuntimeError("MLLP listener did not stop within 10 s")

    def messages(self) -> list[str]:
        """Texts received so far."""
        with self._lock:
            return list(self.received)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                hl7.mllp.start_hl7_server(self._serve, "127.0.0.1", self.port, encoding="utf-8")
            )
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0.05))
            self._loop.close()

    async def _serve(
        self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter
    ) -> None:
        try:
            while True:
                message = await reader.readmessage()
                with self._lock:
                    self.received.append(str(message))
                    answer = self.answers.pop(0) if self.answers else "AA"
                if answer == "CLOSE":
                    break
                if answer == "HANG":
                    await asyncio.sleep(3600)
                elif answer == "GARBLED":
                    writer.writeblock(b"this is not an HL7 message")
                elif answer == "WRONG-ID":
                    control_id = str(message.segment("MSH")(10))
                    writer.writeblock(
                        (
                            "MSH|^~\\&|RIS|RAD|DEEPSC-NODE||20261126000000||ACK^R01^ACK|A1|P|2.5.1"
                            f"\rMSA|AA|X{control_id}"
                        ).encode()
                    )
                else:
                    writer.writemessage(message.create_ack(answer))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
