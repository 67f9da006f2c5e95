"""The coordinator's side of `swarm.v1.WorkerService`: authenticate, validate, delegate."""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from swarm.compression import CompressionPolicy, iter_payload
from swarm.coordinator.blobs import BlobStore, check_sha256
from swarm.coordinator.control import SwarmControl
from swarm.coordinator.storage import Worker
from swarm.coordinator.tasks import NO_TASKS, TaskService
from swarm.coordinator.throttle import CallThrottle
from swarm.coordinator.workers import WorkerRegistry, verify_signature
from swarm.protocol import messages as m
from swarm.protocol.errors import PermissionDeniedError, SwarmError
from swarm.protocol.limits import CHUNK_BYTES

logger = logging.getLogger(__name__)

COORDINATOR_VERSION = "0.1.0"
BANNED_RETRY_S = 60.0
"""How long a banned worker waits before asking again (an unban takes effect then)."""
DRAINING_RETRY_S = 15.0
MAX_REJECTIONS = 100
"""Rejected results remembered for the dashboard."""

LONG_POLL_S = 5.0
"""How long a LeaseTask with nothing to hand out is held open for new work (clients' RPC
deadline is 15 s by default)."""

RPC_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds of the RPC latency buckets, from a heartbeat's milliseconds to a large upload."""


@dataclass
class RpcStats:
    """The calls of one RPC method since the process started.

    Attributes:
        codes: calls by the gRPC status code they ended with (`OK`, `UNAUTHENTICATED`, ...).
        bucket_counts: calls whose duration fell in each bucket (not cumulative): the i-th
            counts durations up to `RPC_BUCKETS_S[i]` above the previous bound; the last, longer.
        sum_s: the calls' total duration.
    """

    codes: Counter[str] = field(default_factory=Counter)
    bucket_counts: list[int] = field(default_factory=lambda: [0] * (len(RPC_BUCKETS_S) + 1))
    sum_s: float = 0.0


def status_code(exc: BaseException) -> str:
    """The gRPC status code an RPC ends with when its handler raises `exc`."""
    if isinstance(exc, SwarmError):
        return exc.grpc_code
    if isinstance(exc, GeneratorExit):  # gRPC closed a stream the client stopped reading
        return "CANCELLED"
    return "INTERNAL"


class WorkSignal:
    """Wakes leases held open (long polls) when new work may be there: a round closed and the
    next opened, a job started, leases expired. Each `pulse` starts a new generation; a waiter
    remembers the generation it last leased in and returns once a newer one begins.

    At most `max_waiters` calls wait at once (each holds one of the gRPC server's threads); the
    others are answered at once, as without long polling."""

    def __init__(self, max_waiters: int) -> None:
        self._condition = threading.Condition()
        self._generation = 0
        self._slots = threading.BoundedSemaphore(max(1, max_waiters))

    @property
    def generation(self) -> int:
        return self._generation

    def pulse(self) -> None:
        with self._condition:
            self._generation += 1
            self._condition.notify_all()

    def wait(self, since: int, timeout_s: float) -> bool | None:
        """True once a generation after `since` began, False at the timeout; None (at once) if
        too many calls wait already."""
        if not self._slots.acquire(blocking=False):
            return None
        try:
            with self._condition:
                return self._condition.wait_for(lambda: self._generation > since, timeout_s)
        finally:
            self._slots.release()


class WorkerServicer:
    """Implements `swarm.protocol.service.WorkerHandler` for one coordinator process."""

    def __init__(
        self,
        workers: WorkerRegistry,
        tasks: TaskService,
        blobs: BlobStore,
        *,
        heartbeat_interval_s: float,
        control: SwarmControl | None = None,
        probe_sha256: str = "",
        work: WorkSignal | None = None,
        long_poll_s: float = LONG_POLL_S,
        throttle: CallThrottle | None = None,
    ) -> None:
        """`probe_sha256`: the blob new workers download to measure their link. With `work`,
        a lease that finds nothing waits up to `long_poll_s` for it to pulse and tries again,
        so a worker hears of the next round as it opens instead of at its next poll. `throttle`
        refuses a worker's calls beyond its rate (see `swarm.coordinator.throttle`)."""
        self._workers = workers
        self._throttle = throttle if throttle is not None else CallThrottle(0, 1)
        self._work = work
        self._long_poll_s = long_poll_s
        self._probe_sha256 = probe_sha256
        self._tasks = tasks
        self._blobs = blobs
        self._control = control
        self._heartbeat_interval_s = heartbeat_interval_s
        self._counters: Counter[str] = Counter()
        self._rejections: deque[dict[str, Any]] = deque(maxlen=MAX_REJECTIONS)
        self._counters_lock = threading.Lock()
        self._rpcs: dict[str, RpcStats] = {}

    def count(self, name: str, amount: int = 1) -> None:
        with self._counters_lock:
            self._counters[name] += amount

    def counters(self) -> dict[str, int]:
        with self._counters_lock:
            return dict(self._counters)

    def rpc_stats(self) -> dict[str, RpcStats]:
        """A copy of every RPC method's calls so far, by method name (`LeaseTask`, ...)."""
        with self._counters_lock:
            return {
                rpc: RpcStats(
                    codes=Counter(stats.codes),
                    bucket_counts=list(stats.bucket_counts),
                    sum_s=stats.sum_s,
                )
                for rpc, stats in self._rpcs.items()
            }

    def _observe(self, rpc: str, code: str, duration_s: float) -> None:
        with self._counters_lock:
            stats = self._rpcs.setdefault(rpc, RpcStats())
            stats.codes[code] += 1
            stats.bucket_counts[bisect.bisect_left(RPC_BUCKETS_S, duration_s)] += 1
            stats.sum_s += duration_s

    @contextmanager
    def _timed(self, rpc: str) -> Iterator[None]:
        """Record one call of `rpc`: how long the block took and the status it ends with."""
        began = time.perf_counter()
        code = "OK"
        try:
            yield
        except BaseException as exc:
            code = status_code(exc)
            raise
        finally:
            self._observe(rpc, code, time.perf_counter() - began)

    def _authenticated(self, session: m.Session, *, touch: bool = False) -> Worker:
        """The session's worker, once it is known and within its call rate."""
        worker = self._workers.authenticate(session, touch=touch)
        self._throttle.take(worker.id, f"worker {worker.id}")
        return worker

    def register_worker(
        self, request: m.RegisterWorkerRequest, peer: str
    ) -> m.RegisterWorkerResponse:
        with self._timed("RegisterWorker"):
            worker, token = self._workers.register(request, peer)
            self.count("workers_registered")
            return m.RegisterWorkerResponse(
                session=m.Session(worker_id=worker.id, token=token),
                heartbeat_interval_s=self._heartbeat_interval_s,
                max_chunk_bytes=CHUNK_BYTES,
                coordinator_version=COORDINATOR_VERSION,
                probe_sha256=self._probe_sha256,
            )

    def heartbeat(self, request: m.HeartbeatRequest) -> m.HeartbeatResponse:
        with self._timed("Heartbeat"):
            worker = self._authenticated(request.session, touch=True)
            extended, revoked = self._tasks.heartbeat(worker.id, list(request.task_ids))
            granted, pending = self._workers.credits(worker)
            return m.HeartbeatResponse(
                extended_task_ids=extended,
                revoked_task_ids=revoked,
                heartbeat_interval_s=self._heartbeat_interval_s,
                credits_granted_micro=granted,
                credits_pending_micro=pending,
            )

    def lease_task(self, request: m.LeaseTaskRequest) -> m.LeaseTaskResponse:
        with self._timed("LeaseTask"):
            worker = self._authenticated(request.session, touch=True)
            idle = self._no_work_for(worker)
            if idle is not None:
                self.count("lease_empty")
                return idle
            generation = self._work.generation if self._work is not None else 0
            response = self._tasks.lease(worker.id, request.cached_sha256s)
            if response.reason == NO_TASKS and self._work is not None:
                woken = self._work.wait(generation, self._long_poll_s)
                if woken:
                    response = self._tasks.lease(worker.id, request.cached_sha256s)
                elif woken is False:  # waited the whole poll: no need to wait long again
                    response = replace(response, retry_after_s=min(response.retry_after_s, 0.5))
            self.count("tasks_leased" if response.task else "lease_empty")
            return response

    def _no_work_for(self, worker: Worker) -> m.LeaseTaskResponse | None:
        """The answer for a banned worker or a draining swarm (None: lease as usual)."""
        if worker.banned_at is not None:
            return m.LeaseTaskResponse(
                retry_after_s=BANNED_RETRY_S,
                reason=f"this worker is banned by the operator: {worker.ban_reason}",
            )
        draining = self._control.draining() if self._control is not None else None
        if draining is not None:
            why = f": {draining['reason']}" if draining.get("reason") else ""
            return m.LeaseTaskResponse(
                retry_after_s=DRAINING_RETRY_S, reason=f"the swarm is draining{why}"
            )
        return None

    def fetch_blob(self, request: m.FetchBlobRequest) -> Iterator[m.BlobChunk]:
        # Timed from this call until the stream ends, which `_stream_blob` records.
        began = time.perf_counter()
        try:
            worker = self._authenticated(request.session)
            check_sha256(request.sha256)
            chunks = self._blobs.iter_chunks(request.sha256, request.offset)
        except BaseException as exc:
            self._observe("FetchBlob", status_code(exc), time.perf_counter() - began)
            raise
        return self._stream_blob(worker.id, chunks, began)

    def _stream_blob(
        self, worker_id: str, chunks: Iterator[tuple[int, bytes, int]], called_at: float
    ) -> Iterator[m.BlobChunk]:
        sent = 0
        code = "OK"
        began = time.perf_counter()
        try:
            for offset, data, total in chunks:
                sent += len(data)
                yield m.BlobChunk(offset=offset, data=data, total_size=total)
        except BaseException as exc:
            code = status_code(exc)
            raise
        finally:
            self.count("blob_bytes_sent", sent)
            self._observe("FetchBlob", code, time.perf_counter() - called_at)
            if sent:
                self._tasks.record_download(worker_id, sent, time.perf_counter() - began)

    def submit_result(
        self, header: m.ResultHeader, chunks: Iterator[bytes]
    ) -> m.SubmitResultResponse:
        with self._timed("SubmitResult"):
            return self._submit_result(header, chunks)

    def _submit_result(
        self, header: m.ResultHeader, chunks: Iterator[bytes]
    ) -> m.SubmitResultResponse:
        worker = self._authenticated(header.session, touch=True)
        if worker.banned_at is not None:
            error = PermissionDeniedError(
                f"this worker is banned ({worker.ban_reason}); its results are not accepted"
            )
            self._rejected(worker, header, error)
            raise error
        check_sha256(header.payload_sha256)
        submission = self._tasks.check_submission(worker.id, header)
        if submission.decided is not None:  # nothing to store: say so before reading the bytes
            self.count("results_ignored")
            return m.SubmitResultResponse(accepted=False, message=submission.decided)
        try:
            # The signature covers the announced digest, which streaming checks byte by byte;
            # the payload is decoded before it enters the store, so a rejected one leaves nothing.
            verify_signature(
                worker.public_key,
                header.signature,
                m.result_signing_bytes(
                    header.task_id,
                    header.payload_sha256,
                    header.metrics,
                    header.group_task_ids,
                    header.group_payload_task_id,
                ),
            )
            result_sha = self._blobs.put_stream(
                chunks,
                max_bytes=submission.max_bytes,
                expected_sha256=header.payload_sha256,
                expected_size=header.payload_size,
                check=None  # metrics only (its size limit is zero): no payload to decode
                if submission.max_bytes == 0
                else lambda path: _check_payload(path, submission.param_shapes, submission.policy),
            )
        except SwarmError as exc:
            self._rejected(worker, header, exc)
            raise
        self.count("result_bytes_received", header.payload_size)
        response = self._tasks.accept_result(worker.id, header, result_sha)
        self.count("results_accepted" if response.accepted else "results_ignored")
        return response

    def _rejected(self, worker: Worker, header: m.ResultHeader, error: SwarmError) -> None:
        self.count("results_rejected")
        self._workers.reset_streak(worker.id)
        with self._counters_lock:
            self._rejections.appendleft(
                {
                    "at": time.time(),
                    "worker_id": worker.id,
                    "worker_name": worker.name,
                    "task_id": header.task_id[:64],
                    "reason": str(error)[:300],
                }
            )
        logger.warning("result for %s from %s rejected: %s", header.task_id, worker.id, error)

    def rejections(self) -> list[dict[str, Any]]:
        """The latest rejected results, newest first (since this process started)."""
        with self._counters_lock:
            return list(self._rejections)

    def report_failure(self, request: m.ReportFailureRequest) -> m.ReportFailureResponse:
        with self._timed("ReportFailure"):
            worker = self._authenticated(request.session, touch=True)
            self._tasks.hand_back(worker.id, request)
            self.count("tasks_handed_back")
            return m.ReportFailureResponse()

    def find_peers(self, request: m.FindPeersRequest) -> m.FindPeersResponse:
        with self._timed("FindPeers"):
            worker = self._authenticated(request.session, touch=True)
            addrs = self._tasks.find_peers(worker.id, request.task_id, request.addrs)
            return m.FindPeersResponse(addrs=addrs)


def _check_payload(
    path: Path, shapes: dict[str, tuple[int, ...]], policy: CompressionPolicy
) -> None:
    """Decode the whole payload once, one tensor at a time, so nothing bad is ever stored."""
    with path.open("rb") as source:
        for _ in iter_payload(source, shapes, policy):
            pass
