"""Real processes killed mid-job: clients with SIGKILL every round, the coordinator once.

The job still succeeds, every epoch of every shard is consumed exactly once, no result counts
twice and the ledger balances, on SQLite and on PostgreSQL. (The same harness, at full size,
is `swarm bench churn`.)
"""

from __future__ import annotations

from typing import Any

import pytest

from swarm.coordinator.bench.churn import ChurnBenchConfig, run_once

pytestmark = pytest.mark.integration

SEQ_LEN = 128
SMALL = ChurnBenchConfig(
    num_clients=3,
    churn_fraction=0.34,  # one client killed every round
    hyperparameters={
        "num_epochs": 2,
        "inner_steps": 8,
        "batch_size": 8,
        "seq_len": SEQ_LEN,  # about six rounds of three tasks
        "num_shards": 3,
        "eval_examples": 16,
    },
    timeout_s=300.0,
)


def assert_survived(result: dict[str, Any]) -> None:
    assert result["status"] == "succeeded", result
    assert result["clients_killed"] >= 2 and result["coordinator_kills"] == 1, result
    assert all(result["checks"].values()), result["checks"]
    assert result["applied_tokens"] == 2 * result["train_samples_per_epoch"] * SEQ_LEN, result
    assert result["final_eval_loss"] < result["initial_eval_loss"] * 0.8, result


def test_a_job_survives_killed_clients_and_a_killed_coordinator_on_sqlite() -> None:
    assert_survived(run_once(SMALL, churn=True))


@pytest.mark.postgres
def test_a_job_survives_killed_clients_and_a_killed_coordinator_on_postgres(
    postgres_url: str,
) -> None:
    result = run_once(ChurnBenchConfig(**{**SMALL.__dict__, "db": postgres_url}), churn=True)
    assert_survived(result)


@pytest.mark.postgres
def test_a_job_survives_one_of_two_coordinators_killed_for_good(postgres_url: str) -> None:
    """Two coordinators on one PostgreSQL database and one blob directory; clients list both.
    One is SIGKILLed mid-job and stays dead: the other takes over its clients, leases and any
    round it was aggregating, and the job finishes with nothing lost or counted twice."""
    config = ChurnBenchConfig(
        **{**SMALL.__dict__, "db": postgres_url, "coordinators": 2, "churn_fraction": 0.0}
    )
    result = run_once(config, churn=True)
    assert result["status"] == "succeeded", result
    assert result["coordinator_kills"] == 1 and result["clients_killed"] == 0, result
    assert all(result["checks"].values()), result["checks"]
    assert result["applied_tokens"] == 2 * result["train_samples_per_epoch"] * SEQ_LEN, result
    assert result["workers_registered"] == 3, result  # failing over is not joining again
    assert result["final_eval_loss"] < result["initial_eval_loss"] * 0.8, result


def test_several_coordinators_need_a_shared_postgresql_database() -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        ChurnBenchConfig(coordinators=2)
