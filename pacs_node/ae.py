"""The node's Application Entity: presentation contexts, association policy, SCP lifecycle.

:func:`build_ae` makes the AE (what it accepts and from whom),
:func:`start_scp` starts the Storage/Verification SCP in background threads
with the handlers of :mod:`pacs_node.handlers` bound to a receiver, and
:func:`stop_scp` shuts it down cleanly::

    ae = build_ae("DEEPSC", allowed_calling_aes=["ORTHANC"])
    server = start_scp(ae, "0.0.0.0", 11112, receiver)
    ...
    stop_scp(server)

pynetdicom configuration
    Only :func:`configure_pynetdicom` changes ``pynetdicom._config``, and only
    when called (it is process-wide): ``LOG_HANDLER_LEVEL`` (``"none"``
    silences pynetdicom's per-message INFO lines; the node logs association
    outcomes itself). ``ENFORCE_UID_CONFORMANCE`` stays ``False`` on purpose:
    :func:`~pacs_node.handlers.handle_store` checks UIDs itself and answers
    with a status and comment the peer can act on, where pynetdicom would
    answer at the DIMSE level without one. ``STORE_RECV_CHUNKED_DATASET``
    stays ``False``: the handler hands bytes in memory to the receiver.

Transport (issue 6)
    :func:`handle_connection_open` sets ``TCP_NODELAY`` on every association
    socket, SCP and SCU: without it a C-STORE between two pynetdicom AEs
    on Linux took ~53 ms (Nagle + delayed ACK), with it ~8 ms for a small
    instance on this 2-core machine. :data:`DEFAULT_MAXIMUM_PDU_SIZE` is
    256 KiB. pynetdicom's reactor polling (``sleep(0.001)``) has no
    setting and is left alone.
"""
from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    UID,
)
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from config import CallingAE, Settings
from pacs_node.handlers import (
    LOGGING_HANDLERS,
    AssociationPolicy,
    handle_association_request,
    handle_echo,
    handle_store,
)
from pacs_node.receive import Receiver
from pacs_node.tls import handle_tls_handshake

if TYPE_CHECKING:  # pragma: no cover
    from pynetdicom.events import Event

    from pacs_node.audit import AssociationAudit
    from pacs_node.holds import SeriesHolds

LOGGER = logging.getLogger(__name__)

__all__ = [
    "ACCEPTED_TRANSFER_SYNTAXES",
    "DEFAULT_MAXIMUM_PDU_SIZE",
    "NodeAE",
    "STORAGE_SOP_CLASSES",
    "ae_from_settings",
    "build_ae",
    "configure_pynetdicom",
    "handle_connection_open",
    "start_scp",
    "stop_scp",
]

#: Transfer syntaxes accepted for every storage SOP class, in the node's
#: order of preference (pynetdicom, as acceptor, takes the first of these
#: that the requestor proposes in a context). Uncompressed first: no
#: decoding cost and nothing lost; then lossless compression; deflate;
#: lossy compression (accepted, as a sender with only lossy data proposes
#: only that); last Explicit VR Big Endian, retired in 2004 but still
#: proposed by old modalities and read by pydicom. Every entry has a pixel
#: data decoder installed (pylibjpeg-libjpeg, -openjpeg, -rle or pydicom
#: itself); ``tests/test_transfer_syntaxes.py`` checks that.
ACCEPTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLosslessSV1,
    JPEGLossless,
    RLELossless,
    DeflatedExplicitVRLittleEndian,
    JPEGLSNearLossless,
    JPEG2000,
    JPEGExtended12Bit,
    JPEGBaseline8Bit,
    ExplicitVRBigEndian,
)

#: Storage SOP classes accepted: all of pynetdicom's (170; an acceptor has
#: no 128-context limit). A chest study may carry CT and Enhanced/Legacy
#: Converted CT images, secondary captures, presentation states, dose SRs,
#: key object selections, segmentations, parametric maps and PDFs.
STORAGE_SOP_CLASSES: tuple[UID, ...] = tuple(
    UID(cx.abstract_syntax) for cx in AllStoragePresentationContexts if cx.abstract_syntax
)

#: Largest P-DATA PDU the node accepts, in bytes. pynetdicom's default
#: (16382) splits a 512x512 CT slice into ~32 PDUs; 256 KiB makes it ~2
#: and cuts per-PDU overhead (issue 6). ``0`` would mean unlimited.
DEFAULT_MAXIMUM_PDU_SIZE = 262144

#: Associations served at the same time before pynetdicom rejects more
#: (transient, local limit exceeded).
DEFAULT_MAXIMUM_ASSOCIATIONS = 16


class NodeAE(AE):
    """A pynetdicom :class:`~pynetdicom.ae.ApplicationEntity` with the node's policy.

    Build it with :func:`build_ae`.

    Parameters
    ----------
    policy: pacs_node.handlers.AssociationPolicy
        Who may associate; :func:`start_scp` binds it to ``evt.EVT_REQUESTED``.
    """

    def __init__(self, policy: AssociationPolicy) -> None:
        if not isinstance(policy, AssociationPolicy):
            raise TypeError(
                f'Argument "policy" should be an AssociationPolicy, got {type(policy).__name__}'
            )
        super().__init__(policy.ae_title)
        self.policy = policy


def handle_connection_open(event: Event) -> None:
    """Set ``TCP_NODELAY`` and a timeout on a new association's socket (both roles).

    **Event** ``evt.EVT_CONN_OPEN``. **Uses** ``event.assoc.dul.socket`` and
    ``event.assoc.network_timeout``.

    Timeout: pynetdicom leaves an accepted socket (and a connected one)
    blocking without a timeout, and its DUL thread reads a whole PDU in one
    blocking ``recv`` loop. A peer that sent a PDU header (or random bytes
    that look like one) and then nothing held the association, its threads
    and its socket forever, past every ACSE, DIMSE and network timeout
    (found by ``tests/test_fuzz_pdu.py``; 16 such connections would have
    used up ``maximum_associations``). With the association's network
    timeout on the socket, such a read or a send to a peer that stops
    reading fails after that many seconds and the association is aborted.

    pynetdicom sends a DIMSE command and its data set as separate PDUs;
    with Nagle's algorithm on, the second small write waits for the peer's
    delayed ACK, about 40 ms per C-STORE on Linux (the stall that DCMTK's
    ``TCP_NODELAY`` environment variable avoids). pynetdicom does not set
    the option itself, so this handler does, for the SCP
    (:func:`start_scp`) and the SCU (:mod:`pacs_node.scu`).

    Parameters
    ----------
    event: pynetdicom.events.Event
        The connection event.
    """
    wrapper = getattr(event.assoc.dul, "socket", None)
    sock = getattr(wrapper, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:  # e.g. a socket type without TCP options
        LOGGER.debug("cannot set TCP_NODELAY: %s", exc)
    timeout = getattr(event.assoc, "network_timeout", None)
    if timeout is not None:
        sock.settimeout(timeout)


def _timeout(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f'Argument "{name}" should be a number of seconds or None')
    if not value > 0:
        raise ValueError(f'Argument "{name}" should be > 0 seconds, got {value}')
    return float(value)


def build_ae(
    ae_title: str,
    *,
    allowed_calling_aes: Sequence[str | CallingAE] | None = None,
    require_called_ae: bool = True,
    acse_timeout: float | None = 30.0,
    dimse_timeout: float | None = 60.0,
    network_timeout: float | None = 60.0,
    maximum_pdu_size: int = DEFAULT_MAXIMUM_PDU_SIZE,
    maximum_associations: int = DEFAULT_MAXIMUM_ASSOCIATIONS,
) -> NodeAE:
    """Build the node's AE as Verification SCP and Storage SCP.

    Supported presentation contexts: Verification (Implicit and Explicit VR
    Little Endian) and each of :data:`STORAGE_SOP_CLASSES` with each of
    :data:`ACCEPTED_TRANSFER_SYNTAXES`.

    Parameters
    ----------
    ae_title: str
        The node's AE title (1-16 characters).
    allowed_calling_aes: Sequence[str | config.CallingAE] | None
        Peers allowed to associate (``"AE"``, ``"AE@host"`` or
        :class:`~config.CallingAE`). ``None`` or empty: anyone. Others are
        rejected with A-ASSOCIATE-RJ *calling-AE-title-not-recognized*.
    require_called_ae: bool
        Reject requests whose Called AE Title is not `ae_title` with
        *called-AE-title-not-recognized*. Default ``True``.
    acse_timeout, dimse_timeout, network_timeout: float | None
        Seconds to wait for association messages, for DIMSE messages, and
        on an idle connection; ``None``: forever.
    maximum_pdu_size: int
        Largest PDU the node receives, in bytes (``0``: unlimited).
    maximum_associations: int
        Associations served at once.

    Returns
    -------
    NodeAE
        The AE, not yet listening (see :func:`start_scp`).

    Raises
    ------
    ValueError
        If a title, timeout or size is invalid (the message names it).
    TypeError
        If an argument has the wrong type.
    """
    allowed: list[CallingAE] = []
    for value in allowed_calling_aes or ():
        try:
            allowed.append(CallingAE.parse(value))
        except ValueError as exc:
            raise ValueError(f'Argument "allowed_calling_aes" {exc}') from None
    policy = AssociationPolicy(ae_title, tuple(allowed), require_called_ae=require_called_ae)
    if isinstance(maximum_pdu_size, bool) or not isinstance(maximum_pdu_size, int):
        raise TypeError('Argument "maximum_pdu_size" should be an int')
    if maximum_pdu_size != 0 and not 4096 <= maximum_pdu_size <= 0xFFFFFFFF:
        raise ValueError(
            f'Argument "maximum_pdu_size" should be 0 (unlimited) or 4096-4294967295, '
            f"got {maximum_pdu_size}"
        )
    if isinstance(maximum_associations, bool) or not isinstance(maximum_associations, int):
        raise TypeError('Argument "maximum_associations" should be an int')
    if maximum_associations < 1:
        raise ValueError(
            f'Argument "maximum_associations" should be >= 1, got {maximum_associations}'
        )
    ae = NodeAE(policy)
    ae.acse_timeout = _timeout("acse_timeout", acse_timeout)
    ae.dimse_timeout = _timeout("dimse_timeout", dimse_timeout)
    ae.network_timeout = _timeout("network_timeout", network_timeout)
    ae.maximum_pdu_size = maximum_pdu_size
    ae.maximum_associations = maximum_associations
    # pynetdicom's own checks as a fallback when the AE is served without
    # handle_association_request (which checks first, and hosts too).
    ae.require_called_aet = policy.require_called_ae
    ae.require_calling_aet = sorted({entry.ae_title for entry in policy.allowed_calling_aes})
    ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
    return ae


def ae_from_settings(settings: Settings) -> NodeAE:
    """:func:`build_ae` with the node's settings (title, allow-list, called-AE check, timeouts).

    Parameters
    ----------
    settings: config.Settings
        The loaded settings.

    Returns
    -------
    NodeAE
        The AE, not yet listening.
    """
    return build_ae(
        settings.ae_title,
        allowed_calling_aes=settings.allowed_calling_aes,
        require_called_ae=settings.require_called_ae,
        acse_timeout=settings.timeouts.acse,
        dimse_timeout=settings.timeouts.dimse,
        network_timeout=settings.timeouts.network,
    )


def start_scp(
    ae: AE,
    bind_address: str,
    port: int,
    receiver: Receiver,
    *,
    ssl_context: ssl.SSLContext | None = None,
    audit: AssociationAudit | None = None,
    holds: SeriesHolds | None = None,
) -> ThreadedAssociationServer:
    """Start listening in background threads; C-STOREs go to `receiver`.

    Binds :func:`handle_connection_open`, :func:`~pacs_node.handlers.handle_echo`,
    :func:`~pacs_node.handlers.handle_store` (with `receiver`),
    :func:`~pacs_node.handlers.handle_association_request` (with the AE's
    policy) and the association logging handlers.

    Parameters
    ----------
    ae: pynetdicom.AE
        Preferably from :func:`build_ae`; for a plain ``AE`` the policy is
        taken from its ``ae_title``, ``require_called_aet`` and
        ``require_calling_aet``.
    bind_address: str
        Address to listen on, e.g. ``"0.0.0.0"`` or ``"127.0.0.1"``.
    port: int
        TCP port; ``0`` picks a free one (read it from
        ``server.server_address``).
    receiver: pacs_node.receive.Receiver
        Keeps received instances.
    ssl_context: ssl.SSLContext | None
        Server-side TLS context (DICOM TLS, PS3.15 B.1; see
        :func:`pacs_node.tls.server_context`); ``None``: plain TCP. With a
        context, :func:`pacs_node.tls.handle_tls_handshake` completes each
        handshake in the connection's own thread.
    audit: pacs_node.audit.AssociationAudit | None
        Records every connection in the database audit trail; ``None``:
        no audit (logs only).
    holds: pacs_node.holds.SeriesHolds | None
        Learns which open association delivered instances of which series
        (C-STORE handler) and when associations end, for the series
        watcher's ``max_series_hold``; ``None``: not tracked.

    Returns
    -------
    pynetdicom.transport.ThreadedAssociationServer
        The running server; stop it with :func:`stop_scp`.

    Raises
    ------
    TypeError
        If `receiver` has no ``receive`` method or `ae` is not an AE.
    ValueError
        If `port` is outside 0-65535.
    OSError
        If the address cannot be bound (e.g. port in use).
    """
    if not isinstance(ae, AE):
        raise TypeError(f'Argument "ae" should be a pynetdicom AE, got {type(ae).__name__}')
    if not isinstance(receiver, Receiver):
        raise TypeError(
            f'Argument "receiver" should have a receive(instance) method, '
            f"got {type(receiver).__name__}"
        )
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f'Argument "port" should be an int 0-65535, got {port!r}')
    if isinstance(ae, NodeAE):
        policy = ae.policy
    else:
        policy = AssociationPolicy(
            ae.ae_title,
            tuple(CallingAE(title) for title in ae.require_calling_aet),
            require_called_ae=ae.require_called_aet,
        )
    handlers: list[evt.EventHandlerType] = [(evt.EVT_CONN_OPEN, handle_connection_open)]
    if ssl_context is not None:
        handlers.append((evt.EVT_CONN_OPEN, handle_tls_handshake))
    if audit is not None:
        handlers.extend(audit.handlers())
    if holds is not None:
        handlers.extend(holds.handlers())
    handlers += [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [receiver, holds]),
        (evt.EVT_REQUESTED, handle_association_request, [policy]),
        *LOGGING_HANDLERS,
    ]
    server = ae.start_server(
        (bind_address, port), block=False, evt_handlers=handlers, ssl_context=ssl_context
    )
    if server is None:  # pragma: no cover - pynetdicom returns it when block=False
        raise RuntimeError("pynetdicom did not return the association server")
    host, bound_port = server.server_address[:2]
    LOGGER.info(
        "SCP %r listening on %s:%d%s (calling AEs: %s)",
        policy.ae_title, host, bound_port, " with TLS" if ssl_context else "",
        ", ".join(str(e.ae_title) + (f"@{e.host}" if e.host else "")
                  for e in policy.allowed_calling_aes) or "any",
    )
    return server


def stop_scp(server: ThreadedAssociationServer, *, timeout: float = 10.0) -> int:
    """Stop accepting associations, let running ones finish, abort stragglers.

    Parameters
    ----------
    server: pynetdicom.transport.ThreadedAssociationServer
        From :func:`start_scp`.
    timeout: float
        Seconds to wait for running associations to end before aborting
        them (A-ABORT). Default 10.

    Returns
    -------
    int
        Number of associations that had to be aborted.

    Raises
    ------
    ValueError
        If `timeout` is negative.
    """
    if timeout < 0:
        raise ValueError(f'Argument "timeout" should be >= 0, got {timeout}')
    host, port = server.server_address[:2]
    server.shutdown()
    # A connection that never sent an A-ASSOCIATE-RQ (a port probe, a health
    # check) carries no work: drop it at once instead of waiting for its
    # ACSE timeout.
    for assoc in server.active_associations:
        if not (assoc.is_established or assoc.is_released or assoc.is_aborted):
            assoc.abort()
    deadline = time.monotonic() + timeout
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    stragglers = server.active_associations
    for assoc in stragglers:
        assoc.abort()
    for assoc in stragglers:
        assoc.join(timeout=5.0)
    LOGGER.info(
        "SCP on %s:%d stopped%s", host, port,
        f" ({len(stragglers)} associations aborted)" if stragglers else "",
    )
    return len(stragglers)


def configure_pynetdicom(*, log_handler_level: str = "none") -> None:
    """Set the process-wide ``pynetdicom._config`` options the node relies on.

    Call once at start-up (``serve``), before associations are made.

    Parameters
    ----------
    log_handler_level: str
        ``pynetdicom._config.LOG_HANDLER_LEVEL``: ``"none"`` (default) drops
        pynetdicom's per-PDU/DIMSE log lines (the node logs association
        outcomes and refusals itself, and formatting them costs time per
        C-STORE); ``"standard"`` keeps them for debugging.

    Raises
    ------
    ValueError
        If `log_handler_level` is not ``"none"`` or ``"standard"``.
    """
    if log_handler_level not in ("none", "standard"):
        raise ValueError(
            f'Argument "log_handler_level" should be "none" or "standard", '
            f"got {log_handler_level!r}"
        )
    _config.LOG_HANDLER_LEVEL = log_handler_level
