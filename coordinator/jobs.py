"""Creating, preparing, controlling and reading jobs.

A job's life: `create_job` checks what is cheap to check on the user's input (the settings,
that the model exists, that every line of the data parses) and stores the job as
`validating_files`; `prepare_next`, on the coordinator's preparer thread, does the heavy part
(load the model, tokenize the data once into content-addressed shards and a held-out set,
attach the adapter, store the initial parameters, estimate the cost) and queues it. The
scheduler starts queued jobs (`swarm.coordinator.scheduling`). A failure says whose it was:
`user_error` (the data, the model, the settings) or `platform_error` (ours).

Operators and owners pause, resume and cancel jobs; pausing revokes the job's leases (their
tasks keep their data and run again on resume), cancelling stops every task and pays for the
work already accepted.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from transformers import PreTrainedTokenizerBase

from swarm.coordinator import spans
from swarm.coordinator.artifacts import store_merged
from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.catalog import ModelCatalog
from swarm.coordinator.files import FileService, is_file_id
from swarm.coordinator.ledger import Ledger
from swarm.coordinator.rounds import RoundService
from swarm.coordinator.storage import (
    Checkpoint,
    Database,
    DataSpan,
    Event,
    Job,
    Round,
    Task,
    count_by,
    page_by_creation,
)
from swarm.models import (
    MAX_DATASET_BYTES,
    ChatExample,
    DatasetKind,
    PreferenceExample,
    SequenceSet,
    apply_adapter,
    config_to_bytes,
    count_parameters,
    encode_examples,
    encode_shard,
    encode_text,
    is_builtin,
    load_builtin_bytes,
    load_builtin_text,
    parameter_shapes,
    parse_dataset,
    split_tokens,
    state_from_bytes,
    state_to_bytes,
    trainable_state,
)
from swarm.models.chat import tokenize_examples
from swarm.protocol.errors import ConfigError, NotFoundError
from swarm.scheduler import (
    JobSpec,
    JobStatus,
    TaskStatus,
    check_account,
    check_job_move,
    format_credits,
    micro_credits,
    user_account,
)
from swarm.scheduler.work import estimate_job_flops, estimate_memory_bytes

logger = logging.getLogger(__name__)

DEFAULT_OWNER = user_account("default")
"""Who pays for jobs created without naming an owner."""


@dataclass(frozen=True, kw_only=True)
class JobPage:
    jobs: list[Job]
    has_more: bool


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


@dataclass(frozen=True, kw_only=True)
class PreparedData:
    """A job's data as encoded shards, and one line saying what was in it."""

    shards: list[bytes]
    heldout: bytes
    summary: str
    shard_samples: list[int]
    """Samples (windows, conversations or pairs) in each shard."""
    num_tokens: int
    """Tokens in all the training samples (both replies of a pair)."""
    num_heldout: int


def read_dataset(source: str, datasets_dir: Path | None) -> bytes:
    """The bytes of `builtin:NAME`, or of a JSONL file inside the coordinator's datasets folder.

    A path that leads outside that folder (`..`, a symlink, an absolute path elsewhere) is
    refused, and at most `MAX_DATASET_BYTES` are read whatever the file claims its size is.
    """
    if is_builtin(source):
        return load_builtin_bytes(source)
    if datasets_dir is None:
        raise ConfigError(
            f"dataset {source!r:.200}: this coordinator serves builtin: datasets only"
        )
    root = datasets_dir.resolve()
    path = (root / source).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise ConfigError(
            f"dataset {source!r:.200} is neither builtin:NAME nor a file in the coordinator's "
            f"datasets folder ({root})"
        )
    with path.open("rb") as file:
        data = file.read(MAX_DATASET_BYTES + 1)
    if len(data) > MAX_DATASET_BYTES:
        raise ConfigError(f"dataset {source} is over the {MAX_DATASET_BYTES:,} byte limit")
    return data


@dataclass(frozen=True)
class Datasets:
    """Where a job's dataset names lead: `builtin:NAME`, an uploaded `file-…`, or a JSONL file
    in the coordinator's datasets folder."""

    folder: Path | None = None
    files: FileService | None = None
    deleted_ok: bool = True
    """Whether deleted uploads may be read: by jobs created before, not by new ones."""

    def read(self, source: str, kind: DatasetKind, field: str) -> bytes:
        if is_file_id(source):
            if self.files is None:
                raise ConfigError(f"{field}: this coordinator takes no uploaded files")
            return self.files.dataset(source, kind, field, deleted_ok=self.deleted_ok)
        return read_dataset(source, self.folder)


def split_examples(
    spec: JobSpec, datasets: Datasets
) -> tuple[list[ChatExample | PreferenceExample], list[ChatExample | PreferenceExample]]:
    """A chat or preference job's training and held-out examples, parsed and checked."""
    kind: DatasetKind = "chat" if spec.method == "sft" else "preference"
    examples: list[ChatExample | PreferenceExample] = list(
        parse_dataset(datasets.read(spec.dataset, kind, "training_file"), kind)
    )
    if spec.validation_dataset:
        heldout = list(
            parse_dataset(datasets.read(spec.validation_dataset, kind, "validation_file"), kind)
        )
    else:
        num_heldout = max(1, int(len(examples) * spec.heldout_fraction))
        if len(examples) <= num_heldout:
            raise ConfigError(
                f"{spec.dataset} has {len(examples)} example(s): too few to hold some out; "
                "add examples or give a validation_dataset"
            )
        examples, heldout = examples[:-num_heldout], examples[-num_heldout:]
    if len(examples) < spec.num_shards:
        raise ConfigError(
            f"{spec.dataset} has {len(examples)} training examples, fewer than num_shards="
            f"{spec.num_shards}; use fewer shards"
        )
    return examples, heldout


@dataclass(frozen=True, kw_only=True)
class TokenizedData:
    """A chat or preference job's examples, tokenized and checked, before encoding."""

    train: dict[str, SequenceSet]
    heldout: dict[str, SequenceSet]
    num_examples: int
    num_heldout: int
    num_truncated: int


def check_context(spec: JobSpec, config: dict[str, Any]) -> None:
    context = config.get("max_position_embeddings") or config.get("n_positions")
    if context and spec.seq_len > context:
        raise ConfigError(
            f"seq_len {spec.seq_len} is longer than {spec.model}'s context of {context} tokens"
        )


def tokenize_data(
    spec: JobSpec,
    tokenizer: PreTrainedTokenizerBase,
    config: dict[str, Any],
    datasets: Datasets | None = None,
) -> TokenizedData:
    """Parse and tokenize a chat or preference job's data, checking every example."""
    check_context(spec, config)
    examples, heldout = split_examples(spec, datasets or Datasets())
    train_sets, truncated = _tokenize(examples, tokenizer, spec)
    heldout_sets, heldout_truncated = _tokenize(heldout, tokenizer, spec)
    vocab_size = int(config["vocab_size"])
    largest = max(int(s.ids.max()) for s in (*train_sets.values(), *heldout_sets.values()))
    if largest >= vocab_size:
        raise ConfigError(
            f"{spec.model}'s tokenizer produces token id {largest}, beyond the model's "
            f"vocabulary of {vocab_size}: this model cannot be trained on chat data"
        )
    return TokenizedData(
        train=train_sets,
        heldout=heldout_sets,
        num_examples=len(examples),
        num_heldout=len(heldout),
        num_truncated=truncated + heldout_truncated,
    )


def prepare_data(
    spec: JobSpec,
    tokenizer: PreTrainedTokenizerBase,
    config: dict[str, Any],
    datasets: Datasets | None = None,
) -> PreparedData:
    """Parse, check and tokenize a job's data once, into shards and a held-out set."""
    if spec.method == "lm":
        check_context(spec, config)
        token_shards, heldout_tokens = prepare_tokens(spec)
        windows = [len(s) // spec.seq_len for s in token_shards]
        return PreparedData(
            shards=[encode_shard(s) for s in token_shards],
            heldout=encode_shard(heldout_tokens),
            summary=f"{sum(len(s) for s in token_shards) + len(heldout_tokens):,} tokens into "
            f"{len(token_shards)} shards and {len(heldout_tokens):,} held-out tokens",
            shard_samples=windows,
            num_tokens=sum(windows) * spec.seq_len,
            num_heldout=(len(heldout_tokens) - 1) // spec.seq_len,
        )
    kind = "chat" if spec.method == "sft" else "preference"
    data = tokenize_data(spec, tokenizer, config, datasets)
    order = np.random.default_rng(spec.seed).permutation(data.num_examples)
    parts = np.array_split(order, spec.num_shards)
    shards = [
        encode_examples({name: s.subset(part.tolist()) for name, s in data.train.items()})
        for part in parts
    ]
    cut = (
        f", {data.num_truncated} sequences cut to seq_len {spec.seq_len}"
        if data.num_truncated
        else ""
    )
    return PreparedData(
        shards=shards,
        heldout=encode_examples(data.heldout),
        summary=f"{data.num_examples} {kind} examples into {len(shards)} shards and "
        f"{data.num_heldout} held-out{cut}",
        shard_samples=[len(part) for part in parts],
        num_tokens=sum(len(s.ids) for s in data.train.values()),
        num_heldout=data.num_heldout,
    )


def _tokenize(
    examples: Sequence[ChatExample | PreferenceExample],
    tokenizer: PreTrainedTokenizerBase,
    spec: JobSpec,
) -> tuple[dict[str, SequenceSet], int]:
    """Sequence sets of tokenized examples, and how many sequences were truncated."""
    sets = tokenize_examples(tokenizer, examples, spec.seq_len)
    truncated = sum(s.truncated for seqs in sets.values() for s in seqs)
    return {name: SequenceSet.from_sequences(seqs) for name, seqs in sets.items()}, truncated


def prepare_tokens(spec: JobSpec) -> tuple[list[np.ndarray], np.ndarray]:
    """Tokenize a job's dataset into its training shards and its held-out tail."""
    tokens = encode_text(load_builtin_text(spec.dataset))
    num_heldout = max(int(len(tokens) * spec.heldout_fraction), spec.seq_len + 1)
    shards = split_tokens(tokens[:-num_heldout], spec.num_shards)
    if min(len(s) for s in shards) < spec.seq_len + 1:
        raise ConfigError(
            f"num_shards={spec.num_shards} leaves shards shorter than seq_len + 1 = "
            f"{spec.seq_len + 1} tokens; use fewer shards or a shorter seq_len"
        )
    return shards, tokens[-num_heldout:]


class JobService:
    def __init__(
        self,
        db: Database,
        blobs: BlobStore,
        rounds: RoundService,
        catalog: ModelCatalog,
        ledger: Ledger,
        datasets_dir: Path | None = None,
        *,
        files: FileService | None = None,
        on_created: Callable[[], None] = lambda: None,
    ) -> None:
        """`datasets_dir`: where jobs may read JSONL files from (None: builtin datasets only);
        `files`: uploaded datasets, named `file-…`."""
        self._db = db
        self._blobs = blobs
        self._rounds = rounds
        self._catalog = catalog
        self._ledger = ledger
        self._datasets = Datasets(datasets_dir, files)
        self._on_created = on_created
        # Preparing a job holds a whole model and its tokenized data in memory: one at a time.
        self._preparing = threading.Lock()

    # -- creating and preparing -----------------------------------------------------------

    def create_job(
        self,
        spec: JobSpec,
        metadata: dict[str, str] | None = None,
        *,
        owner: str = DEFAULT_OWNER,
        suffix: str | None = None,
    ) -> Job:
        """Check a job's input and store it as `validating_files`; `prepare_next` queues it.

        Mistakes in the settings, the model name or any line of the data fail here, before
        anything is stored.
        """
        check_account(owner)
        self._validate(spec)
        now = time.time()
        job = Job(
            id=new_id("ftjob"),
            status=JobStatus.VALIDATING_FILES.value,
            model=spec.model,
            spec=spec.to_dict(),
            created_at=now,
            metadata_=metadata,
            owner=owner,
            suffix=suffix or None,
            model_config_sha256="",
            heldout_sha256="",
            shard_sha256s=[],
            param_shapes={},
            num_trainable_params=0,
            tasks_created=0,
            rounds_completed=0,
            trained_tokens=0,
        )
        with self._db.transaction() as session:
            session.add(job)
            session.flush()
            add_event(session, job.id, f"validating {spec.dataset} for {spec.model}")
        logger.info("job %s created by %s: %s on %s", job.id, owner, spec.method, spec.model)
        self._on_created()
        return job

    def _validate(self, spec: JobSpec) -> None:
        """Every check of a job's input that needs no model weights: the model exists, every
        example parses and fits, and there is enough data for the shards and a held-out set."""
        base = self._known_model(spec.model)
        config = self._catalog.config(base, chat=spec.method != "lm")
        if spec.method == "lm":
            check_context(spec, config)
            prepare_tokens(spec)
        else:
            new = replace(self._datasets, deleted_ok=False)  # a deleted file starts no new job
            tokenize_data(spec, self._catalog.tokenizer(base), config, new)

    def _known_model(self, name: str) -> str:
        """The catalog model whose tokenizer and config `name` has (a checkpoint: its job's)."""
        if name.startswith("ftckpt-") and self._catalog.manifest(name) is None:
            with self._db.transaction() as session:
                checkpoint = session.get(Checkpoint, name)
                if checkpoint is not None:
                    return self._known_model(session.get_one(Job, checkpoint.job_id).model)
        self._catalog.require(name)
        return name

    def prepare_next(self) -> str | None:
        """Prepare the oldest job still validating and queue it; returns its id (None: none)."""
        with self._db.transaction() as session:
            job = session.scalars(
                select(Job)
                .where(Job.status == JobStatus.VALIDATING_FILES.value)
                .order_by(Job.created_at)
                .limit(1)
            ).first()
        if job is None:
            return None
        with self._preparing:
            try:
                prepared = self._prepare(job)
            except ConfigError as exc:  # the user's input: say what to fix
                self._fail(job.id, "user_error", str(exc))
                return job.id
            except Exception as exc:  # ours: log it, and tell the user it was not their fault
                logger.exception("job %s: preparing failed", job.id)
                self._fail(job.id, "platform_error", f"preparing the job failed: {exc}")
                return job.id
        self._queue(job.id, prepared)
        return job.id

    def _prepare(self, job: Job) -> dict[str, Any]:
        """Everything a queued job needs, built and stored; returns the job's new fields."""
        spec = JobSpec(**job.spec)
        if spec.model.startswith("ftckpt-"):
            self._materialize_checkpoint(spec.model)
        base = self._catalog.resolve(spec.model, seed=spec.seed, chat=spec.method != "lm")
        data = prepare_data(spec, base.tokenizer, base.config, self._datasets)
        model = apply_adapter(base.model, spec.adapter_config(), seed=spec.seed)
        # Frozen weights travel only when workers need them: under LoRA, and for DPO's reference.
        needs_base = spec.adapter == "lora" or spec.method == "dpo"
        if needs_base:
            base.store(self._blobs)
        num_params = count_parameters(model, trainable_only=False)
        num_trainable = count_parameters(model)
        num_samples = sum(data.shard_samples)
        return {
            "model_config_sha256": self._blobs.put_bytes(config_to_bytes(base.config)),
            "heldout_sha256": self._blobs.put_bytes(data.heldout),
            "shard_sha256s": [self._blobs.put_bytes(shard) for shard in data.shards],
            "base_sha256s": base.weight_sha256s if needs_base else [],
            "param_shapes": {n: list(s) for n, s in parameter_shapes(model).items()},
            "num_trainable_params": num_trainable,
            "num_model_params": num_params,
            "memory_bytes": estimate_memory_bytes(
                spec, num_params=num_params, num_trainable=num_trainable, config=base.config
            ),
            "shard_samples": data.shard_samples,
            "tokens_per_sample": data.num_tokens / max(1, num_samples),
            "initial_params_sha256": self._blobs.put_bytes(state_to_bytes(trainable_state(model))),
            "estimated_credits": micro_credits(
                estimate_job_flops(
                    spec,
                    num_params=num_params,
                    tokens_per_sample=data.num_tokens / max(1, num_samples),
                    num_samples=num_samples,
                    num_heldout=data.num_heldout,
                    num_train_tasks=spec.min_clients,
                )
            ),
            "summary": data.summary,
        }

    def _materialize_checkpoint(self, checkpoint_id: str) -> None:
        """Store a checkpoint's merged model in the catalog, so a job can start from it."""
        if self._catalog.manifest(checkpoint_id) is not None:
            return
        with self._db.transaction() as session:
            checkpoint = session.get(Checkpoint, checkpoint_id)
            if checkpoint is None:
                raise ConfigError(f"no checkpoint {checkpoint_id!r}")
            source = session.get_one(Job, checkpoint.job_id)
        params = state_from_bytes(self._blobs.read(checkpoint.params_sha256))
        store_merged(source, params, self._blobs, self._catalog, name=checkpoint_id)

    def _queue(self, job_id: str, prepared: dict[str, Any]) -> None:
        now = time.time()
        summary = prepared.pop("summary")
        with self._db.transaction() as session:
            job = session.get_one(Job, job_id, with_for_update=True)
            if job.status != JobStatus.VALIDATING_FILES.value:  # cancelled meanwhile
                return
            for name, value in prepared.items():
                setattr(job, name, value)
            job.status = JobStatus.QUEUED.value
            job.queued_at = now
            spec = JobSpec(**job.spec)
            add_event(
                session,
                job.id,
                f"validated {summary}; {spec.model} ({spec.method}, {spec.adapter}) has "
                f"{job.num_trainable_params:,} trainable parameters; queued, estimated "
                f"{format_credits(job.estimated_credits)} credits",
            )
        logger.info(
            "job %s queued: %s %s on %s, %s trainable parameters, ~%s credits",
            job_id,
            spec.method,
            spec.adapter,
            spec.model,
            f"{job.num_trainable_params:,}",
            format_credits(job.estimated_credits),
        )

    def _fail(self, job_id: str, code: str, message: str) -> None:
        now = time.time()
        with self._db.transaction() as session:
            job = session.get_one(Job, job_id, with_for_update=True)
            if JobStatus(job.status).is_terminal:
                return
            job.status = JobStatus.FAILED.value
            job.finished_at = now
            job.error = {"code": code, "message": message, "param": None}
            self._rounds.stop_tasks(session, job, now)
            add_event(session, job.id, message, level="error")
        logger.warning("job %s failed (%s): %s", job_id, code, message)

    # -- control ---------------------------------------------------------------------------

    def pause(self, job_id: str) -> Job:
        """Stop leasing a job's tasks; running ones are revoked and will run again on resume."""
        now = time.time()
        with self._db.transaction() as session:
            job = self._locked(session, job_id)
            check_job_move(JobStatus(job.status), JobStatus.PAUSED)
            job.status = JobStatus.PAUSED.value
            running = list(
                session.scalars(
                    select(Task).where(
                        Task.job_id == job.id, Task.status == TaskStatus.LEASED.value
                    )
                )
            )
            for task in running:
                spans.revoke(session, task, now, requeue=True)
            add_event(session, job.id, f"paused ({len(running)} running tasks revoked)")
            return job

    def resume(self, job_id: str) -> Job:
        """A paused job runs again (or, if it never started, goes back to the queue)."""
        now = time.time()
        with self._db.transaction() as session:
            job = self._locked(session, job_id)
            target = JobStatus.RUNNING if job.started_at is not None else JobStatus.QUEUED
            if job.status != JobStatus.PAUSED.value:
                check_job_move(JobStatus(job.status), target)  # explains why not
            job.status = target.value
            for round_ in session.scalars(
                select(Round).where(Round.job_id == job.id, Round.status == "open")
            ):
                round_.deadline_at = now + self._rounds.timeout_s(session, job, now)
            session.execute(
                update(Task)
                .where(Task.job_id == job.id, Task.status == TaskStatus.PENDING.value)
                .values(available_since=now)
            )
            add_event(session, job.id, f"resumed ({target.value})")
            return job

    def cancel(self, job_id: str) -> Job:
        """Stop a job for good; work already accepted is still paid for."""
        now = time.time()
        with self._db.transaction() as session:
            job = self._locked(session, job_id)
            check_job_move(JobStatus(job.status), JobStatus.CANCELLED)
            job.status = JobStatus.CANCELLED.value
            job.finished_at = now
            self._rounds.stop_tasks(session, job, now)
            self._rounds.grant_job(session, job)
            add_event(session, job.id, "cancelled")
            return job

    @staticmethod
    def _locked(session: Session, job_id: str) -> Job:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}")
        return job

    # -- reading ---------------------------------------------------------------------------

    def get_job(self, job_id: str) -> Job:
        with self._db.transaction() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id!r}")
            return job

    def list_jobs(
        self, *, owner: str | None = None, after: str | None = None, limit: int = 20
    ) -> JobPage:
        """Newest first (`owner`'s only, unless None); `after` is the id of the last job of
        the previous page."""
        query = select(Job) if owner is None else select(Job).where(Job.owner == owner)
        with self._db.transaction() as session:
            jobs, has_more = page_by_creation(
                session, Job, query, after=after, limit=limit, what="job"
            )
        return JobPage(jobs=jobs, has_more=has_more)

    def owners(self, job_ids: Sequence[str]) -> dict[str, str]:
        """Job id -> the account that owns it, for the ids that exist."""
        if not job_ids:
            return {}
        with self._db.transaction() as session:
            rows = session.execute(select(Job.id, Job.owner).where(Job.id.in_(job_ids)))
            return {job_id: owner for job_id, owner in rows}

    def get_checkpoint(self, checkpoint_id: str) -> Checkpoint:
        with self._db.transaction() as session:
            checkpoint = session.get(Checkpoint, checkpoint_id)
        if checkpoint is None:
            raise NotFoundError(f"no checkpoint {checkpoint_id!r:.80}")
        return checkpoint

    def list_rounds(self, job_id: str) -> list[Round]:
        self.get_job(job_id)
        with self._db.transaction() as session:
            return list(
                session.scalars(select(Round).where(Round.job_id == job_id).order_by(Round.index))
            )

    def list_tasks(self, job_id: str) -> list[tuple[Task, list[DataSpan]]]:
        """Every task of a job with its data spans, in round order."""
        self.get_job(job_id)
        with self._db.transaction() as session:
            tasks = list(
                session.scalars(
                    select(Task).where(Task.job_id == job_id).order_by(Task.round_index, Task.index)
                )
            )
            by_task: dict[str, list[DataSpan]] = {}
            for span in session.scalars(
                select(DataSpan)
                .where(DataSpan.job_id == job_id, DataSpan.task_id.is_not(None))
                .order_by(DataSpan.id)
            ):
                by_task.setdefault(span.task_id or "", []).append(span)
            return [(task, by_task.get(task.id, [])) for task in tasks]

    def list_checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int = 10
    ) -> tuple[list[Checkpoint], bool]:
        """A job's checkpoints, newest first, and whether there are more."""
        self.get_job(job_id)
        with self._db.transaction() as session:
            query = (
                select(Checkpoint)
                .where(Checkpoint.job_id == job_id)
                .order_by(Checkpoint.version.desc())
            )
            if after is not None:
                anchor = session.get(Checkpoint, after)
                if anchor is None or anchor.job_id != job_id:
                    raise NotFoundError(f"no checkpoint {after!r} of job {job_id} to page after")
                query = query.where(Checkpoint.version < anchor.version)
            rows = list(session.scalars(query.limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def tasks_accepted(self, job_id: str) -> dict[int, int]:
        """Round index -> how many of its tasks have an accepted result."""
        with self._db.transaction() as session:
            rows = session.execute(
                select(Task.round_index, func.count())
                .where(Task.job_id == job_id, Task.status == TaskStatus.ACCEPTED.value)
                .group_by(Task.round_index)
            )
            return {index: count for index, count in rows}

    def spending(self, job_id: str) -> dict[str, int]:
        with self._db.transaction() as session:
            return self._ledger.job_spending(session, job_id)

    def list_events(
        self, job_id: str, *, after: int | None = None, limit: int = 100
    ) -> tuple[list[Event], bool]:
        """A job's events, newest first, older than event `after`; and whether more follow."""
        self.get_job(job_id)
        query = select(Event).where(Event.job_id == job_id)
        if after is not None:
            query = query.where(Event.id < after)
        with self._db.transaction() as session:
            rows = list(session.scalars(query.order_by(Event.id.desc()).limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def count_by_status(self) -> dict[str, int]:
        with self._db.transaction() as session:
            return count_by(session, Job.status)


def add_event(
    session: Any,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type_: str = "message",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(
        Event(
            job_id=job_id,
            created_at=time.time(),
            level=level,
            type=type_,
            message=message,
            data=data,
        )
    )
