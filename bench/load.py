"""Load: many studies sent at once over concurrent associations; nothing lost, C-ECHO still fast.

Starts a real Orthanc (the destination) and a real ``deepsc-node serve``
(bundled model, CPU, SQLite) on loopback, writes phantom chest-CT studies
(classes in turn: COVID-19, CAP, no pneumonia) and sends them all at once,
study *i* over association *i mod associations*, all associations opened
together. During the whole run a separate process sends a C-ECHO to the
node every ``--echo-interval`` seconds (a new association each time; the
latency is association request -> C-ECHO response -> release), and the
node's resident memory is sampled.

It prints a table: studies, instances sent and acknowledged, series
processed and delivered (exactly one SEG and one SR per study in Orthanc),
send and wall time, C-STORE response times, the node's idle and peak RSS (``VmHWM`` of the node
process; the sampled peak of the node and its children), C-ECHO median /
p95 / max latency, instances lost (acknowledged by the node but missing
from its database or disk), results lost and duplicated.

Exit status: 0 if the node held the load; 1 if anything was lost, not
acknowledged, not delivered or duplicated, a job did not end ``exported``,
a C-ECHO failed or took ``--echo-limit`` seconds or more, or the node did
not stop cleanly.

Usage::

    python bench/load.py                              # 8 studies x 64 slices of 256 x 256
    python bench/load.py --studies 16 --associations 4 --slices 120 --matrix 512

Research use only, not for diagnosis.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.load_fixtures import LoadConfig, run_load  # noqa: E402

LOGGER = logging.getLogger("bench.load")


def build_parser() -> argparse.ArgumentParser:
    """The command line of the benchmark."""
    defaults = LoadConfig()
    parser = argparse.ArgumentParser(
        prog="bench/load.py",
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n\n", 1)[1].split("Usage::")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--studies", type=int, default=defaults.studies,
                        help="phantom studies to send, one CT series each (default %(default)s)")
    parser.add_argument("--associations", type=int, default=defaults.associations,
                        help="concurrent associations the studies are spread over "
                             "(default %(default)s)")
    parser.add_argument("--slices", type=int, default=defaults.slices,
                        help="slices per series, at least 20 (the node's default selection "
                             "rejects fewer); spread over the phantom's scan length, at most 8 mm "
                             "thick (default %(default)s)")
    parser.add_argument("--matrix", type=int, default=defaults.matrix,
                        help="rows and columns per slice (default %(default)s)")
    parser.add_argument("--quiet-time", type=float, default=defaults.quiet_time,
                        help="the node's quiet time in seconds (default %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="the node's inference workers (default: the node's default)")
    parser.add_argument("--echo-interval", type=float, default=defaults.echo_interval,
                        help="seconds between C-ECHO probes (default %(default)s)")
    parser.add_argument("--echo-limit", type=float, default=1.0,
                        help="longest acceptable C-ECHO in seconds (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=defaults.timeout,
                        help="seconds from the first C-STORE until every result must be in "
                             "Orthanc (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the first phantom; study i uses seed + i "
                             "(default %(default)s)")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="work in DIR and keep it (phantoms, node and Orthanc logs and "
                             "data); default: a temporary folder, removed afterwards")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the load once, print the table; 0 if the node held it."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("inference").setLevel(logging.WARNING)
    try:
        config = LoadConfig(
            studies=args.studies,
            associations=args.associations,
            slices=args.slices,
            matrix=args.matrix,
            quiet_time=args.quiet_time,
            echo_interval=args.echo_interval,
            timeout=args.timeout,
            seed=args.seed,
            workers=args.workers,
        )
    except ValueError as exc:
        print(f"bench/load.py: {exc}", file=sys.stderr)
        return 2
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        report = run_load(config, args.keep, log=LOGGER.info)
    else:
        with tempfile.TemporaryDirectory(prefix="deepsc-load-") as tmp:
            report = run_load(config, Path(tmp), log=LOGGER.info)
    report.echo_limit_s = args.echo_limit
    print(report.table())
    for study in report.studies:
        delivered = study.seg_count == 1 and study.sr_count == 1
        if study.refused or study.job_state != "exported" or not delivered:
            print(f"  series {study.series_instance_uid}: job {study.job_state}, "
                  f"{len(study.acknowledged)}/{len(study.files)} acknowledged, "
                  f"{study.seg_count} SEG, {study.sr_count} SR, refused: {study.refused[:3]}")
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
