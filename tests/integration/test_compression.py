"""End to end: compressed updates, broadcast deltas and error feedback across real processes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from swarm.compression import ErrorFeedback
from swarm.coordinator.demo import start_client, stop_process
from tests.integration.test_training import running_swarm

pytestmark = pytest.mark.integration


def _feedback_of(client_dir: Path, job_id: str) -> ErrorFeedback:
    return ErrorFeedback.from_bytes(
        (client_dir / "feedback" / f"{job_id}.safetensors").read_bytes()
    )


def test_cocktail_job_sends_a_fraction_of_the_bytes_and_still_learns(tmp_path: Path) -> None:
    with running_swarm(tmp_path) as swarm:
        job = swarm.wait_for_job(swarm.create_job(codec="cocktail")["id"])
        assert job["status"] == "succeeded", job
        assert job["swarm"]["eval_loss"] < job["swarm"]["initial_eval_loss"]
        rounds = swarm.rounds(job["id"])
        *training, final = rounds
        fp32_update = 4 * job["swarm"]["num_trainable_params"]
        for r in training:  # two pseudo-gradients per round, each far below fp32 size
            assert 0 < r["bytes_up"] < 2 * fp32_update / 50, r
        assert final["num_train_tasks"] == 0 and final["bytes_up"] == 0, final  # metrics only
        # Round 0 downloads the full parameters; later rounds only int8 deltas (and new shards).
        assert all(r["bytes_down"] < rounds[0]["bytes_down"] / 2 for r in rounds[1:]), rounds
        assert rounds[0]["delta_bytes"] is None and all(r["delta_bytes"] for r in rounds[1:]), (
            rounds
        )
        for i in range(2):
            assert "caught up to version 1 with 1 delta(s)" in swarm.log_of(i)
            feedback = _feedback_of(swarm.logs / f"client-{i}", job["id"])
            assert len(feedback) > 0 and feedback.norm() > 0


def test_a_restarted_client_resumes_its_residuals(tmp_path: Path) -> None:
    # A long solo wait: the survivor may not take the stopped client's task, so the round waits
    # for the restarted client, which must then train with the residual it saved.
    with running_swarm(tmp_path, env={"SWARM_SOLO_WAIT_S": "600"}) as swarm:
        # A quorum of every task: the round waits for the restarted client rather than closing
        # without it.
        # Tasks of a few seconds: client 0 is stopped within 0.2 s of finishing round 0, before
        # it can finish round 1. Its next lease comes as soon as round 0 closes, so it may
        # already hold round 1's task and hand it back (then anyone may take it); round 2's
        # fresh task is then the restarted client's.
        job = swarm.create_job(
            codec="topk:0.05+int8", num_rounds=3, round_quorum=1.0, inner_steps=60
        )
        deadline = time.monotonic() + 120
        while "round 0): loss" not in swarm.log_of(0):
            assert time.monotonic() < deadline, "client 0 never finished a task"
            time.sleep(0.2)
        assert stop_process(swarm.clients[0], signal.SIGINT) == 0
        saved = _feedback_of(swarm.logs / "client-0", job["id"])
        assert saved.norm() > 0
        with (tmp_path / "client-0-again.log").open("w") as log:
            again = start_client(swarm.target, "test-client-0", tmp_path / "client-0", log)
            try:
                finished = swarm.wait_for_job(job["id"])
            finally:
                stop_process(again)
        assert finished["status"] == "succeeded", finished
        restarted_log = (tmp_path / "client-0-again.log").read_text()
        assert "resumed error feedback" in restarted_log, restarted_log[-2000:]
