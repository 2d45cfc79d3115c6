"""The ``[tls]`` table of the settings: DICOM TLS for the SCP and for destinations.

DICOM TLS (PS3.15 Annex B.1, "Basic TLS Secure Transport Connection
Profile"; BCP 195) protects associations with TLS 1.2 or later.

SCP (incoming)
    ``certificate`` set: the node's port speaks TLS only (plain TCP peers
    fail the handshake). ``ca_certificates`` are the CAs whose client
    certificates are trusted; with ``require_client_certificate`` (default)
    a peer without a certificate from one of them cannot associate.
SCU (outgoing)
    A destination with ``tls = true`` is reached over TLS; its certificate
    is checked against ``destination_ca_certificates`` (default: the system
    CAs) and its host name or IP address. ``client_certificate`` is
    presented when the destination asks for one.

Private key passwords are secrets: they are not part of ``repr`` and
``Settings.to_dict(hide_secrets=True)`` replaces them with ``"<hidden>"``.
Prefer unencrypted keys readable only by the node's user, or pass the
password in ``DEEPSC_TLS__PRIVATE_KEY_PASSWORD`` rather than the file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from config.sections import check_field
from config.validators import show, to_bool, to_path

LOGGER = logging.getLogger(__name__)

__all__ = ["TLS_FIELDS", "TLS_PATH_FIELDS", "TLS_SECRET_FIELDS", "TLSSettings"]


def to_optional_path(value: Any, base_dir: Path | None = None) -> Path | None:
    """``None`` for ``None`` or ``""``, else an absolute path (relative to `base_dir`)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return to_path(value, base_dir or Path.cwd())


def to_optional_secret(value: Any) -> str | None:
    """``None`` for ``None`` or ``""``, else the string as given (not stripped)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError("should be a string")  # never show a secret's value
    return value


#: Keys of the ``[tls]`` table and their converters.
TLS_FIELDS: dict[str, Callable[..., Any]] = {
    "certificate": to_optional_path,
    "private_key": to_optional_path,
    "private_key_password": to_optional_secret,
    "ca_certificates": to_optional_path,
    "require_client_certificate": to_bool,
    "destination_ca_certificates": to_optional_path,
    "client_certificate": to_optional_path,
    "client_private_key": to_optional_path,
    "client_private_key_password": to_optional_secret,
}
#: Keys whose values are paths (relative paths in a file: from the file's folder).
TLS_PATH_FIELDS: frozenset[str] = frozenset(
    name for name, convert in TLS_FIELDS.items() if convert is to_optional_path
)
#: Keys whose values are secrets (hidden in ``to_dict(hide_secrets=True)``).
TLS_SECRET_FIELDS: frozenset[str] = frozenset(
    {"private_key_password", "client_private_key_password"}
)


@dataclass(frozen=True)
class TLSSettings:
    """DICOM TLS of the node's SCP and of its associations to destinations.

    Parameters
    ----------
    certificate: pathlib.Path | None
        PEM certificate (chain) of the SCP. Set: the SCP accepts TLS only.
        Default ``None``: plain TCP.
    private_key: pathlib.Path | None
        PEM private key of `certificate`; ``None``: the key is in the
        certificate file.
    private_key_password: str | None
        Password of an encrypted `private_key` (secret).
    ca_certificates: pathlib.Path | None
        PEM file of the CAs whose client certificates the SCP trusts.
    require_client_certificate: bool
        Refuse TLS peers without a client certificate from
        `ca_certificates`. Default ``True``.
    destination_ca_certificates: pathlib.Path | None
        PEM file of the CAs trusted for destinations with ``tls = true``;
        ``None``: the system's default CAs.
    client_certificate: pathlib.Path | None
        PEM certificate (chain) presented to TLS destinations; ``None``: none.
    client_private_key: pathlib.Path | None
        PEM private key of `client_certificate`; ``None``: in that file.
    client_private_key_password: str | None
        Password of an encrypted `client_private_key` (secret).

    Raises
    ------
    ValueError
        If a value is invalid, a key is given without its certificate, or
        the SCP requires client certificates without `ca_certificates`.
    """

    certificate: Path | None = None
    private_key: Path | None = None
    private_key_password: str | None = field(default=None, repr=False)
    ca_certificates: Path | None = None
    require_client_certificate: bool = True
    destination_ca_certificates: Path | None = None
    client_certificate: Path | None = None
    client_private_key: Path | None = None
    client_private_key_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name, convert in TLS_FIELDS.items():
            check_field(self, name, convert)
        if self.certificate is None and (self.private_key or self.private_key_password):
            raise ValueError('Argument "private_key" should only be set with "certificate"')
        if self.client_certificate is None and (
            self.client_private_key or self.client_private_key_password
        ):
            raise ValueError(
                'Argument "client_private_key" should only be set with "client_certificate"'
            )
        if self.certificate is not None and self.require_client_certificate and (
            self.ca_certificates is None
        ):
            raise ValueError(
                'Argument "ca_certificates" should name the CAs of the client certificates '
                "when require_client_certificate is true (or set require_client_certificate "
                "= false)"
            )

    @property
    def scp_enabled(self) -> bool:
        """Whether the SCP speaks TLS (a `certificate` is set)."""
        return self.certificate is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (paths as strings; unset values ``None``)."""
        return {
            f.name: str(value) if isinstance(value, Path) else value
            for f in fields(self)
            for value in (getattr(self, f.name),)
        }


def tls_table(value: Any) -> TLSSettings:
    """Accept only :class:`TLSSettings` (the loader builds it from the table)."""
    if isinstance(value, TLSSettings):
        return value
    raise ValueError(f"should be TLSSettings, got {show(type(value).__name__)}")
