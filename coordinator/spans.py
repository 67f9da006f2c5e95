"""Cutting, consuming and returning the data spans of train tasks (see `swarm.scheduler.data`),
and revoking a task, which returns them.

Every function runs inside the caller's transaction. Cutting spans reads and advances the job's
cursor, so the caller holds the job's row lock (on PostgreSQL) for that transaction: two
coordinators never cut the same positions.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.storage import DataSpan, Job, Lease, Task
from swarm.models import config_from_bytes, decode_examples, decode_shard
from swarm.scheduler import JobSpec, LeaseOutcome, Span, TaskStatus, span_indices
from swarm.scheduler.data import cut_from_cursor, pick_free, split_span

FREE, ASSIGNED, CONSUMED = "free", "assigned", "consumed"


def count_samples(spec: JobSpec, shard: bytes, vocab_size: int) -> int:
    """How many samples an encoded training shard holds."""
    if spec.method == "lm":
        return len(decode_shard(shard, vocab_size)) // spec.seq_len
    sets = decode_examples(shard, spec.method, vocab_size)
    return len(next(iter(sets.values())))


def shard_samples(job: Job, blobs: BlobStore) -> list[int]:
    """Samples per shard; counted from the shards for jobs created before spans existed."""
    if job.shard_samples is None:
        spec = JobSpec(**job.spec)
        vocab = int(config_from_bytes(blobs.read(job.model_config_sha256))["vocab_size"])
        job.shard_samples = [count_samples(spec, blobs.read(s), vocab) for s in job.shard_sha256s]
    return list(job.shard_samples)


def as_span(row: DataSpan) -> Span:
    return Span(epoch=row.epoch, shard=row.shard, start=row.start, stop=row.stop)


def cut(
    session: Session,
    job: Job,
    blobs: BlobStore,
    task_id: str,
    want: int,
    prefer: frozenset[int] = frozenset(),
) -> list[DataSpan]:
    """Assign up to `want` samples of one shard to a task: a returned span if there is one,
    else fresh positions. `job` must be locked for this transaction. Empty when no data is
    free right now."""
    free_rows = list(
        session.scalars(
            select(DataSpan)
            .where(DataSpan.job_id == job.id, DataSpan.state == FREE)
            .order_by(DataSpan.id)
        )
    )
    chosen = pick_free([as_span(r) for r in free_rows], prefer)
    if chosen is not None:
        row = free_rows[chosen]
        taken, rest = split_span(as_span(row), want)
        row.stop, row.state, row.task_id = taken.stop, ASSIGNED, task_id
        if rest is not None:
            session.add(_row(job.id, rest, FREE))
        return [row]
    sizes = shard_samples(job, blobs)
    cursor = list(job.data_cursor or [0] * len(sizes))
    spec = JobSpec(**job.spec)
    shard, spans = cut_from_cursor(cursor, sizes, want, max_epochs=spec.num_epochs, prefer=prefer)
    if not spans:
        return []
    cursor[shard] += sum(len(s) for s in spans)
    job.data_cursor = cursor
    job.data_epoch = min(c // n for c, n in zip(cursor, sizes, strict=True) if n)
    rows = [_row(job.id, span, ASSIGNED, task_id) for span in spans]
    session.add_all(rows)
    session.flush()
    return rows


def of_task(session: Session, task_id: str) -> list[DataSpan]:
    """A task's spans in training order."""
    return list(
        session.scalars(select(DataSpan).where(DataSpan.task_id == task_id).order_by(DataSpan.id))
    )


def indices(job: Job, blobs: BlobStore, rows: Sequence[DataSpan]) -> list[int]:
    """The shard sample indices a task's spans cover, in training order."""
    spec = JobSpec(**job.spec)
    sizes = shard_samples(job, blobs)
    return [i for row in rows for i in span_indices(spec.seed, as_span(row), sizes[row.shard])]


def consume(session: Session, task_id: str) -> None:
    """The task's result was accepted: its samples are consumed."""
    session.execute(
        update(DataSpan)
        .where(DataSpan.task_id == task_id, DataSpan.state == ASSIGNED)
        .values(state=CONSUMED)
    )


def revoke(session: Session, task: Task, now: float, *, requeue: bool) -> None:
    """End the task's active lease (its worker's next heartbeat is told to stop). With
    `requeue` the task waits to be leased again with its spans (a paused job); without, it is
    cancelled and its spans are free for other tasks."""
    for lease in session.scalars(
        select(Lease).where(Lease.task_id == task.id, Lease.outcome == LeaseOutcome.ACTIVE.value)
    ):
        lease.outcome = LeaseOutcome.CANCELLED.value
        lease.ended_at = now
    task.worker_id = None
    task.lease_deadline = None
    if requeue:
        task.status = TaskStatus.PENDING.value
        task.available_since = now
    else:
        task.status = TaskStatus.CANCELLED.value
        release(session, task.id)


def release(session: Session, task_id: str) -> None:
    """The task will never finish: its spans are free to be given to another task."""
    session.execute(
        update(DataSpan)
        .where(DataSpan.task_id == task_id, DataSpan.state == ASSIGNED)
        .values(state=FREE, task_id=None)
    )


def data_left(session: Session, job: Job, blobs: BlobStore) -> bool:
    """Whether any sample of the job's epochs is still to be handed out (fresh or returned)."""
    spec = JobSpec(**job.spec)
    if not spec.finishes_by_epochs():
        return True
    sizes = shard_samples(job, blobs)
    cursor = job.data_cursor or [0] * len(sizes)
    if any(c < spec.num_epochs * n for c, n in zip(cursor, sizes, strict=True)):
        return True
    return _count(session, job.id, FREE) > 0


def data_done(session: Session, job: Job, blobs: BlobStore) -> bool:
    """Whether an epochs-bound job has handed out all its data and none of it is still out."""
    return not data_left(session, job, blobs) and _count(session, job.id, ASSIGNED) == 0


def consumed_spans(session: Session, job_id: str) -> list[Span]:
    return [
        as_span(r)
        for r in session.scalars(
            select(DataSpan).where(DataSpan.job_id == job_id, DataSpan.state == CONSUMED)
        )
    ]


def _count(session: Session, job_id: str, state: str) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(DataSpan)
            .where(DataSpan.job_id == job_id, DataSpan.state == state)
        )
        or 0
    )


def _row(job_id: str, span: Span, state: str, task_id: str | None = None) -> DataSpan:
    return DataSpan(
        job_id=job_id,
        epoch=span.epoch,
        shard=span.shard,
        start=span.start,
        stop=span.stop,
        state=state,
        task_id=task_id,
    )
