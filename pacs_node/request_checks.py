"""Structural checks of a received A-ASSOCIATE-RQ, before pynetdicom negotiates it.

pynetdicom negotiates presentation contexts in the association's own thread
and trusts the request's structure: a presentation context item without a
transfer syntax sub-item raised ``IndexError`` there, the association
thread died, and its DUL thread kept the peer's connection open for as long
as the peer liked, past every ACSE, DIMSE and network timeout, uncounted by
``maximum_associations`` (found by ``tests/test_fuzz_pdu.py``).
:func:`request_problem` finds such requests so that
:func:`pacs_node.handlers.handle_association_request` (``evt.EVT_REQUESTED``,
which runs before the negotiation) rejects them with A-ASSOCIATE-RJ.

Rules (PS3.8 9.3.2 and 9.3.2.2): an Application Context item naming the
DICOM application context ``1.2.840.10008.3.1.1.1``; at least one
Presentation Context item; each with an odd ID of 1-255 used once, one
Abstract Syntax and at least one Transfer Syntax.

Examples
--------
>>> from pynetdicom.pdu_primitives import A_ASSOCIATE
>>> request_problem(A_ASSOCIATE())
'no application context name'
"""
from __future__ import annotations

import logging

from pynetdicom.pdu_primitives import A_ASSOCIATE

LOGGER = logging.getLogger(__name__)

__all__ = ["DICOM_APPLICATION_CONTEXT", "request_problem"]

#: The DICOM Application Context Name (PS3.7 A.2.1).
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


def request_problem(primitive: A_ASSOCIATE | None) -> str | None:
    """What makes an A-ASSOCIATE-RQ unfit for negotiation, if anything.

    Parameters
    ----------
    primitive: pynetdicom.pdu_primitives.A_ASSOCIATE | None
        The request as pynetdicom decoded it (``assoc.requestor.primitive``).

    Returns
    -------
    str | None
        ``None`` when the request is well formed, else a short phrase for the
        log (counts and IDs only, nothing the peer wrote), e.g.
        ``"presentation context 1 has no transfer syntax"``.
    """
    if primitive is None:
        return "no request"
    context_name = primitive.application_context_name
    if not context_name:
        return "no application context name"
    if str(context_name) != DICOM_APPLICATION_CONTEXT:
        return "not the DICOM application context"
    contexts = primitive.presentation_context_definition_list
    if not contexts:
        return "no presentation context"
    seen: set[int] = set()
    for context in contexts:
        context_id = context.context_id
        if context_id is None or context_id in seen:
            return "a presentation context ID is missing or used twice"
        seen.add(context_id)
        if not context.abstract_syntax:
            return f"presentation context {context_id} has no abstract syntax"
        if not context.transfer_syntax:
            return f"presentation context {context_id} has no transfer syntax"
    return None
