"""TLS for the worker protocol: the coordinator's certificate, and how workers come to trust it.

A coordinator serves gRPC over TLS with a certificate it is given, or one it creates on first
run (self-signed, ECDSA P-256, kept in its data directory). Workers trust it one of two ways:

- **pinning** (the default): on first contact the worker records the SHA-256 fingerprint of the
  certificate the coordinator presents (trust on first use, as SSH does with host keys), or takes
  the one the operator published (`--coordinator-fingerprint`), and from then on refuses any
  other certificate at that address with a message that says what to do;
- **a CA**: the worker verifies the certificate chain and host name against a CA bundle.

Only the handshake and the fingerprint live here; the coordinator's and client's settings
choose between them.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from swarm.protocol.errors import ConfigError, TransportError

SELF_SIGNED_NAME = "swarm-coordinator"
"""The DNS name in a self-signed coordinator certificate; pinned channels verify against it,
whatever address they dial."""


def fingerprint(der: bytes) -> str:
    """`SHA256:` and the hex digest of a certificate's DER bytes."""
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def normalize_fingerprint(text: str) -> str:
    """Accept `SHA256:ab12...`, `ab:12:...` or plain hex; return the `fingerprint` form."""
    digest = text.strip()
    if digest.upper().startswith("SHA256:"):
        digest = digest[7:]
    digest = digest.replace(":", "").lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(
            f"a certificate fingerprint is SHA256: and 64 hex digits, as the coordinator logs "
            f"it; got {text[:80]!r}"
        )
    return "SHA256:" + digest


@dataclass(frozen=True)
class Certificate:
    """What a coordinator serves: `cert_pem` may be a chain, its first certificate the
    coordinator's own (the one workers see and pin)."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def der(self) -> bytes:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        return x509.load_pem_x509_certificates(self.cert_pem)[0].public_bytes(Encoding.DER)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.der)


def self_signed(directory: Path) -> Certificate:
    """The certificate in `directory`, created (self-signed, 10 years) if there is none."""
    cert_path, key_path = directory / "coordinator.crt", directory / "coordinator.key"
    if cert_path.exists() and key_path.exists():
        return Certificate(cert_path.read_bytes(), key_path.read_bytes())
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SELF_SIGNED_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(SELF_SIGNED_NAME),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    directory.mkdir(parents=True, exist_ok=True)
    # The key first, readable by the owner only, each file written whole or not at all.
    for path, data, mode in (
        (key_path, key_pem, 0o600),
        (cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644),
    ):
        temp = path.with_suffix(path.suffix + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        temp.replace(path)
    return Certificate(cert_path.read_bytes(), key_path.read_bytes())


def load(cert_path: Path, key_path: Path) -> Certificate:
    """A certificate (chain) and key the operator gave, in PEM."""
    try:
        cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS certificate or key: {exc}") from None
    certificate = Certificate(cert_pem, key_pem)
    try:
        certificate.der  # noqa: B018 (parses the chain)
    except ValueError as exc:
        raise ConfigError(f"{cert_path} must hold PEM certificates: {exc}") from None
    if b"PRIVATE KEY-----" not in key_pem:
        raise ConfigError(f"{key_path} must hold a PEM private key")
    return certificate


def fetch_certificate(target: str, timeout_s: float) -> bytes:
    """The DER certificate a coordinator at `HOST:PORT` presents, read in a TLS handshake that
    verifies nothing (the caller compares the fingerprint with the one it trusts).

    Raises:
        TransportError: nothing answers, or the handshake fails.
        ConfigError: it answers in plaintext (a coordinator run with --no-tls).
    """
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])  # gRPC servers refuse handshakes without it
    try:
        with (
            socket.create_connection((host, int(port)), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host or None) as wrapped,
        ):
            der = wrapped.getpeercert(binary_form=True)
    except ssl.SSLError as exc:
        if exc.reason == "WRONG_VERSION_NUMBER":  # it answered, in plaintext: retrying won't help
            raise ConfigError(
                f"the coordinator at {target} does not speak TLS (it runs with --no-tls); join "
                "with --insecure if you trust the network between you, or ask its operator to "
                "turn TLS on"
            ) from None
        raise TransportError(
            f"the TLS handshake with the coordinator at {target} failed ({exc.reason})"
        ) from None
    except OSError as exc:
        raise TransportError(f"cannot reach {target}: {exc}") from None
    if not der:
        raise TransportError(f"the coordinator at {target} presented no certificate")
    return der


def certificate_names(der: bytes) -> list[str]:
    """The DNS names (then the common name) a certificate is for."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns = list(names.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns = []
    common = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return dns + common
