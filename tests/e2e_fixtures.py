"""The node as a real process, for end-to-end tests with real peers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from config import Destination
from pacs_node.errors import AssociationFailedError
from pacs_node.scu import echo
from storage import JobRecord, create_database_engine, jobs_for_series, make_session_factory
from tests.peers import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def toml_value(value: Any) -> str:
    """A TOML literal for the small set of values the tests write."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


class NodeProcess:
    """``deepsc-node serve`` in a subprocess with its own data directory.

    Parameters
    ----------
    workdir: Path
        Folder for the settings file, the data directory and the log.
    destinations: Sequence[Destination]
        Where results go.
    settings: dict[str, Any]
        Extra top-level settings keys (``allowed_calling_aes``...).
    tables: dict[str, dict[str, Any]]
        Extra settings tables (``selection``, ``export_retry``...).
    """

    def __init__(
        self,
        workdir: Path,
        destinations: Sequence[Destination] = (),
        settings: dict[str, Any] | None = None,
        tables: dict[str, dict[str, Any] | None] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.ae_title = "DEEPSC"
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "deepsc-node.toml"
        self.log_path = self.workdir / "node.log"
        self.process: subprocess.Popen[bytes] | None = None
        top = {
            "ae_title": self.ae_title,
            "port": self.port,
            "bind_address": "127.0.0.1",
            "data_dir": str(self.data_dir),
            "quiet_time": 2.0,
            "providers": ["CPUExecutionProvider"],
            **(settings or {}),
        }
        lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
        self.http_port = free_port()  # the HTTP API: not the default 8080 (parallel tests)
        merged_tables: dict[str, dict[str, Any] | None] = {
            "export_retry": {"initial_backoff": 1.0, "max_backoff": 4.0},
            "http": {"port": self.http_port},
        }
        merged_tables.update(tables or {})  # a table given as None is left out
        for name, table in merged_tables.items():
            if table is None:
                continue
            lines.append(f"\n[{name}]")
            lines.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
        for destination in destinations:
            lines.append("\n[[destinations]]")
            lines.append(f"name = {toml_value(destination.name)}")
            lines.append(f"ae_title = {toml_value(destination.ae_title)}")
            lines.append(f"host = {toml_value(destination.host)}")
            lines.append(f"port = {destination.port}")
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def database_url(self) -> str:
        """The node's SQLite database."""
        return f"sqlite:///{self.data_dir / 'deepsc-node.sqlite3'}"

    @property
    def destination(self) -> Destination:
        """The node itself as a C-STORE destination."""
        return Destination(name="node", ae_title=self.ae_title, host="127.0.0.1", port=self.port)

    def start(self, timeout: float = 90.0) -> NodeProcess:
        """Start ``serve`` and wait until it answers C-ECHO."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSC_")}
        env["PYTHONUNBUFFERED"] = "1"
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pacs_node", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if echo(self.destination, calling_ae="E2ETEST", timeout=2.0) == 0:
                    return self
            except AssociationFailedError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"node did not answer C-ECHO within {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, wait; SIGKILL if it does not stop. Returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        code = self.process.returncode
        self.process = None
        return code

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the node's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    def jobs(self, series_instance_uid: str) -> list[JobRecord]:
        """Jobs of a series, read from the node's database."""
        engine = create_database_engine(self.database_url)
        try:
            with make_session_factory(engine)() as session:
                return jobs_for_series(session, series_instance_uid)
        finally:
            engine.dispose()

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

