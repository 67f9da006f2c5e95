"""Worker registration and session authentication."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import asdict

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from swarm.coordinator.storage import Database, Worker
from swarm.protocol import messages as m
from swarm.protocol.errors import IntegrityError, ProtocolError, UnauthenticatedError
from swarm.protocol.limits import MAX_NAME_CHARS
from swarm.protocol.version import check_protocol_version

logger = logging.getLogger(__name__)


def _hash_token(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


class WorkerRegistry:
    def __init__(self, db: Database) -> None:
        self._db = db

    def register(self, request: m.RegisterWorkerRequest, peer: str) -> tuple[Worker, bytes]:
        """Create a worker and a fresh session token (stored hashed)."""
        check_protocol_version(request.protocol_version)
        if len(request.public_key) != 32:
            raise ProtocolError(
                f"public_key must be a raw 32-byte Ed25519 key, got {len(request.public_key)} bytes"
            )
        name = request.name.strip() or "anonymous"
        if len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise ProtocolError(f"name must be at most {MAX_NAME_CHARS} printable characters")
        if request.hardware.memory_bytes < 0 or request.hardware.flops_per_s < 0:
            raise ProtocolError("hardware profile has negative numbers")
        token = secrets.token_bytes(32)
        now = time.time()
        worker = Worker(
            id=f"wk-{secrets.token_hex(8)}",
            name=name,
            public_key=request.public_key,
            token_hash=_hash_token(token),
            hardware=asdict(request.hardware),
            protocol_version=request.protocol_version,
            client_version=request.client_version[:64],
            peer=peer[:128],
            registered_at=now,
            last_seen_at=now,
            tasks_accepted=0,
            tasks_failed=0,
        )
        with self._db.transaction() as session:
            session.add(worker)
        logger.info(
            "worker %s (%s, %s) registered from %s",
            worker.id,
            name,
            request.hardware.device_type,
            peer,
        )
        return worker, token

    def authenticate(self, session_msg: m.Session, *, touch: bool = False) -> Worker:
        """The worker a session belongs to; `touch` records that it was seen now."""
        with self._db.transaction() as session:
            worker = session.get(Worker, session_msg.worker_id)
            if worker is None or not hmac.compare_digest(
                worker.token_hash, _hash_token(session_msg.token)
            ):
                raise UnauthenticatedError(
                    "unknown worker session; register again (the coordinator may have been reset)"
                )
            if touch:
                worker.last_seen_at = time.time()
            return worker


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Raise `IntegrityError` unless `signature` is the worker's Ed25519 signature of `message`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise IntegrityError("result signature does not verify against the worker's key") from None
