"""Train tasks as a coordinator would lease them, for client tests that need no coordinator."""

from __future__ import annotations

from swarm.protocol import messages as m


def train_task(
    *,
    job_id: str,
    version: int,
    params_sha256: str,
    policy: m.CompressionPolicy,
    seed: int = 0,
    deltas: list[m.ParamDelta] | None = None,
) -> m.Task:
    """A task for `version` whose update and broadcast both use `policy`."""
    return m.Task(
        task_id=f"task-{version}",
        job_id=job_id,
        round=version,
        version=version,
        lease_deadline_unix_s=0.0,
        max_result_bytes=0,
        train=m.TrainTask(
            model_config_sha256="",
            params_sha256=params_sha256,
            tokens_sha256="",
            inner_steps=1,
            batch_size=1,
            seq_len=8,
            learning_rate=0.0,
            weight_decay=0.0,
            max_grad_norm=0.0,
            warmup_steps=0,
            seed=seed,
            update_policy=policy,
            broadcast_policy=policy,
            param_deltas=deltas or [],
        ),
    )
