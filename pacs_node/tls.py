"""DICOM TLS: :class:`ssl.SSLContext` objects for the SCP and for destinations.

Built from :class:`config.TLSSettings` (the ``[tls]`` table)::

    server = server_context(settings.tls, handshake_timeout=30)   # start_scp(..., ssl_context=)
    client = client_context(settings.tls)                          # scu.send(..., tls_context=)

Both use TLS 1.2 or later (BCP 195, as DCMTK's default
``--profile-bcp195-nd``) and Python's default cipher suites.

Handshake off the accept thread
    pynetdicom wraps each accepted socket with ``ssl_context.wrap_socket``
    in the server's *accept loop*; with the default
    ``do_handshake_on_connect=True`` a peer that connects and sends
    nothing (a port probe, a plain TCP client that waits for the server)
    would block every other connection. :class:`DeferredHandshakeContext`
    wraps without the handshake and gives the socket a timeout: OpenSSL
    then performs the handshake on the first read in the association's
    own thread, and a silent peer is dropped after `handshake_timeout`.

    :func:`handle_tls_handshake` (bound to ``evt.EVT_CONN_OPEN`` by
    :func:`pacs_node.ae.start_scp`) shakes hands explicitly in that thread,
    logs a failure in one WARNING line (peer address and the TLS alert, e.g.
    ``CERTIFICATE_VERIFY_FAILED``), keeps the reason for the audit trail
    (:func:`handshake_failure`) and closes the connection.

Nothing in this module logs key material, passwords or certificate
contents; errors name the settings key and the file path only.
"""
from __future__ import annotations

import logging
import socket
import ssl
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import TLSSettings
from pacs_node.errors import PacsNodeError

if TYPE_CHECKING:  # pragma: no cover
    from pynetdicom.association import Association
    from pynetdicom.events import Event

LOGGER = logging.getLogger(__name__)

__all__ = [
    "DeferredHandshakeContext",
    "TLSSetupError",
    "association_socket",
    "client_context",
    "handle_tls_handshake",
    "handshake_failure",
    "peer_certificate_subject",
    "server_context",
]


class TLSSetupError(PacsNodeError, ValueError):
    """A TLS certificate, key or CA file cannot be used (the message names the key)."""


class DeferredHandshakeContext(ssl.SSLContext):
    """A server :class:`ssl.SSLContext` whose sockets shake hands on first use.

    Attributes
    ----------
    handshake_timeout: float | None
        Seconds a wrapped socket waits on each read or write, which bounds
        the handshake (set by :func:`server_context`). pynetdicom only reads
        when ``select`` reports data, so an idle association is not affected.
    """

    handshake_timeout: float | None = 30.0

    def wrap_socket(
        self, sock: socket.socket, *args: Any, **kwargs: Any
    ) -> ssl.SSLSocket:
        """Wrap `sock` without the handshake; see the module docstring."""
        kwargs["do_handshake_on_connect"] = False
        sock.settimeout(self.handshake_timeout)
        return super().wrap_socket(sock, *args, **kwargs)


def _load_chain(
    context: ssl.SSLContext,
    key: str,
    certificate: Path,
    private_key: Path | None,
    password: str | None,
) -> None:
    try:
        context.load_cert_chain(certificate, private_key, password)
    except FileNotFoundError as exc:
        raise TLSSetupError(f'tls.{key}: file not found: {exc.filename}') from None
    except ssl.SSLError as exc:
        raise TLSSetupError(
            f"tls.{key}: cannot load the certificate {certificate} with its private key "
            f"{private_key or '(in the same file)'}: {exc.reason or type(exc).__name__} "
            "(wrong key, wrong password or not PEM)"
        ) from None
    except OSError as exc:
        raise TLSSetupError(f"tls.{key}: cannot read {certificate}: {exc.strerror}") from None


def _load_cas(context: ssl.SSLContext, key: str, path: Path) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except FileNotFoundError:
        raise TLSSetupError(f"tls.{key}: file not found: {path}") from None
    except ssl.SSLError as exc:
        raise TLSSetupError(
            f"tls.{key}: {path} holds no usable PEM CA certificate: "
            f"{exc.reason or type(exc).__name__}"
        ) from None
    except OSError as exc:
        raise TLSSetupError(f"tls.{key}: cannot read {path}: {exc.strerror}") from None


def server_context(
    tls: TLSSettings, *, handshake_timeout: float | None = 30.0
) -> ssl.SSLContext | None:
    """The SCP's TLS context, or ``None`` when ``tls.certificate`` is not set.

    Parameters
    ----------
    tls: config.TLSSettings
        The ``[tls]`` settings.
    handshake_timeout: float | None
        Seconds a peer gets for each step of the handshake (the node uses
        its ACSE timeout).

    Returns
    -------
    ssl.SSLContext | None
        A :class:`DeferredHandshakeContext` (TLS 1.2+, client certificates
        required when ``tls.require_client_certificate``, else optional
        when ``tls.ca_certificates`` is set), or ``None``.

    Raises
    ------
    TLSSetupError
        If a file is missing or unusable; the message names the key.
    """
    if tls.certificate is None:
        return None
    context = DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.handshake_timeout = handshake_timeout
    _load_chain(context, "certificate", tls.certificate, tls.private_key, tls.private_key_password)
    if tls.ca_certificates is not None:
        _load_cas(context, "ca_certificates", tls.ca_certificates)
        context.verify_mode = (
            ssl.CERT_REQUIRED if tls.require_client_certificate else ssl.CERT_OPTIONAL
        )
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(tls: TLSSettings) -> ssl.SSLContext:
    """The TLS context of associations to destinations with ``tls = true``.

    Parameters
    ----------
    tls: config.TLSSettings
        The ``[tls]`` settings.

    Returns
    -------
    ssl.SSLContext
        TLS 1.2+, the destination's certificate verified against
        ``tls.destination_ca_certificates`` (default: the system CAs) and
        its host name or IP address; ``tls.client_certificate`` presented
        when set.

    Raises
    ------
    TLSSetupError
        If a file is missing or unusable; the message names the key.
    """
    if tls.destination_ca_certificates is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _load_cas(context, "destination_ca_certificates", tls.destination_ca_certificates)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if tls.client_certificate is not None:
        _load_chain(
            context,
            "client_certificate",
            tls.client_certificate,
            tls.client_private_key,
            tls.client_private_key_password,
        )
    return context


def association_socket(assoc: object) -> object:
    """The connected socket of a pynetdicom association (``assoc.dul.socket.socket``).

    Parameters
    ----------
    assoc: pynetdicom.association.Association
        Any association, requestor or acceptor.

    Returns
    -------
    object
        An :class:`ssl.SSLSocket` over DICOM TLS, a plain socket otherwise, or
        ``None`` once the transport is gone.
    """
    return getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)


def peer_certificate_subject(sock: object) -> str | None:
    """Common name (else the whole subject) of the peer's verified certificate.

    Parameters
    ----------
    sock: object
        An association's socket (``assoc.dul.socket.socket``).

    Returns
    -------
    str | None
        E.g. ``"CN=orthanc.example.org"``; ``None`` for a plain socket or
        a TLS peer without a (verified) certificate.
    """
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        certificate = sock.getpeercert()
    except (ValueError, OSError):  # handshake not done / socket closed
        return None
    if not certificate:
        return None
    subject: Any = certificate.get("subject", ())
    pairs = [(str(name), str(value)) for rdn in subject for name, value in rdn]
    parts = [f"CN={value}" for name, value in pairs if name == "commonName"]
    text = ", ".join(parts or [f"{name}={value}" for name, value in pairs])
    return text[:256] or None


_FAILURES: weakref.WeakKeyDictionary[Association, str] = weakref.WeakKeyDictionary()
_FAILURES_LOCK = threading.Lock()


def _failure_text(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{exc.reason or 'CERTIFICATE_VERIFY_FAILED'}: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.library or type(exc).__name__)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


def handle_tls_handshake(event: Event) -> None:
    """Complete the TLS handshake of a new incoming connection, in its own thread.

    **Event** ``evt.EVT_CONN_OPEN`` (acceptor side). **Uses**
    ``event.assoc.dul.socket.socket`` and ``event.address``. Does nothing
    for a plain TCP socket or one that already shook hands.

    On failure (plain TCP peer, certificate from an unknown CA, no client
    certificate when one is required, timeout) it logs one WARNING line,
    keeps the reason for :func:`handshake_failure` and closes the socket,
    so the association thread ends at once (not after its ACSE timeout).

    Parameters
    ----------
    event: pynetdicom.events.Event
        The connection event.
    """
    wrapper = getattr(event.assoc.dul, "socket", None)
    sock = getattr(wrapper, "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return
    # The handshake gets the context's handshake timeout (the node's ACSE
    # timeout), whatever timeout other handlers gave the socket for PDUs.
    previous = sock.gettimeout()
    limit = getattr(sock.context, "handshake_timeout", previous)
    try:
        sock.settimeout(limit)
        sock.do_handshake()
        sock.settimeout(previous)
    except (ssl.SSLError, OSError) as exc:
        reason = f"TLS handshake failed: {_failure_text(exc)}"
        with _FAILURES_LOCK:
            _FAILURES[event.assoc] = reason
        peer = getattr(event, "address", None)
        address = peer if isinstance(peer, tuple) else (peer, "")
        LOGGER.warning("connection from %s:%s: %s", address[0], address[1], reason)
        try:
            sock.close()
        except OSError as close_error:
            LOGGER.debug("closing the failed TLS socket: %s", close_error)
        # Nothing can arrive on the closed socket: do not let the association
        # thread wait its ACSE timeout for an A-ASSOCIATE-RQ.
        event.assoc.acse_timeout = 0.05


def handshake_failure(assoc: Association) -> str | None:
    """Why the TLS handshake of `assoc` failed (see :func:`handle_tls_handshake`), or ``None``."""
    with _FAILURES_LOCK:
        return _FAILURES.get(assoc)
