"""The ``deepsc-node`` command line.

Each command lives in a module that exposes ``register(subparsers)``; the
module adds its sub-parser(s) and sets ``func`` (``Callable[[Namespace], int]``)
as the parser default. Heavy imports (torch, onnxruntime, highdicom) happen
inside the command functions so that ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

LOGGER = logging.getLogger(__name__)

__all__ = ["main", "build_parser"]

#: Modules that register sub-commands, in ``--help`` order.
COMMAND_MODULES: tuple[str, ...] = (
    "pacs_node.commands",
    "inference.cli",
    "config.cli",
)

DESCRIPTION = """\
deepsc-node: a DICOM AI node for chest CT.

Receives CT series by C-STORE, runs a joint lesion-segmentation and
classification model (COVID-19 / community-acquired pneumonia / no pneumonia)
and sends a DICOM-SEG and a TID 1500 structured report back to the PACS.

RESEARCH USE ONLY, NOT FOR DIAGNOSIS. The bundled model is trained on
synthetic phantoms.
"""


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="deepsc-node",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
