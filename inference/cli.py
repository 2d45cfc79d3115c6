"""Model sub-commands of ``deepsc-node``: ``phantom``, ``train``, ``evaluate``, ``export``.

torch is imported only inside the command functions of ``train`` and
``export`` (the optional ``train`` extra), never by ``--help``.
"""
from __future__ import annotations

import argparse
import importlib

__all__ = ["register"]

#: Modules that register model commands.
COMMAND_MODULES: tuple[str, ...] = ("inference.phantom.commands", "inference.commands")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the model commands to ``subparsers``."""
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name not in (name, name.rpartition(".")[0]):
                raise
            continue
        module.register(subparsers)
