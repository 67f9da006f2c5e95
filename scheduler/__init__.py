"""Pure scheduling logic: job states and specs, leases, data spans, work sizing, placement, the
queue and the credits ledger's rules."""

from swarm.scheduler.credits import (
    CONSUMED,
    MICRO_PER_CREDIT,
    MINT,
    RESEARCH_POOL,
    ResearchShare,
    account_kind,
    check_account,
    format_credits,
    micro_credits,
    pending_account,
    user_account,
    worker_account,
)
from swarm.scheduler.data import Span, covers_exactly, epoch_order, span_indices
from swarm.scheduler.jobs import (
    JobSpec,
    JobStatus,
    LeaseOutcome,
    RoundStatus,
    TaskStatus,
    check_job_move,
)
from swarm.scheduler.leases import LeasePolicy
from swarm.scheduler.placement import JobDemand, WorkerInfo, assign_workers
from swarm.scheduler.queue import Admission, QueuedJob, RunningJob, admit, queue_order
from swarm.scheduler.rounds import (
    max_tokens_per_task,
    num_tasks_for_round,
    shard_for_task,
    task_seed,
)

__all__ = [
    "CONSUMED",
    "MICRO_PER_CREDIT",
    "MINT",
    "RESEARCH_POOL",
    "Admission",
    "JobDemand",
    "JobSpec",
    "JobStatus",
    "LeaseOutcome",
    "LeasePolicy",
    "QueuedJob",
    "ResearchShare",
    "RoundStatus",
    "RunningJob",
    "Span",
    "TaskStatus",
    "WorkerInfo",
    "account_kind",
    "admit",
    "assign_workers",
    "check_account",
    "check_job_move",
    "covers_exactly",
    "epoch_order",
    "format_credits",
    "max_tokens_per_task",
    "micro_credits",
    "num_tasks_for_round",
    "pending_account",
    "queue_order",
    "shard_for_task",
    "span_indices",
    "task_seed",
    "user_account",
    "worker_account",
]
