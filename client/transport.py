"""The client's link to its coordinator: sessions, deadlines, retries with jittered backoff.

Blob downloads and result uploads pass through token buckets, so the client keeps to the
volunteer's `--max-download-mbps` and `--max-upload-mbps`. Only `TransportError`
(UNAVAILABLE, DEADLINE_EXCEEDED) is retried, with exponential backoff and
full jitter so a restarted coordinator is not hit by every worker at once. A session the
coordinator no longer knows (UNAUTHENTICATED) triggers one re-registration.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from swarm.client.bandwidth import TokenBucket
from swarm.protocol import messages as m
from swarm.protocol.errors import TransportError, UnauthenticatedError
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
        target: str,
        register_request: Callable[[], m.RegisterWorkerRequest],
        *,
        stop: threading.Event,
        rpc_timeout_s: float = 15.0,
        max_backoff_s: float = 30.0,
        upload: TokenBucket | None = None,
        download: TokenBucket | None = None,
        on_unreachable: Callable[[str], None] | None = None,
    ) -> None:
        """`on_unreachable` hears, in words, each time the coordinator could not be reached."""
        self.target = target
        self._on_unreachable = on_unreachable or (lambda message: None)
        self._upload = upload or TokenBucket(0)
        self._download = download or TokenBucket(0)
        self._register_request = register_request
        self._stop = stop
        self._rpc_timeout_s = rpc_timeout_s
        self._max_backoff_s = max_backoff_s
        self._channel = open_channel(target)
        self._client = WorkerClient(self._channel)
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
                lambda: self._client.register_worker(
                    self._register_request(), timeout_s=self._rpc_timeout_s
                ),
            )
            logger.info(
                "registered with %s as worker %s", self.target, self.registration.session.worker_id
            )
            return self.registration

    def retry(self, what: str, call: Callable[[], T]) -> T:
        """Run `call`, retrying transport failures until it succeeds or the client stops."""
        delays = backoff_delays(0.5, self._max_backoff_s, self._rng)
        while True:
            if self._stop.is_set():
                raise Stopped(what)
            try:
                return call()
            except TransportError as exc:
                delay = next(delays)
                logger.warning(
                    "%s: coordinator %s unreachable (%s); retrying in %.1fs",
                    what,
                    self.target,
                    exc,
                    delay,
                )
                self._on_unreachable(
                    f"cannot reach the coordinator at {self.target}; retrying in {delay:.0f}s. "
                    "Check that it is running, that this is its gRPC port (`swarm coordinator` "
                    "prints it), and that no firewall is in the way"
                )
                if self._stop.wait(delay):
                    raise Stopped(what) from None

    def pause(self, attempt: int, *, stoppable: bool = True) -> None:
        """Sleep a jittered backoff for the `attempt`-th consecutive failure; raise `Stopped`
        if the client stops meanwhile, unless not `stoppable` (finishing a submission)."""
        delay = self._rng.uniform(0, min(self._max_backoff_s, 0.5 * 2 ** min(attempt, 30)))
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
        return self._client.heartbeat(
            m.HeartbeatRequest(session=self.session, task_ids=task_ids),
            timeout_s=self._rpc_timeout_s,
        )

    def lease_task(self, cached_sha256s: list[str] | None = None) -> m.LeaseTaskResponse:
        return self.call(
            "LeaseTask",
            lambda s: self._client.lease_task(
                m.LeaseTaskRequest(session=s, cached_sha256s=list(cached_sha256s or [])),
                timeout_s=self._rpc_timeout_s,
            ),
        )

    def report_failure(self, task_id: str, kind: m.FailureKind, message: str) -> None:
        self._client.report_failure(
            m.ReportFailureRequest(
                session=self.session, task_id=task_id, kind=kind, message=message[:500]
            ),
            timeout_s=self._rpc_timeout_s,
        )

    def fetch_blob(self, sha256: str, offset: int, timeout_s: float) -> Iterator[m.BlobChunk]:
        for chunk in self._client.fetch_blob(
            m.FetchBlobRequest(session=self.session, sha256=sha256, offset=offset),
            timeout_s=timeout_s,
        ):
            self.bytes_down += len(chunk.data)
            # Pausing the reader lets gRPC's flow control hold the sender back to the rate.
            self._download.take(len(chunk.data))
            yield chunk

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

        response = self._client.submit_result(header, chunks(), timeout_s=timeout_s)
        self.bytes_up += header.payload_size
        return response

    def close(self) -> None:
        self._channel.close()
