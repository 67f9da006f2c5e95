"""Worker registration and session authentication.

A worker proves it holds its Ed25519 key by signing its registration. Registering again with a
key the coordinator knows (a restarted or re-connecting client) keeps the worker's id, and so
its credits, its place and its lease, under a fresh session token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select, update

from swarm.coordinator.ledger import Ledger
from swarm.coordinator.storage import Database, Worker
from swarm.protocol import messages as m
from swarm.protocol.errors import IntegrityError, ProtocolError, UnauthenticatedError
from swarm.protocol.limits import MAX_NAME_CHARS
from swarm.protocol.version import check_protocol_version
from swarm.scheduler import worker_account

logger = logging.getLogger(__name__)

MAX_CLOCK_SKEW_S = 600.0
TOUCH_EVERY_S = 2.0
"""How stale a worker's `last_seen_at` may get before a call records it again."""


def _hash_token(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


class WorkerRegistry:
    def __init__(self, db: Database, accounts: Callable[[str, str], str] | None = None) -> None:
        """`accounts` maps a volunteer's account token (and the peer, for throttling guesses)
        to the account their workers' credits go to, or raises `UnauthenticatedError`."""
        self._db = db
        self._accounts = accounts

    def register(self, request: m.RegisterWorkerRequest, peer: str) -> tuple[Worker, bytes]:
        """A worker and a fresh session token (stored hashed); the same worker as before if
        its key is known."""
        check_protocol_version(request.protocol_version)
        if len(request.public_key) != 32:
            raise ProtocolError(
                f"public_key must be a raw 32-byte Ed25519 key, got {len(request.public_key)} bytes"
            )
        name = request.name.strip() or "anonymous"
        if len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise ProtocolError(f"name must be at most {MAX_NAME_CHARS} printable characters")
        hardware = request.hardware
        if min(hardware.memory_bytes, hardware.flops_per_s, hardware.download_bytes_per_s) < 0:
            raise ProtocolError("hardware profile has negative numbers")
        now = time.time()
        skew = request.signed_at_unix_s - now
        if not abs(skew) <= MAX_CLOCK_SKEW_S:
            raise ProtocolError(
                f"the registration is signed {skew:+.0f}s from the coordinator's clock; set this "
                "machine's clock right (NTP) and join again"
            )
        try:
            Ed25519PublicKey.from_public_bytes(request.public_key).verify(
                request.signature,
                m.registration_signing_bytes(
                    request.public_key, request.name, request.signed_at_unix_s
                ),
            )
        except (InvalidSignature, ValueError):
            raise IntegrityError(
                "the registration's signature does not verify against its public key"
            ) from None
        account = self._account_of(request.account_token, peer)
        token = secrets.token_bytes(32)
        with self._db.transaction() as session:
            worker = session.scalars(
                select(Worker).where(Worker.public_key == request.public_key)
            ).first()
            returning = worker is not None
            if worker is None:
                worker = Worker(
                    id=f"wk-{secrets.token_hex(8)}",
                    public_key=request.public_key,
                    registered_at=now,
                    tasks_accepted=0,
                    tasks_failed=0,
                )
                session.add(worker)
            worker.name = name
            if account is not None:
                worker.account_id = account
            worker.token_hash = _hash_token(token)
            worker.hardware = asdict(request.hardware)
            if worker.download_bytes_per_s is None and hardware.download_bytes_per_s > 0:
                # The client's own measure until its downloads of real work refine it.
                worker.download_bytes_per_s = hardware.download_bytes_per_s
            worker.protocol_version = request.protocol_version
            worker.client_version = request.client_version[:64]
            worker.peer = peer[:128]
            worker.last_seen_at = now
        logger.info(
            "worker %s (%s, %s) %s from %s",
            worker.id,
            name,
            request.hardware.device_type,
            "registered again" if returning else "registered",
            peer,
        )
        return worker, token

    def _account_of(self, account_token: str, peer: str) -> str | None:
        """The account a registration links its worker to (None: leave it as it is)."""
        if not account_token:
            return None
        if self._accounts is None:
            raise UnauthenticatedError("this coordinator does not link workers to accounts")
        try:
            # Guesses are throttled per address: the peer without its port.
            return self._accounts(account_token, peer.rpartition(":")[0] or peer)
        except UnauthenticatedError as exc:
            raise UnauthenticatedError(
                f"account token not accepted ({exc}); run `swarmclient login --token` with a "
                "valid key, or `swarmclient logout` to work without an account"
            ) from None

    def reset_streak(self, worker_id: str) -> None:
        """A result of this worker was rejected: its run of valid results starts over."""
        with self._db.transaction() as session:
            session.execute(update(Worker).where(Worker.id == worker_id).values(valid_streak=0))

    def credits(self, worker: Worker) -> tuple[int, int]:
        """The worker's (granted, pending) micro-credits."""
        with self._db.transaction() as session:
            statement = Ledger().statement(session, worker.account_id or worker_account(worker.id))
        return int(statement["balance"]), int(statement["pending"])

    def authenticate(self, session_msg: m.Session, *, touch: bool = False) -> Worker:
        """The worker a session belongs to; `touch` records that it was seen now."""
        with self._db.read() as session:
            worker = session.get(Worker, session_msg.worker_id)
            if worker is None or not hmac.compare_digest(
                worker.token_hash, _hash_token(session_msg.token)
            ):
                raise UnauthenticatedError(
                    "unknown worker session; register again (the coordinator may have been reset)"
                )
        now = time.time()
        # A worker calls several times a second while it works; "seen" needs to be fresh to
        # seconds, not to every call, so most calls write nothing.
        if touch and now - (worker.last_seen_at or 0.0) >= TOUCH_EVERY_S:
            with self._db.transaction() as session:
                session.execute(
                    update(Worker).where(Worker.id == worker.id).values(last_seen_at=now)
                )
            worker.last_seen_at = now
        return worker


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> None:
    """Raise `IntegrityError` unless `signature` is the worker's Ed25519 signature of `message`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise IntegrityError("result signature does not verify against the worker's key") from None
