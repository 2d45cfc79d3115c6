"""Node sub-commands of ``deepsc-node`` (one module per command).

Each module exposes ``register(subparsers)``; this package registers them in
``--help`` order.
"""
from __future__ import annotations

import argparse
import importlib

__all__ = ["register", "COMMANDS"]

#: Command modules, in the order ``deepsc-node --help`` lists them.
COMMANDS: tuple[str, ...] = (
    "serve",
    "status",
    "audit",
    "process",
    "echo",
    "send",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add every node command to ``subparsers``."""
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.register(subparsers)
