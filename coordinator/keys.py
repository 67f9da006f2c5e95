"""API keys: who is calling the HTTP API, and what they may see and do.

A key is `sk-swarm-` and 43 random URL-safe characters (256 bits). The coordinator stores only
its SHA-256 (a fast hash is enough for a secret this random: there is nothing to guess), a
short hint to recognise it by, the account it belongs to and its role:

- `researcher`: their own files, jobs, models and credits; the shared numbers (models, queue,
  workers, leaderboard).
- `operator`: everything, plus granting credits, research-pool jobs and everyone's keys.

Until the first key exists the coordinator is in setup mode: a request from this machine
(loopback, and not forwarded by a proxy) acts as the local operator, so `swarm keys create`
can make that first key. Once any key exists, every request needs one.

Guessing is throttled: an address that sends too many wrong keys within a minute gets 429
(with `Retry-After`) instead of 401 for its wrong keys until that minute is over; a valid key
always works, so one bad client cannot lock out the others behind the same address.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from sqlalchemy import select

from swarm.coordinator.storage import ApiKey, Database
from swarm.protocol.errors import (
    ConfigError,
    NotFoundError,
    RateLimitedError,
    UnauthenticatedError,
)
from swarm.scheduler import check_account, user_account

logger = logging.getLogger(__name__)

Role = Literal["researcher", "operator"]
ROLES: tuple[str, ...] = get_args(Role)
KEY_PREFIX = "sk-swarm-"
LOCAL_ACCOUNT = user_account("default")
"""Whose files and jobs the local operator's requests in setup mode are."""

_TOUCH_EVERY_S = 60.0
"""`last_used_at` is written at most this often per key, not on every request."""


@dataclass(frozen=True)
class Caller:
    """The authenticated side of a request."""

    account: str
    role: Role
    key_id: str | None = None
    """None: the local operator of setup mode."""

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    @property
    def owner_filter(self) -> str | None:
        """The owner a listing is limited to (None: everyone's, for operators)."""
        return None if self.is_operator else self.account

    def sees(self, owner: str) -> bool:
        return self.is_operator or owner == self.account


LOCAL_OPERATOR = Caller(account=LOCAL_ACCOUNT, role="operator")


def key_account(user: str) -> str:
    """`alice` or `user:alice` -> `user:alice` (checked)."""
    account = user if user.startswith("user:") else user_account(user)
    if user.startswith(("worker:", "pool:")):
        raise ConfigError(f"keys belong to people (user:NAME), not to {user!r:.60}")
    return check_account(account)


def key_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class AttemptThrottle:
    """Failed key attempts per client address: after `limit` of them within `window_s`, the
    address is refused until the oldest of them is `window_s` old. At most `max_addresses`
    are remembered (the least recently failing are forgotten first)."""

    def __init__(
        self,
        limit: int = 20,
        window_s: float = 60.0,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit, self.window_s, self._max, self._clock = limit, window_s, max_addresses, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, address: str) -> None:
        """Raise RateLimitedError while `address` is over its limit."""
        with self._lock:
            failures = self._recent(address)
            if failures is not None and len(failures) >= self.limit:
                wait = failures[0] + self.window_s - self._clock()
                raise RateLimitedError(
                    f"too many wrong API keys from {address}; try again in {wait:.0f} s",
                    retry_after_s=max(1.0, wait),
                )

    def failed(self, address: str) -> None:
        with self._lock:
            failures = self._recent(address)
            if failures is None:
                failures = self._failures[address] = deque()
                while len(self._failures) > self._max:
                    self._failures.popitem(last=False)
            failures.append(self._clock())
            self._failures.move_to_end(address)

    def _recent(self, address: str) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        while failures and failures[0] <= self._clock() - self.window_s:
            failures.popleft()
        return failures


class KeyService:
    def __init__(self, db: Database, throttle: AttemptThrottle | None = None) -> None:
        self._db = db
        self._has_keys = False  # once true, always true: setup mode never comes back
        self.throttle = throttle or AttemptThrottle()

    def create(self, user: str, role: str, name: str = "") -> tuple[ApiKey, str]:
        """A new key for `user`; returns its row and the secret, which is shown only now."""
        if role not in ROLES:
            raise ConfigError(
                f"role must be one of {', '.join(ROLES)}, got {role!r:.40}", param="role"
            )
        if role != "operator" and not self.has_keys():
            raise ConfigError(
                "role: the first key must be an operator's (--role operator): it ends setup "
                "mode, and only an operator can make the keys after it",
                param="role",
            )
        account = key_account(user)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=f"key-{secrets.token_hex(8)}",
            account=account,
            role=role,
            name=name[:100],
            hint=f"{secret[: len(KEY_PREFIX) + 4]}...{secret[-4:]}",
            sha256=key_digest(secret),
            created_at=time.time(),
        )
        with self._db.transaction() as session:
            session.add(key)
        self._has_keys = True
        logger.info("API key %s created for %s (%s)", key.id, account, role)
        return key, secret

    def has_keys(self) -> bool:
        """Whether any key was ever created (setup mode ends with the first one)."""
        if not self._has_keys:
            with self._db.transaction() as session:
                self._has_keys = session.scalars(select(ApiKey.id).limit(1)).first() is not None
        return self._has_keys

    def authenticate(self, secret: str, address: str = "") -> Caller:
        """The caller a key belongs to. An unknown or revoked key is UnauthenticatedError, or
        RateLimitedError once `address` has sent too many of them; a valid key always works."""
        now = time.time()
        with self._db.transaction() as session:
            key = session.scalars(select(ApiKey).where(ApiKey.sha256 == key_digest(secret))).first()
            if key is None or key.revoked_at is not None:
                self.throttle.check(address)
                self.throttle.failed(address)
                shown = secret[: len(KEY_PREFIX) + 4] + "***" if secret else "''"
                raise UnauthenticatedError(
                    f"incorrect API key provided: {shown:.40}; ask the swarm's operator for one "
                    "(`swarm keys create`)"
                    if key is None
                    else f"API key {key.hint} was revoked; ask the swarm's operator for a new one"
                )
            if key.last_used_at is None or now - key.last_used_at > _TOUCH_EVERY_S:
                key.last_used_at = now
            return Caller(account=key.account, role=key.role, key_id=key.id)  # type: ignore[arg-type]

    def list(self, owner: str | None) -> list[ApiKey]:
        """Keys, newest first: everyone's (`owner` None) or one account's."""
        query = select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
        if owner is not None:
            query = query.where(ApiKey.account == owner)
        with self._db.transaction() as session:
            return list(session.scalars(query))

    def revoke(self, key_id: str, caller: Caller) -> ApiKey:
        """Revoke a key (one's own, or any for operators); revoking twice is harmless."""
        with self._db.transaction() as session:
            key = session.get(ApiKey, key_id, with_for_update=True)
            if key is None or not caller.sees(key.account):
                raise NotFoundError(f"no API key {key_id!r:.60}")
            if key.revoked_at is None:
                key.revoked_at = time.time()
                logger.info("API key %s of %s revoked", key.id, key.account)
            return key
