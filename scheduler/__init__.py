"""Pure scheduling logic: job/round/task states, job specs, lease policy and round planning."""

from swarm.scheduler.jobs import (
    JobSpec,
    JobStatus,
    LeaseOutcome,
    RoundStatus,
    TaskStatus,
    check_job_move,
)
from swarm.scheduler.leases import LeasePolicy
from swarm.scheduler.rounds import num_tasks_for_round, shard_for_task, task_seed, tokens_per_task

__all__ = [
    "JobSpec",
    "JobStatus",
    "LeaseOutcome",
    "LeasePolicy",
    "RoundStatus",
    "TaskStatus",
    "check_job_move",
    "num_tasks_for_round",
    "shard_for_task",
    "task_seed",
    "tokens_per_task",
]
