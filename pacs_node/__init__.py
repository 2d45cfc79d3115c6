"""deepsc-node pacs_node: DICOM networking, series completion and selection,
DICOM encoding of results, job orchestration and the command line.

Never imports onnxruntime or torch directly (the model runs through
:mod:`inference`).
"""
import logging

from pacs_node.errors import AssociationFailedError, NodeError, NodeStartError, PacsNodeError

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AssociationFailedError",
    "Node",
    "NodeError",
    "NodeStartError",
    "PacsNodeError",
]


def __getattr__(name: str) -> object:
    # Node pulls in pynetdicom, SQLAlchemy and the inference runtime: import
    # it on first use so that ``deepsc-node --help`` stays fast.
    if name == "Node":
        from pacs_node.node import Node

        return Node
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
