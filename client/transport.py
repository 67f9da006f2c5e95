"""The client's link to its coordinators: sessions, deadlines, failover, retries with backoff.

Blob downloads and result uploads pass through token buckets, so the client keeps to the
volunteer's `--max-download-mbps` and `--max-upload-mbps`. Only `TransportError`
(UNAVAILABLE, DEADLINE_EXCEEDED) is retried, with exponential backoff and
full jitter so a restarted coordinator is not hit by every worker at once. A session the
coordinator no longer knows (UNAUTHENTICATED) triggers one re-registration.

`--coordinator` may name several coordinators that share one database (`A:50051,B:50051`).
The client talks to one at a time and moves to the next when a call to it fails with a
`TransportError`; it backs off only once every coordinator in the list has failed in a row.
Sessions, leases and blobs live in the shared database and blob store, so a task leased from
one coordinator is heartbeated and submitted to another without starting over.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from swarm.client.bandwidth import TokenBucket
from swarm.client.settings import parse_targets
from swarm.client.trust import CoordinatorTrust
from swarm.protocol import messages as m
from swarm.protocol.errors import OverloadedError, TransportError, UnauthenticatedError
from swarm.protocol.service import WorkerClient, open_channel

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Stopped(Exception):
    """The client is shutting down; abandon the call."""


def backoff_delays(base_s: float, cap_s: float, rng: random.Random) -> Iterator[float]:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt))."""
    attempt = 0
    while True:
        yield rng.uniform(0, min(cap_s, base_s * 2**attempt))
        attempt = min(attempt + 1, 30)


class Transport:
    def __init__(
        self,
        coordinators: str,
        register_request: Callable[[], m.RegisterWorkerRequest],
        *,
        stop: threading.Event,
        rpc_timeout_s: float = 15.0,
        max_backoff_s: float = 30.0,
        upload: TokenBucket | None = None,
        download: TokenBucket | None = None,
        on_unreachable: Callable[[str], None] | None = None,
        trust: CoordinatorTrust | None = None,
    ) -> None:
        """`coordinators`: `HOST:PORT`, or several separated by commas (tried in turn).
        `on_unreachable` hears, in words, each time the coordinators could not be reached.
        `trust` decides each coordinator's TLS credentials (None: plaintext)."""
        self._trust = trust
        self.targets = parse_targets(coordinators)
        self.target = self.targets[0]
        self.failovers = 0
        self._on_unreachable = on_unreachable or (lambda message: None)
        self._upload = upload or TokenBucket(0)
        self._download = download or TokenBucket(0)
        self._register_request = register_request
        self._stop = stop
        self._rpc_timeout_s = rpc_timeout_s
        self._max_backoff_s = max_backoff_s
        # One channel per coordinator, opened on first use and closed only by `close`: gRPC
        # aborts the process if a channel closes under a call in flight on another thread.
        self._channels: dict[str, tuple[Any, WorkerClient]] = {}
        self._retired: list[Any] = []
        self._target_lock = threading.Lock()
        self._rng = random.Random()
        self._session_lock = threading.Lock()
        self.registration: m.RegisterWorkerResponse | None = None
        self.bytes_down = 0
        self.bytes_up = 0

    @property
    def session(self) -> m.Session:
        if self.registration is None:
            self.register()
        assert self.registration is not None
        return self.registration.session

    def register(self) -> m.RegisterWorkerResponse:
        with self._session_lock:
            self.registration = self.retry(
                "RegisterWorker",
                lambda: self._rpc(
                    lambda client: client.register_worker(
                        self._register_request(), timeout_s=self._rpc_timeout_s
                    )
                ),
            )
            logger.info(
                "registered with %s as worker %s", self.target, self.registration.session.worker_id
            )
            return self.registration

    def _current(self) -> tuple[str, WorkerClient]:
        """The coordinator calls go to now, and a client for it."""
        with self._target_lock:
            target = self.target
            if target not in self._channels:
                credentials, options = (
                    self._trust.credentials(target) if self._trust is not None else (None, [])
                )
                channel = open_channel(
                    target,
                    paced=self._download.limited,
                    credentials=credentials,
                    options=options,
                )
                self._channels[target] = (channel, WorkerClient(channel))
            return target, self._channels[target][1]

    def _failed(self, target: str) -> None:
        """A call to `target` failed in transport: the next call goes to the next coordinator
        (unless another thread has moved on already)."""
        if len(self.targets) == 1:
            return
        with self._target_lock:
            if self.target != target:
                return
            self.target = self.targets[(self.targets.index(target) + 1) % len(self.targets)]
            self.failovers += 1
        logger.warning("coordinator %s unreachable; switching to %s", target, self.target)

    def _rpc(self, call: Callable[[WorkerClient], T]) -> T:
        """One call to the current coordinator; a transport failure moves on to the next."""
        target = self.target
        try:
            target, client = self._current()
            return call(client)
        except TransportError:
            self._failed(target)
            raise

    def _unreachable_message(self, delay: float) -> str:
        where = (
            f"the coordinator at {self.target}"
            if len(self.targets) == 1
            else f"any of the coordinators {', '.join(self.targets)}"
        )
        return (
            f"cannot reach {where}; retrying in {delay:.0f}s. Check that it is running, that "
            "this is its gRPC port (`swarm coordinator` prints it), and that no firewall is in "
            "the way"
        )

    def retry(self, what: str, call: Callable[[], T]) -> T:
        """Run `call`, retrying transport failures until it succeeds or the client stops; after
        a failure the next coordinator is tried at once, and once all have failed in a row the
        client backs off."""
        delays = backoff_delays(0.5, self._max_backoff_s, self._rng)
        failures = 0
        while True:
            if self._stop.is_set():
                raise Stopped(what)
            try:
                return call()
            except TransportError as exc:
                failures += 1
                if failures % len(self.targets):  # `_failed` moved on: try the next at once
                    continue
                if failures >= 3 and not isinstance(exc, OverloadedError):
                    self.recheck()
                delay = next(delays)
                logger.warning(
                    "%s: coordinator %s unreachable (%s); retrying in %.1fs",
                    what,
                    self.target,
                    exc,
                    delay,
                )
                self._on_unreachable(self._unreachable_message(delay))
                if self._stop.wait(delay):
                    raise Stopped(what) from None

    def recheck(self) -> None:
        """Calls to the current coordinator keep failing: if it now presents a certificate this
        client does not trust, stop (`CertificateMismatchError`) instead of retrying forever;
        if another trusted one (an announced rotation), build its channel afresh."""
        target = self.target
        if self._trust is None or not self._trust.recheck(target):
            return
        with self._target_lock:
            retired = self._channels.pop(target, None)
            if retired is not None:  # closed with the rest: a call may still be using it
                self._retired.append(retired[0])
        logger.info("coordinator %s has a new certificate this client trusts; reconnecting", target)

    def pause(self, attempt: int, *, stoppable: bool = True) -> None:
        """Sleep a jittered backoff for the `attempt`-th consecutive failure (from 0); raise
        `Stopped` if the client stops meanwhile, unless not `stoppable` (finishing a
        submission). With several coordinators, there is no pause until each has failed once."""
        rounds, tried = divmod(attempt + 1, len(self.targets))
        if tried:
            return
        delay = self._rng.uniform(0, min(self._max_backoff_s, 0.5 * 2 ** min(rounds - 1, 30)))
        if not stoppable:
            time.sleep(delay)
        elif self._stop.wait(delay):
            raise Stopped("backoff")

    def call(self, what: str, make_call: Callable[[m.Session], T]) -> T:
        """Run an authenticated call with retries, re-registering once if the session is gone."""
        try:
            return self.retry(what, lambda: make_call(self.session))
        except UnauthenticatedError:
            logger.warning(
                "%s: the coordinator no longer knows this session; registering again", what
            )
            self.register()
            return self.retry(what, lambda: make_call(self.session))

    def heartbeat(self, task_ids: list[str]) -> m.HeartbeatResponse:
        request = m.HeartbeatRequest(session=self.session, task_ids=task_ids)
        return self._rpc(lambda client: client.heartbeat(request, timeout_s=self._rpc_timeout_s))

    def lease_task(self, cached_sha256s: list[str] | None = None) -> m.LeaseTaskResponse:
        return self.call(
            "LeaseTask",
            lambda s: self._rpc(
                lambda client: client.lease_task(
                    m.LeaseTaskRequest(session=s, cached_sha256s=list(cached_sha256s or [])),
                    timeout_s=self._rpc_timeout_s,
                )
            ),
        )

    def report_failure(self, task_id: str, kind: m.FailureKind, message: str) -> None:
        request = m.ReportFailureRequest(
            session=self.session, task_id=task_id, kind=kind, message=message[:500]
        )
        self._rpc(lambda client: client.report_failure(request, timeout_s=self._rpc_timeout_s))

    def find_peers(self, task_id: str, addrs: list[str]) -> list[str]:
        request = m.FindPeersRequest(session=self.session, task_id=task_id, addrs=addrs)
        reply = self._rpc(lambda client: client.find_peers(request, timeout_s=self._rpc_timeout_s))
        return reply.addrs

    def fetch_blob(self, sha256: str, offset: int, timeout_s: float) -> Iterator[m.BlobChunk]:
        target = self.target
        request = m.FetchBlobRequest(session=self.session, sha256=sha256, offset=offset)
        try:
            target, client = self._current()
            for chunk in client.fetch_blob(request, timeout_s=timeout_s):
                self.bytes_down += len(chunk.data)
                # Pausing the reader lets gRPC's flow control hold the sender back to the rate.
                self._download.take(len(chunk.data))
                yield chunk
        except TransportError:
            self._failed(target)
            raise

    def submit_result(
        self, header: m.ResultHeader, payload: bytes | Path, chunk_bytes: int, timeout_s: float
    ) -> m.SubmitResultResponse:
        """Stream a result; `payload` is the bytes or a file holding them (read chunk by chunk)."""

        # Smaller pieces when capped, so the pacing is smooth rather than a megabyte at a time.
        if self._upload.limited:
            chunk_bytes = max(16_384, min(chunk_bytes, int(self._upload.rate_bytes_s / 20)))

        def chunks() -> Iterator[bytes]:
            if isinstance(payload, Path):
                with payload.open("rb") as source:
                    while data := source.read(chunk_bytes):
                        self._upload.take(len(data))
                        yield data
            else:
                for start in range(0, len(payload), chunk_bytes):
                    self._upload.take(min(chunk_bytes, len(payload) - start))
                    yield payload[start : start + chunk_bytes]

        response = self._rpc(
            lambda client: client.submit_result(header, chunks(), timeout_s=timeout_s)
        )
        self.bytes_up += header.payload_size
        return response

    def close(self) -> None:
        with self._target_lock:
            channels = [channel for channel, _ in self._channels.values()] + self._retired
            self._channels, self._retired = {}, []
        for channel in channels:
            channel.close()
