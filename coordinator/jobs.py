"""Creating jobs and reading them back.

Creating a job does all the work that can fail on the user's input before anything is queued:
validate the spec, find the model, parse, check and tokenize the data once into
content-addressed shards and a held-out set, attach the adapter, store the initial trainable
parameters, and open round 0.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from transformers import PreTrainedTokenizerBase

from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.catalog import ModelCatalog
from swarm.coordinator.rounds import RoundService
from swarm.coordinator.storage import Database, Event, Job, Round, Task
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
    state_to_bytes,
    trainable_state,
)
from swarm.models.chat import tokenize_examples
from swarm.protocol.errors import ConfigError, NotFoundError
from swarm.scheduler import JobSpec, JobStatus, TaskStatus

logger = logging.getLogger(__name__)


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


def prepare_data(
    spec: JobSpec,
    tokenizer: PreTrainedTokenizerBase,
    config: dict[str, Any],
    datasets_dir: Path | None = None,
) -> PreparedData:
    """Parse, check and tokenize a job's data once, into shards and a held-out set."""
    context = config.get("max_position_embeddings") or config.get("n_positions")
    if context and spec.seq_len > context:
        raise ConfigError(
            f"seq_len {spec.seq_len} is longer than {spec.model}'s context of {context} tokens"
        )
    if spec.method == "lm":
        token_shards, heldout_tokens = prepare_tokens(spec)
        return PreparedData(
            shards=[encode_shard(s) for s in token_shards],
            heldout=encode_shard(heldout_tokens),
            summary=f"{sum(len(s) for s in token_shards) + len(heldout_tokens):,} tokens into "
            f"{len(token_shards)} shards and {len(heldout_tokens):,} held-out tokens",
        )
    kind: DatasetKind = "chat" if spec.method == "sft" else "preference"
    examples = parse_dataset(read_dataset(spec.dataset, datasets_dir), kind)
    if spec.validation_dataset:
        heldout = parse_dataset(read_dataset(spec.validation_dataset, datasets_dir), kind)
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
    train_sets, truncated = _tokenize(examples, tokenizer, spec)
    heldout_sets, heldout_truncated = _tokenize(heldout, tokenizer, spec)
    vocab_size = int(config["vocab_size"])
    largest = max(int(s.ids.max()) for s in (*train_sets.values(), *heldout_sets.values()))
    if largest >= vocab_size:
        raise ConfigError(
            f"{spec.model}'s tokenizer produces token id {largest}, beyond the model's "
            f"vocabulary of {vocab_size}: this model cannot be trained on chat data"
        )
    order = np.random.default_rng(spec.seed).permutation(len(examples))
    shards = [
        encode_examples({name: s.subset(part.tolist()) for name, s in train_sets.items()})
        for part in np.array_split(order, spec.num_shards)
    ]
    num_cut = truncated + heldout_truncated
    cut = f", {num_cut} sequences cut to seq_len {spec.seq_len}" if num_cut else ""
    return PreparedData(
        shards=shards,
        heldout=encode_examples(heldout_sets),
        summary=f"{len(examples)} {kind} examples into {len(shards)} shards and "
        f"{len(heldout)} held-out{cut}",
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
        datasets_dir: Path | None = None,
    ) -> None:
        """`datasets_dir`: where jobs may read JSONL files from (None: builtin datasets only)."""
        self._db = db
        self._blobs = blobs
        self._rounds = rounds
        self._catalog = catalog
        self._datasets_dir = datasets_dir
        # Preparing a job holds a whole model and its tokenized data in memory: one at a time.
        self._preparing = threading.Lock()

    def create_job(self, spec: JobSpec, metadata: dict[str, str] | None = None) -> Job:
        """Validate and prepare a job, then queue it with round 0 open.

        Everything that can fail on the user's input (the model, the data, the settings) fails
        here, before anything is stored.
        """
        with self._preparing:
            return self._create_job(spec, metadata)

    def _create_job(self, spec: JobSpec, metadata: dict[str, str] | None) -> Job:
        base = self._catalog.resolve(spec.model, seed=spec.seed, chat=spec.method != "lm")
        data = prepare_data(spec, base.tokenizer, base.config, self._datasets_dir)
        model = apply_adapter(base.model, spec.adapter_config(), seed=spec.seed)
        # Frozen weights travel only when workers need them: under LoRA, and for DPO's reference.
        needs_base = spec.adapter == "lora" or spec.method == "dpo"
        if needs_base:
            base.store(self._blobs)
        config_sha = self._blobs.put_bytes(config_to_bytes(base.config))
        heldout_sha = self._blobs.put_bytes(data.heldout)
        shard_shas = [self._blobs.put_bytes(shard) for shard in data.shards]
        params_sha = self._blobs.put_bytes(state_to_bytes(trainable_state(model)))

        now = time.time()
        job = Job(
            id=new_id("ftjob"),
            status=JobStatus.QUEUED.value,
            model=spec.model,
            spec=spec.to_dict(),
            created_at=now,
            metadata_=metadata,
            model_config_sha256=config_sha,
            heldout_sha256=heldout_sha,
            shard_sha256s=shard_shas,
            base_sha256s=base.weight_sha256s if needs_base else [],
            param_shapes={n: list(s) for n, s in parameter_shapes(model).items()},
            num_trainable_params=count_parameters(model),
            tasks_created=0,
            rounds_completed=0,
            trained_tokens=0,
        )
        with self._db.transaction() as session:
            session.add(job)
            session.flush()
            add_event(
                session,
                job.id,
                f"validated {data.summary}; {spec.model} ({spec.method}, {spec.adapter}) has "
                f"{job.num_trainable_params:,} trainable parameters",
            )
            self._rounds.start_job(session, job, params_sha, now)
        logger.info(
            "job %s created: %s %s on %s, %d rounds, %s trainable parameters",
            job.id,
            spec.method,
            spec.adapter,
            spec.model,
            spec.num_rounds,
            f"{job.num_trainable_params:,}",
        )
        return job

    def get_job(self, job_id: str) -> Job:
        with self._db.transaction() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id!r}")
            return job

    def list_jobs(self, *, after: str | None = None, limit: int = 20) -> JobPage:
        """Newest first; `after` is the id of the last job of the previous page."""
        with self._db.transaction() as session:
            query = select(Job).order_by(Job.created_at.desc(), Job.id.desc())
            if after is not None:
                anchor = session.get(Job, after)
                if anchor is None:
                    raise NotFoundError(f"no job {after!r} to page after")
                query = query.where(
                    (Job.created_at < anchor.created_at)
                    | ((Job.created_at == anchor.created_at) & (Job.id < anchor.id))
                )
            jobs = list(session.scalars(query.limit(limit + 1)))
        return JobPage(jobs=jobs[:limit], has_more=len(jobs) > limit)

    def list_rounds(self, job_id: str) -> list[Round]:
        self.get_job(job_id)
        with self._db.transaction() as session:
            return list(
                session.scalars(select(Round).where(Round.job_id == job_id).order_by(Round.index))
            )

    def tasks_accepted(self, job_id: str) -> dict[int, int]:
        """Round index -> how many of its tasks have an accepted result."""
        with self._db.transaction() as session:
            rows = session.execute(
                select(Task.round_index, func.count())
                .where(Task.job_id == job_id, Task.status == TaskStatus.ACCEPTED.value)
                .group_by(Task.round_index)
            )
            return {index: count for index, count in rows}

    def list_events(self, job_id: str, limit: int = 100) -> list[Event]:
        self.get_job(job_id)
        with self._db.transaction() as session:
            return list(
                session.scalars(
                    select(Event)
                    .where(Event.job_id == job_id)
                    .order_by(Event.id.desc())
                    .limit(limit)
                )
            )

    def count_by_status(self) -> dict[str, int]:
        with self._db.transaction() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
            return {status: count for status, count in rows}


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
