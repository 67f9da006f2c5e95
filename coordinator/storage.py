"""The coordinator's durable state: SQLAlchemy 2 models and the database handle.

SQLite (one file in the data directory) by default, PostgreSQL by URL. Every state change
happens inside `Database.transaction()`. On SQLite each transaction starts with
`BEGIN IMMEDIATE`, so writers queue instead of failing mid-way; on PostgreSQL, task leasing
locks rows with `FOR UPDATE SKIP LOCKED` so several coordinators can share one database.
Times are Unix seconds (floats), the same on both engines.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import (
    DeclarativeBase,
    InstrumentedAttribute,
    Mapped,
    Session,
    mapped_column,
    sessionmaker,
)
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import ColumnElement, Select

from swarm.protocol.errors import ConfigError, NotFoundError


class Base(DeclarativeBase):
    pass


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), index=True)
    hardware: Mapped[dict[str, Any]] = mapped_column(JSON)
    protocol_version: Mapped[int] = mapped_column(Integer)
    client_version: Mapped[str] = mapped_column(String(64))
    peer: Mapped[str] = mapped_column(String(128))
    registered_at: Mapped[float] = mapped_column(Float)
    last_seen_at: Mapped[float] = mapped_column(Float, index=True)
    tasks_accepted: Mapped[int] = mapped_column(Integer, default=0)
    tasks_failed: Mapped[int] = mapped_column(Integer, default=0)
    account_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    """The ledger account its credits go to (`worker:<id>` unless linked to an owner)."""
    flops_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Training throughput measured on its accepted tasks (a moving average), FLOP/s."""
    download_bytes_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Blob download rate measured by the coordinator (a moving average)."""
    assigned_job_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    """The job placement gives this worker's train tasks to (None: any)."""
    cached_sha256s: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    """Blobs the worker said it holds at its latest lease request."""
    banned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    """When an operator banned it: it gets no tasks, its results are refused."""
    ban_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    valid_streak: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Results accepted in a row since its last rejected one: the trust the dashboard shows."""


def count_by(session: Session, column: InstrumentedAttribute[str]) -> dict[str, int]:
    """Rows of `column`'s table by each value of `column` (jobs by status, ...)."""
    return dict(session.execute(select(column, func.count()).group_by(column)).tuples().all())


def online(now: float, window_s: float) -> ColumnElement[bool]:
    """Workers that count as online: seen within `window_s`, and not banned. Every count of
    online workers (round sizes, placement, speeds, the dashboard) uses this one rule."""
    return (Worker.last_seen_at >= now - window_s) & Worker.banned_at.is_(None)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(24), index=True)
    model: Mapped[str] = mapped_column(String(128))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    model_config_sha256: Mapped[str] = mapped_column(String(64))
    heldout_sha256: Mapped[str] = mapped_column(String(64))
    shard_sha256s: Mapped[list[str]] = mapped_column(JSON)
    param_shapes: Mapped[dict[str, list[int]]] = mapped_column(JSON)
    num_trainable_params: Mapped[int] = mapped_column(BigInteger)
    tasks_created: Mapped[int] = mapped_column(BigInteger, default=0)
    rounds_completed: Mapped[int] = mapped_column(Integer, default=0)
    trained_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    initial_eval_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    result_params_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    base_sha256s: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    """Frozen base weights workers load before the trainable parameters (LoRA, DPO)."""
    initial_eval_metrics: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    eval_metrics: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    artifacts: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """kind (`adapter`, `merged`) -> {"files": {relative path: sha256}}."""
    owner: Mapped[str] = mapped_column(String(80), index=True, default="user:default")
    """The ledger account that pays for the job's work."""
    num_model_params: Mapped[int] = mapped_column(BigInteger, default=0)
    """Every parameter of the model, frozen or not: what each token's compute scales with."""
    memory_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    """Estimated memory a worker needs for one of its train tasks."""
    shard_samples: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    """Samples (windows, conversations or pairs) in each training shard."""
    tokens_per_sample: Mapped[float] = mapped_column(Float, default=0.0)
    data_epoch: Mapped[int] = mapped_column(Integer, default=0)
    """The epoch new data spans are cut from."""
    data_cursor: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    """Per shard: how far into this epoch's sample order spans have been cut."""
    estimated_credits: Mapped[int] = mapped_column(BigInteger, default=0)
    """Micro-credits the whole job is expected to cost, estimated when it is queued."""
    queued_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    initial_params_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The trainable parameters round 0 starts from."""
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """Part of the fine-tuned model's name (OpenAI's `suffix`)."""


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_rounds_job_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    params_sha256: Mapped[str] = mapped_column(String(64))
    """The coordinator's parameters of this version (what the outer step updates)."""
    momentum_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    worker_params_sha256: Mapped[str] = mapped_column(String(64))
    """What workers train from: the previous version's plus the decoded broadcast delta. It
    differs from `params_sha256` by the coordinator's broadcast residual."""
    delta_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    delta_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    num_tasks: Mapped[int] = mapped_column(Integer)
    opened_at: Mapped[float] = mapped_column(Float)
    closed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_metrics: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    """Held-out metrics of this round's starting version, measured by an evaluate task."""
    num_train_tasks: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_up: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_down: Mapped[int] = mapped_column(BigInteger, default=0)
    num_clients: Mapped[int] = mapped_column(Integer, default=0)
    deadline_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    """After this the round closes as soon as a quorum of its train tasks is accepted."""
    num_late: Mapped[int] = mapped_column(Integer, default=0)
    """Results of earlier rounds that arrived late and were applied in this round's step."""
    aggregator: Mapped[str | None] = mapped_column(String(40), nullable=True)
    """The coordinator process aggregating the round (status `aggregating`): only it may
    commit the round, and another takes it over if that one stops being seen."""


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_status_job", "status", "job_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    round_index: Mapped[int] = mapped_column(Integer)
    index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    shard_index: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    available_since: Mapped[float] = mapped_column(Float)
    worker_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    lease_deadline: Mapped[float | None] = mapped_column(Float, nullable=True)
    result_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    accepted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    inner_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """A train task's inner steps, sized at its first lease for the worker that took it, when
    its data spans are cut (None until then)."""
    applied_round: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """The round whose outer step used this result (a late result: a later one)."""
    credits: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Micro-credits the accepted work earns."""
    peer_addrs: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    """Where the worker holding this task listens for peer averaging (hivemind multiaddrs)."""


class DataSpan(Base):
    """A run of consecutive positions in one shard's sample order for one epoch.

    `free` spans wait to be leased (returned by tasks that will never finish), `assigned` ones
    belong to one live task, `consumed` ones to one accepted task. Within an epoch the consumed
    spans of a shard tile its sample order, so each sample is trained on exactly once.
    """

    __tablename__ = "data_spans"
    __table_args__ = (Index("ix_data_spans_job_state", "job_id", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    epoch: Mapped[int] = mapped_column(Integer)
    shard: Mapped[int] = mapped_column(Integer)
    start: Mapped[int] = mapped_column(Integer)
    stop: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(12))
    task_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)


class Checkpoint(Base):
    """A published version kept as a named checkpoint (OpenAI `fine_tuning.job.checkpoint`)."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "version", name="uq_checkpoints_job_version"),)

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    step_number: Mapped[int] = mapped_column(BigInteger)
    """Inner steps the job had trained when this version was published."""
    params_sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class File(Base):
    """An uploaded dataset (OpenAI `file`): its bytes live in the blob store under `sha256`.

    Deleting a file hides it from the API; jobs created from it keep reading its blob.
    """

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_owner_created", "owner", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(96))
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    """What the lines hold: "chat" (supervised fine-tuning) or "preference" (DPO)."""
    num_examples: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    deleted_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class SwarmFlag(Base):
    """A swarm-wide switch an operator sets (`draining`), kept across restarts."""

    __tablename__ = "swarm_flags"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[float] = mapped_column(Float)


class Coordinator(Base):
    """A coordinator process serving this database: several may share one (PostgreSQL)."""

    __tablename__ = "coordinators"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    grpc_port: Mapped[int] = mapped_column(Integer)
    http_port: Mapped[int] = mapped_column(Integer)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    last_seen_at: Mapped[float] = mapped_column(Float)


class ApiKey(Base):
    """An HTTP API key: only its SHA-256 is kept, with a hint (its first and last characters)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account: Mapped[str] = mapped_column(String(96), index=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100), default="")
    hint: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Account(Base):
    """A ledger account: `mint` and `consumed` (system), `pool:research`, `worker:<id>`,
    `user:<name>`, and `pending:<account>` for credit earned but not yet granted."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(96), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    """Micro-credits: the sum of this account's entries."""
    created_at: Mapped[float] = mapped_column(Float)


class LedgerTransaction(Base):
    """One balanced movement of credits; (kind, task_id) is unique, so a task's work is accrued,
    granted or reversed at most once."""

    __tablename__ = "ledger_transactions"
    __table_args__ = (UniqueConstraint("kind", "task_id", name="uq_ledger_kind_task"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    task_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    memo: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float, index=True)


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transaction_id: Mapped[int] = mapped_column(ForeignKey("ledger_transactions.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)


class Lease(Base):
    """One attempt of one worker at one task; the history behind late and duplicate results."""

    __tablename__ = "leases"
    __table_args__ = (Index("ix_leases_worker_outcome", "worker_id", "outcome"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), index=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    worker_id: Mapped[str] = mapped_column(ForeignKey("workers.id"))
    leased_at: Mapped[float] = mapped_column(Float)
    deadline: Mapped[float] = mapped_column(Float, index=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    bytes_down: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_up: Mapped[int] = mapped_column(BigInteger, default=0)
    expires_by: Mapped[float | None] = mapped_column(Float, nullable=True)
    """No heartbeat extends the lease past this: derived from the worker's measured speed."""


class Event(Base):
    """A job's event log (OpenAI `fine_tuning.job.event`)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    level: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


def normalize_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` and use the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if not url.startswith(("sqlite:", "postgresql+")):
        raise ConfigError(f"--db must be a sqlite:/// or postgresql:// URL, got {url!r}")
    return url


_Created = TypeVar("_Created", "Job", "File")


def page_by_creation(
    session: Session,
    model: type[_Created],
    query: Select[Any],
    *,
    after: str | None,
    limit: int,
    what: str,
    ascending: bool = False,
) -> tuple[list[_Created], bool]:
    """One page of `query`'s rows of `model` in creation order (newest first unless
    `ascending`), after the row whose id is `after`; and whether more rows follow."""
    created, row_id = model.created_at, model.id
    if after is not None:  # looked up through the query: a row it filters out is not found
        anchor = session.scalars(query.where(row_id == after)).first()
        if anchor is None:
            raise NotFoundError(f"no {what} {after!r:.80} to page after")
        if ascending:
            beyond = (created > anchor.created_at) | (
                (created == anchor.created_at) & (row_id > anchor.id)
            )
        else:
            beyond = (created < anchor.created_at) | (
                (created == anchor.created_at) & (row_id < anchor.id)
            )
        query = query.where(beyond)
    order = (created.asc(), row_id.asc()) if ascending else (created.desc(), row_id.desc())
    rows: list[_Created] = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


class Database:
    """An engine, a session factory and the migrations for one database URL."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            memory = self.url in ("sqlite://", "sqlite:///:memory:")
            self.engine: Engine = create_engine(
                self.url,
                connect_args={"check_same_thread": False, "timeout": 30},
                poolclass=StaticPool if memory else None,
            )
            _configure_sqlite(self.engine)
        else:
            self.engine = create_engine(self.url, pool_size=10, max_overflow=20, pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(
            self.engine.execution_options(swarm_read_only=True), expire_on_commit=False
        )
        # SQLite has one writer at a time. Its own wait for the lock is a sleep-and-retry
        # loop (up to 100 ms a try), which under load turns a millisecond write into
        # seconds; a lock in this process hands the database from one writer to the next.
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self.is_sqlite else contextlib.nullcontext()
        )

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on any exception."""
        with self._write_lock, self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading only: it never waits for writers (nor they for it), and
        nothing changed in it is written."""
        with self._readers() as session, session.begin():
            try:
                yield session
            finally:
                session.expunge_all()  # detached as loaded, and no change left to flush

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        from swarm.coordinator.migrations import upgrade_to_head

        upgrade_to_head(self.engine)

    def ping_s(self) -> float:
        """Round-trip time of a trivial query, in seconds."""
        began = time.perf_counter()
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return time.perf_counter() - began

    def dispose(self) -> None:
        self.engine.dispose()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the write lock up front, so a transaction never fails half-way on
        # upgrading it; readers (`Database.read`) take none and read a snapshot (WAL).
        read_only = connection.get_execution_options().get("swarm_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'swarm.db').resolve()}"
