"""`swarm bench coordinator`: a real coordinator under simulated workers reports what it promises.

The simulated workers speak the real protocol, so a cycle only counts if the coordinator
accepted the result: rounds close and every RPC answers without error.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from swarm.coordinator.bench.load import RPCS, LoadBenchConfig, render_tables, run_bench

pytestmark = pytest.mark.integration


def assert_served(run: dict[str, object], workers: int) -> None:
    assert run["workers"] == workers
    assert run["cycles_per_s"] > 0 and run["results_accepted"] > 0, run  # type: ignore[operator]
    assert run["coordinator_cpu_ms_per_cycle"] > 0, run  # type: ignore[operator]
    assert run["rounds_closed"] >= 1, run  # type: ignore[operator]
    rpcs = run["rpcs"]
    assert isinstance(rpcs, dict)
    for rpc in RPCS:
        assert rpcs[rpc]["errors"] == 0, (rpc, rpcs[rpc])
        assert 0 < rpcs[rpc]["p50_ms"] <= rpcs[rpc]["p99_ms"], (rpc, rpcs[rpc])


def test_quick_coordinator_bench_prints_json() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "swarm.coordinator", "bench", "coordinator", "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    [run] = report["runs"]
    assert run["database"] == "sqlite"
    assert_served(run, workers=40)
    assert report["targets"] == []  # targets are judged at 1,000 workers only
    assert "task cycles/s" in render_tables(report)


@pytest.mark.postgres
def test_the_coordinator_bench_runs_on_postgresql(postgres_url: str) -> None:
    del postgres_url  # the bench makes (and drops) its own database; this checks the server is up
    report = run_bench(
        LoadBenchConfig(
            workers=(20,),
            databases=("postgresql",),
            workers_per_job=10,
            duration_s=4.0,
            warmup_s=2.0,
        )
    )
    [run] = report["runs"]
    assert run["database"] == "postgresql"
    assert_served(run, workers=20)
