"""Job, round and task states, the moves allowed between them, and a job's training spec."""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from swarm.compression import CompressionPolicy, parse_chain
from swarm.models import METHODS, AdapterConfig, InnerLoopConfig
from swarm.protocol.errors import CompressionError, ConfigError, SchedulingError


class JobStatus(str, enum.Enum):
    """The OpenAI fine-tuning job states, plus `paused`."""

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


_JOB_MOVES: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING_FILES: frozenset(
        {JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.QUEUED: frozenset(
        {JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.CANCELLED, JobStatus.FAILED}
    ),
    JobStatus.RUNNING: frozenset(
        {JobStatus.PAUSED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.PAUSED: frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def check_job_move(current: JobStatus, target: JobStatus) -> None:
    """Raise `SchedulingError` unless a job may go from `current` to `target`."""
    if target not in _JOB_MOVES[current]:
        raise SchedulingError(f"a {current.value} job cannot become {target.value}")


class RoundStatus(str, enum.Enum):
    OPEN = "open"  # tasks are being leased and results accepted
    AGGREGATING = (
        "aggregating"  # all results are in; one coordinator is stepping the outer optimizer
    )
    CLOSED = "closed"  # the next version is published


class TaskStatus(str, enum.Enum):
    PENDING = "pending"
    LEASED = "leased"
    ACCEPTED = "accepted"
    CANCELLED = "cancelled"  # its round closed without it, or its job stopped


class LeaseOutcome(str, enum.Enum):
    ACTIVE = "active"
    SUBMITTED = "submitted"  # this lease's result was accepted
    EXPIRED = "expired"  # the deadline passed without a result
    HANDED_BACK = "handed_back"  # the worker gave the task back (shutdown, error, out of memory)
    SUPERSEDED = "superseded"  # an earlier holder's late result was accepted instead
    CANCELLED = "cancelled"  # the job stopped


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """What a data-parallel (DiLoCo) training job does; validated on construction.

    Attributes:
        model: a preset (`tiny-llama`, ...), a pulled model (`smollm2-135m-instruct`, see
            `swarm models list`) or the id of a succeeded job, whose merged result is the base.
        method: `lm` (next-token loss on plain text), `sft` (chat conversations, loss on the
            assistant's tokens) or `dpo` (preference pairs).
        dataset: the training data: `builtin:tiny_corpus` (text), `builtin:smol_instruct`
            (chat), `builtin:smol_prefs` (preferences), or a JSONL file on the coordinator;
            empty means the method's built-in set.
        validation_dataset: held-out data in the same format; empty means the built-in set's
            held-out file, or else the tail `heldout_fraction` of `dataset`.
        adapter: `lora` or `full`; `auto` is LoRA for sft and dpo, full for lm.
        lora_rank, lora_alpha, lora_dropout: LoRA's r, alpha and dropout.
        lora_target_modules: comma-separated module names; empty means every linear layer.
        dpo_beta: DPO's beta (how far the policy may move from the reference).
        num_rounds: outer steps (published versions) before the job succeeds.
        num_epochs: when above 0, the job instead trains until every sample has been consumed
            this many times (each exactly once per epoch), however many rounds that takes.
        inner_steps: AdamW steps per train task (DiLoCo's H) for a worker of median speed.
        work_sizing: `adaptive` gives each worker inner steps in proportion to its measured
            speed, so a round takes about as long on slow and fast machines; `fixed` gives
            every task `inner_steps`.
        min_inner_steps, max_inner_steps: the range adaptive sizing stays in (0: a quarter
            of and four times `inner_steps`).
        batch_size: sequences per inner step.
        seq_len: tokens per sequence.
        inner_lr: AdamW learning rate; unset, the method's default (`default_learning_rate`):
            DPO's are low, as DPO needs.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping of inner steps (0 disables it).
        warmup_steps: linear warm-up of each task's inner learning rate.
        inner_state: `task` starts AdamW afresh in every train task (stateless: any worker can
            recompute any task, which result verification relies on); `worker` has each worker
            keep its AdamW moments from one of its tasks of the job to the next, as DiLoCo's
            replicas do (no warm-up after a worker's first task; on the compression
            benchmark's job it ended 0.6% lower in held-out loss), at the price of results that
            only the worker that made them can reproduce.
        outer_lr: outer Nesterov SGD learning rate (DiLoCo: 0.7).
        outer_momentum: outer Nesterov momentum (DiLoCo: 0.9).
        min_clients: train tasks per round at least.
        max_clients: train tasks per round at most, however many workers are online.
        round_quorum: the share of a round's train tasks that must be accepted before the
            round may close at its deadline without the rest.
        round_timeout_s: how long a round waits for all its train tasks before closing at
            its quorum (0: three times the expected task time, at least a minute).
        round_grace: once a quorum of train results is in, the round waits this share of the
            time the quorum took for the rest, then closes without them (stragglers, workers
            that died); never past `round_timeout_s`.
        late_updates: what happens to train tasks still running when their round closes:
            `stale` keeps them, and a result that arrives is applied in a later round's step
            with weight 1 / (1 + staleness); `drop` revokes them.
        max_staleness: a late task still running this many rounds after its own is revoked.
        priority: the queue serves higher priorities first (-100 to 100).
        checkpoint_every: keep every N-th version as a checkpoint (the last one always).
        num_shards: contiguous shards the training tokens are split into.
        heldout_fraction: tail of the text kept for held-out evaluation.
        codec: the codec chain for pseudo-gradients of large tensors: a preset (`none`, `fp16`,
            `bf16`, `int8`, `int4`, `topk`, `cocktail`, `powersgd`) or a chain such as
            `topk:0.05+int8+zstd` (see `swarm.compression.chains`).
        small_tensor_codec: the chain for norms, biases and other tensors under
            `small_tensor_elements` elements.
        small_tensor_elements: the size under which a tensor counts as small.
        broadcast_codec: the chain for the deltas between published versions that workers
            download instead of the full parameters (small tensors travel as fp32).
        data_plane: where a round's updates are averaged. `coordinator`: every worker submits
            its own update. `hivemind`: the round's workers first average their updates among
            themselves (hivemind's DHT and DecentralizedAverager, bootstrapped from addresses
            the coordinator hands out), and one of them submits the group's average for all;
            a worker that finds no group within `peer_timeout_s` submits its own.
        peer_timeout_s: how long a worker waits to form a group and average (hivemind).
        eval_batch_size: sequences per forward pass of an evaluate task.
        eval_examples: held-out examples (or windows, for lm) each evaluation measures.
        seed: seeds model init, data order and every task.
    """

    model: str = "tiny-llama"
    method: str = "lm"
    dataset: str = ""
    validation_dataset: str = ""
    adapter: str = "auto"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: str = ""
    dpo_beta: float = 0.1
    num_rounds: int = 10
    num_epochs: int = 0
    inner_steps: int = 20
    work_sizing: str = "adaptive"
    min_inner_steps: int = 0
    max_inner_steps: int = 0
    batch_size: int = 16
    seq_len: int = 128
    inner_lr: float | None = None
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    warmup_steps: int = 4
    inner_state: str = "task"
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    min_clients: int = 2
    max_clients: int = 64
    round_quorum: float = 0.5
    round_timeout_s: float = 0.0
    round_grace: float = 0.5
    late_updates: str = "stale"
    max_staleness: int = 1
    priority: int = 0
    checkpoint_every: int = 1
    num_shards: int = 16
    heldout_fraction: float = 0.05
    codec: str = "int8"
    small_tensor_codec: str = "fp16"
    small_tensor_elements: int = 4096
    broadcast_codec: str = "int8+zstd"
    data_plane: str = "coordinator"
    peer_timeout_s: float = 30.0
    eval_batch_size: int = 16
    eval_examples: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if not self.dataset:
            object.__setattr__(self, "dataset", DEFAULT_DATASETS[self.method])
        if not self.validation_dataset and self.dataset in DEFAULT_HELDOUT:
            object.__setattr__(self, "validation_dataset", DEFAULT_HELDOUT[self.dataset])
        if self.adapter == "auto":
            object.__setattr__(self, "adapter", "full" if self.method == "lm" else "lora")
        if self.inner_lr is None:
            object.__setattr__(self, "inner_lr", default_learning_rate(self.method, self.adapter))
        if self.method == "lm" and self.adapter != "full":
            raise ConfigError("adapter: text (lm) jobs train every weight; use adapter=full")
        limits: dict[str, tuple[float, float]] = {
            "num_rounds": (1, 100_000),
            "num_epochs": (0, 10_000),
            "inner_steps": (1, 100_000),
            "min_inner_steps": (0, 100_000),
            "max_inner_steps": (0, 100_000),
            "round_quorum": (0.01, 1.0),
            "round_timeout_s": (0.0, 7 * 86_400.0),
            "round_grace": (0.0, 100.0),
            "max_staleness": (0, 100),
            "priority": (-100, 100),
            "checkpoint_every": (0, 100_000),
            "batch_size": (1, 4096),
            "seq_len": (8, 131_072),
            "inner_lr": (1e-9, 1.0),
            "lora_rank": (1, 4096),
            "lora_alpha": (1e-6, 1e6),
            "lora_dropout": (0.0, 0.99),
            "dpo_beta": (1e-4, 100.0),
            "eval_batch_size": (1, 4096),
            "eval_examples": (1, 1_000_000),
            "weight_decay": (0.0, 1.0),
            "max_grad_norm": (0.0, 1e6),
            "warmup_steps": (0, 100_000),
            "outer_lr": (1e-6, 10.0),
            "outer_momentum": (0.0, 0.999),
            "min_clients": (1, 10_000),
            "max_clients": (1, 10_000),
            "num_shards": (1, 100_000),
            "heldout_fraction": (0.001, 0.5),
            "small_tensor_elements": (0, 2**40),
            "peer_timeout_s": (1.0, 3600.0),
            "seed": (0, 2**63 - 1),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or math.isnan(value)
                or not low <= value <= high
            ):
                raise ConfigError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "inner_lr":
                continue
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{f.name} must be a whole number, got {value!r}")
            if f.type == "str" and not isinstance(value, str):
                raise ConfigError(f"{f.name} must be a string, got {value!r}")
        for name, allowed in (
            ("work_sizing", WORK_SIZINGS),
            ("late_updates", LATE_UPDATES),
            ("inner_state", INNER_STATES),
            ("data_plane", DATA_PLANES),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r:.40}"
                )
        low, high = self.inner_steps_range()
        if not low <= self.inner_steps <= high:
            raise ConfigError(
                f"inner_steps ({self.inner_steps}) must lie in [min_inner_steps, "
                f"max_inner_steps] = [{low}, {high}]"
            )
        for name in ("codec", "small_tensor_codec", "broadcast_codec"):
            try:
                parse_chain(getattr(self, name))
            except CompressionError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        self.adapter_config()  # validates the LoRA settings
        if self.warmup_steps > self.inner_steps:
            raise ConfigError(
                f"warmup_steps ({self.warmup_steps}) must not exceed inner_steps "
                f"({self.inner_steps})"
            )
        if self.min_clients > self.max_clients:
            raise ConfigError(
                f"min_clients ({self.min_clients}) must not exceed max_clients ({self.max_clients})"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> JobSpec:
        """Build a spec from user input, rejecting unknown fields by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown hyperparameter(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig(
            kind=self.adapter,
            rank=self.lora_rank,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            target_modules=tuple(
                m.strip() for m in self.lora_target_modules.split(",") if m.strip()
            ),
        )

    def inner_loop(
        self, seed: int, *, steps: int | None = None, batch_size: int | None = None
    ) -> InnerLoopConfig:
        """A train task's inner loop (with `steps` or `batch_size` changed, for benchmarks)."""
        steps = self.inner_steps if steps is None else steps
        return InnerLoopConfig(
            steps=steps,
            batch_size=self.batch_size if batch_size is None else batch_size,
            learning_rate=float(self.inner_lr or 0.0),
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            warmup_steps=min(self.warmup_steps, steps),
            seed=seed,
        )

    def inner_steps_range(self) -> tuple[int, int]:
        """The inner steps adaptive sizing gives a task, at least and at most."""
        return (
            self.min_inner_steps or max(1, self.inner_steps // 4),
            self.max_inner_steps or min(100_000, self.inner_steps * 4),
        )

    def finishes_by_epochs(self) -> bool:
        return self.num_epochs > 0

    def update_policy(self) -> CompressionPolicy:
        """How workers encode pseudo-gradients."""
        return CompressionPolicy(
            chain=self.codec,
            small_chain=self.small_tensor_codec,
            small_elements=self.small_tensor_elements,
        )

    def broadcast_policy(self) -> CompressionPolicy:
        """How the coordinator encodes deltas between versions (small tensors exactly)."""
        return CompressionPolicy(
            chain=self.broadcast_codec,
            small_chain="fp32",
            small_elements=self.small_tensor_elements,
        )


WORK_SIZINGS = ("adaptive", "fixed")
LATE_UPDATES = ("stale", "drop")
INNER_STATES = ("task", "worker")
DATA_PLANES = ("coordinator", "hivemind")

DEFAULT_DATASETS = {
    "lm": "builtin:tiny_corpus",
    "sft": "builtin:smol_instruct",
    "dpo": "builtin:smol_prefs",
}
DEFAULT_HELDOUT = {
    "builtin:smol_instruct": "builtin:smol_instruct_heldout",
    "builtin:smol_prefs": "builtin:smol_prefs_heldout",
}

# (method, adapter) -> the inner AdamW learning rate when a job does not set one. DPO's are the
# low rates it needs (Zephyr used 5e-7 for full fine-tuning); LoRA takes about ten times more.
DEFAULT_LEARNING_RATES: dict[tuple[str, str], float] = {
    ("lm", "full"): 3e-3,
    ("sft", "full"): 2e-5,
    ("sft", "lora"): 2e-4,
    ("dpo", "full"): 5e-7,
    ("dpo", "lora"): 5e-6,
}


def default_learning_rate(method: str, adapter: str) -> float:
    try:
        return DEFAULT_LEARNING_RATES[(method, adapter)]
    except KeyError:
        raise ConfigError(f"adapter must be lora or full, got {adapter!r}") from None
