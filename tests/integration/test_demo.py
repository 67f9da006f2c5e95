"""`swarm demo --json`: the whole system as a user first meets it: SFT, then DPO from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_json_reports_an_sft_then_dpo_run_that_learned(tmp_path: Path) -> None:
    # tiny-llama is a random-init preset: the same pipeline as SmolLM2, in a minute on a CPU.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "swarm.coordinator",
            "demo",
            "--json",
            "--model",
            "tiny-llama",
            "--rounds",
            "2",
            "--inner-steps",
            "3",
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = tmp_path / "coordinator.log"
    assert result.returncode == 0, result.stderr + (log.read_text() if log.exists() else "")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, "--json prints exactly one line"
    summary = json.loads(lines[0])
    assert summary["status"] == "succeeded"
    assert (summary["model"], summary["num_clients"]) == ("tiny-llama", 2)
    assert summary["wall_s"] > 0

    sft, dpo = summary["jobs"]
    assert [sft["method"], dpo["method"]] == ["sft", "dpo"]
    assert sft["status"] == dpo["status"] == "succeeded"
    assert sft["base_model"] == "tiny-llama"
    assert dpo["base_model"] == sft["job_id"]  # DPO starts from the SFT job's merged model
    for job in (sft, dpo):
        assert job["rounds"] == 2 and job["min_clients_per_round"] == 2, job
        assert job["bytes_up"] > 0 and job["bytes_down"] > job["bytes_up"], job
        assert job["tokens"] > 0, job
        assert sorted(job["artifacts"]) == ["adapter", "merged"], job  # LoRA jobs

    # SFT: the clients measured the held-out loss before and after; it fell.
    assert sft["final_eval_metrics"]["loss"] < sft["initial_eval_metrics"]["loss"]
    assert sft["eval_loss_reduction"] > 0
    assert sft["eval_loss_reduction"] == pytest.approx(
        1 - sft["final_eval_metrics"]["loss"] / sft["initial_eval_metrics"]["loss"]
    )
    assert 0 <= sft["final_eval_metrics"]["token_accuracy"] <= 1
    # DPO: the policy starts equal to its reference, so every pair ties; training breaks the ties
    # in favour of the chosen replies.
    assert dpo["initial_eval_metrics"]["reward_accuracy"] == pytest.approx(0.5)
    assert dpo["initial_eval_metrics"]["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert dpo["final_eval_metrics"]["reward_accuracy"] > 0.5
    assert dpo["final_eval_metrics"]["reward_margin"] > 0
    assert dpo["final_eval_metrics"]["loss"] < dpo["initial_eval_metrics"]["loss"]

    assert summary["samples"], summary
    for sample in summary["samples"]:
        assert set(sample) == {"question", "expected", "before", "after"}
        assert sample["question"] and sample["expected"]
    # With a work dir, the final merged model is downloaded there as a Hugging Face folder.
    result_dir = Path(summary["result_model"])
    assert result_dir == tmp_path / "result"
    assert (result_dir / "config.json").is_file()
    assert list(result_dir.glob("*.safetensors"))
