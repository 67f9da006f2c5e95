"""`swarm demo --json`: the whole system as a user first meets it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_json_reports_a_job_that_learned(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "swarm.coordinator",
            "demo",
            "--json",
            "--rounds",
            "3",
            "--inner-steps",
            "8",
            "--work-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr + (tmp_path / "coordinator.log").read_text()
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, "--json prints exactly one line"
    summary = json.loads(lines[0])
    assert summary["status"] == "succeeded"
    assert summary["rounds"] == 3 and summary["num_clients"] == 2
    assert summary["min_clients_per_round"] == 2
    assert summary["final_eval_loss"] < 0.8 * summary["initial_eval_loss"]
    assert summary["bytes_up"] > 0 and summary["bytes_down"] > summary["bytes_up"]
    assert summary["wall_s"] > 0
