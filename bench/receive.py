"""Receive throughput: the node's Storage SCP against DCMTK ``storescp``, same series, same run.

Generates synthetic 512 x 512 CT series once (``tests.dicom_fixtures.
make_ct_dataset``, Explicit VR Little Endian, about 0.5 MiB per slice) in a
temporary folder, then for every repeat:

1. **baseline**: DCMTK ``storescp`` writing to disk (``-od``; ``--fork`` for
   the concurrent run, so that each association gets its own process as
   the node gives each its own threads), fed by DCMTK ``storescu``;
2. **node**: the real node, ``deepsc-node serve`` started by
   :class:`tests.e2e_fixtures.NodeProcess` on a fresh data directory: its
   own receiver, file store with ``fsync`` (file + directory) and SQLite
   (``synchronous=FULL``), association audit and series watcher; the
   quiet time is set far beyond the run, so no inference competes with
   reception and what is measured is the product's receive path.

Each side gets one association carrying the whole series (``storescu +sd``
with ``TCP_NODELAY=1``) and then ``--associations`` storescu processes at
once, each with its own series. The time is the wall time from starting the
storescu process(es) until the last one exits; MB/s counts the bytes of the
sent files (10^6 bytes). A run counts only if storescu exited 0 and every
instance arrived (files in storescp's folder; for the node, instance rows
in its database and files in its store). The script prints MB/s and
instances/s of both sides, the ratio node/storescp per repeat and the
median ratio, and where the node's milliseconds per instance go: the SCP
with a receiver that keeps nothing (pynetdicom + the node's C-STORE
handler), each step of the storage-backed receiver without network, and
the cost of one directory ``fsync`` (a flush) on the file system holding
the node's data.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 /work/venv/bin/python bench/receive.py
    /work/venv/bin/python bench/receive.py --slices 300 --associations 4 --repeat 3

Exit status 0 if every run delivered every instance, 1 otherwise. The
target of issue 6 (ratio >= 0.5) is printed, not enforced.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import pydicom  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from pynetdicom import _config  # noqa: E402

from pacs_node.ae import build_ae, configure_pynetdicom, start_scp, stop_scp  # noqa: E402
from pacs_node.commands.serve import SWITCH_INTERVAL  # noqa: E402
from pacs_node.receive import (  # noqa: E402
    DispositionValues,
    ReceivedInstance,
    ReceiveOutcome,
)
from pacs_node.receiver import content_digest, utc_now  # noqa: E402
from pacs_node.status import StoreStatus  # noqa: E402
from storage import (  # noqa: E402
    InstanceAttributes,
    InstanceStore,
    create_database_engine,
    make_session_factory,
    record_instance,
    upgrade_database,
)
from tests.dicom_fixtures import make_ct_dataset, wait_for_port, write_dataset  # noqa: E402
from tests.e2e_fixtures import NodeProcess  # noqa: E402
from tests.peers import PEER_ENV, free_port, require_binary  # noqa: E402

#: Issue 6: node throughput >= this fraction of storescp's.
TARGET_RATIO = 0.5


@dataclass(frozen=True)
class Series:
    """One generated series: its folder, file count and bytes."""

    folder: Path
    count: int
    size: int


@dataclass(frozen=True)
class Run:
    """One timed transfer: seconds, instances and bytes sent, whether all arrived."""

    seconds: float
    instances: int
    size: int
    complete: bool

    @property
    def megabytes_per_second(self) -> float:
        return self.size / 1e6 / self.seconds

    @property
    def instances_per_second(self) -> float:
        return self.instances / self.seconds


def generate_series(folder: Path, slices: int, matrix: int) -> Series:
    """Write one CT series of `slices` slices of `matrix` x `matrix` pixels."""
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    size = 0
    for number in range(1, slices + 1):
        ds = make_ct_dataset(
            rows=matrix, columns=matrix, instance_number=number, study_instance_uid=study,
            series_instance_uid=series, frame_of_reference_uid=frame, seed=number,
        )
        size += write_dataset(ds, folder / f"ct-{number:04d}.dcm").stat().st_size
    return Series(folder, slices, size)


def send(series: Sequence[Series], ae_title: str, port: int, timeout: float) -> tuple[float, bool]:
    """Run one storescu per series at once; seconds until the last exits, all exited 0."""
    storescu = require_binary("storescu")
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [storescu, "-aet", "BENCH", "-aec", ae_title, "+sd", "127.0.0.1", str(port),
             str(item.folder)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=PEER_ENV,
        )
        for item in series
    ]
    ok = True
    for process in processes:
        output, _ = process.communicate(timeout=timeout)
        if process.returncode != 0:
            ok = False
            print(output.decode(errors="replace")[-2000:], file=sys.stderr)
    return time.perf_counter() - started, ok


def run_storescp(series: Sequence[Series], work: Path, timeout: float) -> Run:
    """storescp (``--fork`` when several associations) receiving `series`."""
    out = work / "storescp-out"
    out.mkdir()
    port = free_port()
    args = [require_binary("storescp"), "-aet", "STORESCP", "-od", str(out)]
    if len(series) > 1:
        args.append("--fork")
    process = subprocess.Popen(
        [*args, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=PEER_ENV
    )
    try:
        wait_for_port(port, process)
        seconds, ok = send(series, "STORESCP", port, timeout)
        received = sum(1 for _ in out.iterdir())
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(out)
    expected = sum(item.count for item in series)
    return Run(seconds, expected, sum(item.size for item in series), ok and received == expected)


def node_counts(node: NodeProcess) -> tuple[int, int]:
    """Instance rows in the node's database and instance files in its store."""
    with sqlite3.connect(node.data_dir / "deepsc-node.sqlite3") as connection:
        (rows,) = connection.execute("SELECT COUNT(*) FROM instances").fetchone()
    files = sum(1 for _ in (node.data_dir / "instances").rglob("*.dcm"))
    return int(rows), files


def run_node(node: NodeProcess, series: Sequence[Series], timeout: float) -> Run:
    """The running node receiving `series` (instances it already holds do not count)."""
    before = node_counts(node)
    seconds, ok = send(series, node.ae_title, node.port, timeout)
    after = node_counts(node)
    expected = sum(item.count for item in series)
    complete = ok and all(b + expected == a for b, a in zip(before, after))
    return Run(seconds, expected, sum(item.size for item in series), complete)


def fsync_latency(folder: Path, count: int = 20) -> float:
    """Median seconds of one ``fsync`` of a directory after a rename in it.

    What each of the node's three flushes per instance costs at least (a
    journal commit and a cache flush of the device, no file data): the
    directory after the rename, and the same for the file's ``fsync`` and
    SQLite's WAL ``fsync`` at commit, which also write their data.
    """
    folder.mkdir(parents=True, exist_ok=True)
    times = []
    for index in range(count):
        fd = os.open(folder / f"probe-{index}.part", os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        os.replace(folder / f"probe-{index}.part", folder / f"probe-{index}")
        started = time.perf_counter()
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        times.append(time.perf_counter() - started)
    shutil.rmtree(folder)
    return statistics.median(times)


class NullReceiver:
    """Accepts every instance and keeps nothing: the SCP's cost without storage."""

    def __init__(self) -> None:
        self.count = 0

    def receive(self, instance: ReceivedInstance) -> ReceiveOutcome:
        self.count += 1
        return ReceiveOutcome(status=StoreStatus.SUCCESS, disposition=DispositionValues.STORED)


def transport_ms(series: Series, timeout: float) -> float:
    """ms per instance of pynetdicom + the node's C-STORE handler, nothing stored.

    The node's own AE (:func:`pacs_node.ae.build_ae`, ``start_scp``, the
    pynetdicom configuration and switch interval of ``serve``) in this
    process, with a receiver that keeps nothing.
    """
    previous = sys.getswitchinterval(), _config.LOG_HANDLER_LEVEL
    configure_pynetdicom()
    sys.setswitchinterval(SWITCH_INTERVAL)
    receiver = NullReceiver()
    try:
        server = start_scp(build_ae("NULLSCP"), "127.0.0.1", 0, receiver)
        try:
            seconds, ok = send([series], "NULLSCP", server.server_address[1], timeout)
        finally:
            stop_scp(server)
    finally:  # process-wide settings: put them back for whoever imported this
        sys.setswitchinterval(previous[0])
        _config.LOG_HANDLER_LEVEL = previous[1]
    if not ok or receiver.count != series.count:
        raise RuntimeError(f"transport run incomplete: {receiver.count}/{series.count}")
    return seconds / series.count * 1e3


def storage_ms(series: Series, data_dir: Path) -> dict[str, float]:
    """ms per instance of each step of ``StorageReceiver.receive``, no network.

    The same calls in the same order as :meth:`pacs_node.receiver.
    StorageReceiver.receive` on a fresh data directory: *prepare* (content
    digest, attributes), *file* (``InstanceStore.write`` with ``fsync``:
    temporary file, fsync, rename, directory fsync), *record* (the SQL of
    :func:`storage.record_instance`) and *commit* (SQLite, WAL,
    ``synchronous=FULL``). Medians.
    """
    store = InstanceStore.in_data_dir(data_dir, fsync=True)
    engine = create_database_engine(f"sqlite:///{data_dir / 'breakdown.sqlite3'}")
    steps: dict[str, list[float]] = {"prepare": [], "file": [], "record": [], "commit": []}
    try:
        upgrade_database(engine)
        factory = make_session_factory(engine)
        for path in sorted(series.folder.iterdir()):
            encoded = path.read_bytes()
            header = pydicom.dcmread(io.BytesIO(encoded), stop_before_pixels=True)
            uids = (header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID)
            started = time.perf_counter()
            attributes = InstanceAttributes.from_dataset(
                header, file_path=store.relative_path(store.path_for(*uids)),
                sha256=content_digest(encoded), size=len(encoded),
                transfer_syntax_uid=header.file_meta.TransferSyntaxUID, calling_ae_title="BENCH",
            )
            prepared = time.perf_counter()
            store.write(*uids, encoded)
            written = time.perf_counter()
            session = factory()
            try:
                session.begin()
                record_instance(session, attributes, utc_now())
                recorded = time.perf_counter()
                session.commit()
            finally:
                session.close()
            committed = time.perf_counter()
            for name, (a, b) in zip(steps, [(started, prepared), (prepared, written),
                                            (written, recorded), (recorded, committed)]):
                steps[name].append((b - a) * 1e3)
    finally:
        engine.dispose()
    return {name: statistics.median(values) for name, values in steps.items()}


def line(label: str, run: Run) -> str:
    flag = "" if run.complete else "  INCOMPLETE"
    return (f"  {label:<9} {run.instances:5d} instances {run.size / 1e6:8.1f} MB "
            f"{run.seconds:7.2f} s {run.megabytes_per_second:8.1f} MB/s "
            f"{run.instances_per_second:7.1f} inst/s{flag}")


def print_breakdown(pairs: list[tuple[Run, Run]], breakdowns: list[dict[str, float]]) -> None:
    """Where the node's milliseconds per instance go (one association; medians)."""
    if not pairs or not breakdowns:
        return
    median = {name: statistics.median(b[name] for b in breakdowns) for name in breakdowns[0]}
    base = statistics.median(b.seconds / b.instances * 1e3 for b, _ in pairs)
    node = statistics.median(n.seconds / n.instances * 1e3 for _, n in pairs)
    storage = sum(median[name] for name in ("prepare", "file", "record", "commit"))
    print("breakdown, one association (ms per instance, medians):")
    print(f"  storescp end to end                                  {base:7.2f}")
    print(f"  node end to end (deepsc-node serve)                  {node:7.2f}")
    print(f"    transport: pynetdicom + C-STORE handler, no store  {median['transport']:7.2f}")
    print(f"    storage (StorageReceiver steps, no network)        {storage:7.2f}")
    print(f"      prepare: content digest, attributes              {median['prepare']:7.2f}")
    print(f"      file: tmp write, fsync, rename, dir fsync        {median['file']:7.2f}")
    print(f"      record: SQL of record_instance                   {median['record']:7.2f}")
    print(f"      commit: SQLite WAL, synchronous=FULL             {median['commit']:7.2f}")
    print(f"    transport + storage                                "
          f"{median['transport'] + storage:7.2f}")
    print(f"  one directory fsync (a flush, no data)               {median['fsync']:7.2f}")
    print(f"  durable steps (file + commit: 3 flushes)             "
          f"{median['file'] + median['commit']:7.2f}")
    print(f"  allowed per instance by the target (storescp / {TARGET_RATIO})  "
          f"{base / TARGET_RATIO:7.2f}")


def main(argv: list[str] | None = None) -> int:
    """Generate the series, run baseline and node `--repeat` times, print the table."""
    parser = argparse.ArgumentParser(prog="bench/receive.py", description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300, help="slices per series (%(default)s)")
    parser.add_argument("--matrix", type=int, default=512, help="rows = columns (%(default)s)")
    parser.add_argument("--associations", type=int, default=4,
                        help="concurrent associations of the second run; 0 skips it "
                             "(%(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats (%(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds allowed per transfer (%(default)s)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for series and data (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.slices < 1 or args.matrix < 16 or args.repeat < 1 or args.associations < 0:
        parser.error("--slices, --repeat >= 1, --matrix >= 16, --associations >= 0")
    with tempfile.TemporaryDirectory(prefix="deepsc-receive-", dir=args.workdir) as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        single = generate_series(work / "series-0", args.slices, args.matrix)
        many = [generate_series(work / f"series-{i}", args.slices, args.matrix)
                for i in range(1, args.associations + 1)]
        print(f"generated {1 + len(many)} series of {args.slices} slices "
              f"{args.matrix}x{args.matrix} ({single.size / 1e6:.1f} MB each) in "
              f"{time.perf_counter() - started:.1f} s")
        print(f"directory fsync in {work}: {fsync_latency(work / 'probe') * 1e3:.2f} ms")
        results: dict[str, list[tuple[Run, Run]]] = {"single": [], "concurrent": []}
        breakdowns: list[dict[str, float]] = []
        for repeat in range(args.repeat):
            node = NodeProcess(work / f"node-{repeat}", settings={"quiet_time": 3600.0})
            with node:
                print(f"repeat {repeat + 1}/{args.repeat}")
                runs = [("single", [single])] + ([("concurrent", many)] if many else [])
                for name, series in runs:
                    baseline = run_storescp(series, work, args.timeout)
                    measured = run_node(node, series, args.timeout)
                    results[name].append((baseline, measured))
                    print(f" {name}: {len(series)} association(s)")
                    print(line("storescp", baseline))
                    print(line("node", measured))
                    print(f"  ratio node/storescp: "
                          f"{measured.megabytes_per_second / baseline.megabytes_per_second:.3f}")
            shutil.rmtree(node.data_dir, ignore_errors=True)
            transport = transport_ms(single, args.timeout)
            steps = storage_ms(single, work / f"breakdown-{repeat}")
            shutil.rmtree(work / f"breakdown-{repeat}")
            flush = fsync_latency(work / "probe") * 1e3
            breakdowns.append({"transport": transport, **steps, "fsync": flush})
            print(f" breakdown (ms per instance): transport {transport:.2f}, "
                  + ", ".join(f"{name} {value:.2f}" for name, value in steps.items())
                  + f"; directory fsync {flush:.2f}")
    print(f"summary (median of {args.repeat}; target ratio >= {TARGET_RATIO}):")
    ok = True
    for name, pairs in results.items():
        if not pairs:
            continue
        ok = ok and all(b.complete and n.complete for b, n in pairs)
        ratios = [n.megabytes_per_second / b.megabytes_per_second for b, n in pairs]
        base = statistics.median(b.megabytes_per_second for b, _ in pairs)
        mine = statistics.median(n.megabytes_per_second for _, n in pairs)
        base_i = statistics.median(b.instances_per_second for b, _ in pairs)
        mine_i = statistics.median(n.instances_per_second for _, n in pairs)
        print(f"  {name:<10} storescp {base:7.1f} MB/s {base_i:7.1f} inst/s | node {mine:7.1f} "
              f"MB/s {mine_i:7.1f} inst/s | ratio {statistics.median(ratios):.3f} "
              f"(runs: {', '.join(f'{r:.3f}' for r in ratios)})")
    print_breakdown(results["single"], breakdowns)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
