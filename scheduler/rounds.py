"""Round planning: how many train tasks a round gets, which shard and seed each one uses."""

from __future__ import annotations

import hashlib

from swarm.scheduler.jobs import JobSpec


def num_tasks_for_round(spec: JobSpec, num_active_workers: int) -> int:
    """One task per active worker, within the job's [min_clients, max_clients]."""
    return max(spec.min_clients, min(spec.max_clients, num_active_workers))


def shard_for_task(first_task_number: int, task_index: int, num_shards: int) -> int:
    """A task's shard before its data span is cut (spread the shards over a round's tasks)."""
    return (first_task_number + task_index) % num_shards


def task_seed(job_seed: int, round_index: int, task_index: int) -> int:
    """A 63-bit seed unique to (job seed, round, task), stable across machines."""
    digest = hashlib.sha256(f"{job_seed}/{round_index}/{task_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def max_tokens_per_task(spec: JobSpec, num_samples: int | None = None) -> int:
    """Tokens a train task of `num_samples` samples processes (default: `inner_steps` full
    batches): exactly this for text jobs, at most this for chat data (sequences are as long as
    their example; DPO runs two per pair)."""
    if num_samples is None:
        num_samples = spec.inner_steps * spec.batch_size
    return num_samples * spec.seq_len * (2 if spec.method == "dpo" else 1)
