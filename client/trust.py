"""How this client trusts a coordinator's TLS certificate: a pin per address (the default), a
CA bundle, or nothing at all (`--insecure`). See `swarm.protocol.tls`."""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from swarm.protocol import tls
from swarm.protocol.errors import CertificateMismatchError, ConfigError, TransportError

logger = logging.getLogger(__name__)

PINS_FILE = "known_coordinators.json"


class CoordinatorTrust:
    """Channel credentials for each coordinator address.

    Args:
        pins: the file that remembers each address's certificate fingerprint.
        fingerprints: trust only these (the operator published them); empty: trust the first
            certificate an address presents and pin it.
        ca_file: verify against this CA bundle instead of pinning.
        insecure: plaintext, no TLS at all.
    """

    def __init__(
        self,
        pins: Path,
        *,
        fingerprints: tuple[str, ...] = (),
        ca_file: Path | None = None,
        insecure: bool = False,
        timeout_s: float = 10.0,
    ) -> None:
        if insecure and (fingerprints or ca_file):
            raise ConfigError("--insecure turns TLS off: drop the fingerprint and CA options")
        self._pins = pins
        self._fingerprints = tuple(tls.normalize_fingerprint(f) for f in fingerprints)
        self._ca = ca_file.read_bytes() if ca_file is not None else None
        self._insecure = insecure
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._used: dict[str, str] = {}  # target -> the fingerprint its channel trusts

    def credentials(self, target: str) -> tuple[grpc.ChannelCredentials | None, list[Any]]:
        """Credentials and extra channel options for `target` (None: plaintext).

        Raises:
            TransportError: the coordinator cannot be reached to read its certificate.
            CertificateMismatchError: it presents a certificate this client does not trust.
        """
        if self._insecure:
            return None, []
        if self._ca is not None:
            return grpc.ssl_channel_credentials(root_certificates=self._ca), []
        der = self._fetch(target)
        self._check(target, tls.fingerprint(der))
        self._used[target] = tls.fingerprint(der)
        # The pinned certificate is the only root: gRPC then accepts exactly it (or one signed
        # by its key), under the name it was issued for, whatever address was dialled.
        names = tls.certificate_names(der)
        options = [("grpc.ssl_target_name_override", names[0])] if names else []
        pem = ssl.DER_cert_to_PEM_cert(der).encode()
        return grpc.ssl_channel_credentials(root_certificates=pem), options

    def recheck(self, target: str) -> bool:
        """Read `target`'s certificate again (calls to it are failing) and compare it with the
        trusted ones. True if it is another trusted one (a rotation the operator announced
        with several `--coordinator-fingerprint`s): the caller's channel, built for the old
        one, must be rebuilt.

        Raises:
            CertificateMismatchError: it is not trusted.
        """
        if self._insecure or self._ca is not None:
            return False
        try:
            seen = tls.fingerprint(self._fetch(target))
        except TransportError:
            return False  # down: the caller goes on retrying
        self._check(target, seen)
        return target in self._used and self._used[target] != seen

    def _fetch(self, target: str) -> bytes:
        """`target`'s certificate; a plaintext answer where a certificate is expected is
        refused as a possible impersonation."""
        try:
            return tls.fetch_certificate(target, self._timeout_s)
        except ConfigError as exc:  # it answered without TLS
            if self._fingerprints or target in self._load():
                raise CertificateMismatchError(
                    f"the coordinator at {target} answered without TLS, but this client trusts "
                    "a certificate there: someone may be impersonating it. Ask its operator "
                    "before changing anything"
                ) from None
            raise exc from None

    def _check(self, target: str, seen: str) -> None:
        if self._fingerprints:
            if seen not in self._fingerprints:
                raise CertificateMismatchError(
                    f"the coordinator at {target} presents certificate {seen}, not the one given "
                    f"with --coordinator-fingerprint ({', '.join(self._fingerprints)}): it is "
                    "another server, or the operator changed its certificate; ask the operator"
                )
            return
        with self._lock:
            pins = self._load()
            pinned = pins.get(target)
            if pinned is None:
                pins[target] = {"fingerprint": seen, "pinned_at": time.time()}
                self._save(pins)
                logger.info("pinned the certificate of coordinator %s: %s", target, seen)
                return
        if pinned["fingerprint"] != seen:
            when = time.strftime("%Y-%m-%d", time.localtime(pinned.get("pinned_at", 0)))
            raise CertificateMismatchError(
                f"the coordinator at {target} presents certificate {seen}, but this client "
                f"pinned {pinned['fingerprint']} there on {when}. Someone may be impersonating "
                "it. If the operator really replaced the certificate, remove the entry for "
                f"{target} from {self._pins} (or join with --coordinator-fingerprint NEW)"
            )

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            pins = json.loads(self._pins.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self._pins} is damaged ({exc}); remove it to pin afresh") from None
        return pins if isinstance(pins, dict) else {}

    def _save(self, pins: dict[str, dict[str, Any]]) -> None:
        self._pins.parent.mkdir(parents=True, exist_ok=True)
        temp = self._pins.with_suffix(".tmp")
        temp.write_text(json.dumps(pins, indent=2, sort_keys=True))
        os.replace(temp, self._pins)
