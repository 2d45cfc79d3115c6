"""HL7 v2 results to RIS/worklist endpoints: ORU^R01 messages over MLLP.

:mod:`pacs_node.hl7.message` builds the message and checks ACKs,
:mod:`pacs_node.hl7.mllp` frames and sends it, :mod:`pacs_node.hl7.sender`
sends the outbox (``hl7_messages`` table) with retries.
"""

from pacs_node.hl7.message import AckResult, build_oru_r01, check_ack, escape
from pacs_node.hl7.mllp import MLLPError, frame, send_message
from pacs_node.hl7.sender import HL7Sender

__all__ = [
    "AckResult",
    "HL7Sender",
    "MLLPError",
    "build_oru_r01",
    "check_ack",
    "escape",
    "frame",
    "send_message",
]
