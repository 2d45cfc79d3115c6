"""A throw-away PKI for the DICOM TLS tests, made with the ``openssl`` command.

(Python's ``cryptography`` package is not a dependency.) :func:`make_pki`
writes, in a folder::

    ca.pem / ca.key              the test CA (self-signed)
    server.pem / server.key      CN=deepsc-node, SAN IP:127.0.0.1, DNS:localhost (signed by ca)
    client.pem / client.key      CN=modality-1 (signed by ca)
    other-ca.pem                 another self-signed CA
    other-client.pem / .key      CN=intruder (signed by other-ca)
    peer.pem / peer.key          CN=tls-pacs, SAN IP:127.0.0.1 (signed by ca): a TLS destination

Keys are unencrypted RSA 2048 (fast to make; each certificate is valid for
one day).
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.peers import require_binary

__all__ = ["PKI", "make_pki"]


@dataclass(frozen=True)
class PKI:
    """Paths of the files written by :func:`make_pki`."""

    folder: Path

    def pem(self, name: str) -> Path:
        """``<name>.pem``, e.g. ``pki.pem("server")``."""
        return self.folder / f"{name}.pem"

    def key(self, name: str) -> Path:
        """``<name>.key``, e.g. ``pki.key("client")``."""
        return self.folder / f"{name}.key"

    @property
    def ca(self) -> Path:
        """The test CA certificate."""
        return self.pem("ca")


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        [require_binary("openssl"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")


def _ca(folder: Path, name: str, common_name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "1",
        "-subj", f"/CN={common_name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )


def _leaf(folder: Path, name: str, common_name: str, ca: str, san: str | None) -> None:
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj", f"/CN={common_name}",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder,
    )
    extensions = folder / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=digitalSignature,keyEncipherment",
             "extendedKeyUsage=serverAuth,clientAuth"]
    if san:
        lines.append(f"subjectAltName={san}")
    extensions.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "1", "-sha256", "-extfile", extensions.name,
        "-out", f"{name}.pem", cwd=folder,
    )


def make_pki(folder: Path) -> PKI:
    """Write the test CA, server, client and foreign certificates to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    _ca(folder, "ca", "deepsc test CA")
    _ca(folder, "other-ca", "some other CA")
    _leaf(folder, "server", "deepsc-node", "ca", "IP:127.0.0.1,DNS:localhost")
    _leaf(folder, "client", "modality-1", "ca", None)
    _leaf(folder, "peer", "tls-pacs", "ca", "IP:127.0.0.1,DNS:localhost")
    _leaf(folder, "other-client", "intruder", "other-ca", None)
    return PKI(folder)
