"""The hivemind side of `swarm bench peers`: real peer processes on loopback."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from swarm.coordinator.bench.compression import evaluate_version
from swarm.coordinator.bench.hivemind_peers import (
    HIVEMIND_HINT,
    HivemindRunConfig,
    require_hivemind,
    run_hivemind,
)
from swarm.coordinator.jobs import prepare_tokens
from swarm.models import build_model, preset_config


def test_the_budget_must_be_whole_epochs() -> None:
    with pytest.raises(ValueError, match="total_tokens"):
        HivemindRunConfig(peers=2, batch_size=8, seq_len=64, steps_per_epoch=4, total_tokens=5000)
    config = HivemindRunConfig(
        peers=2, batch_size=8, seq_len=64, steps_per_epoch=4, total_tokens=3 * 2 * 8 * 64 * 4
    )
    assert (config.num_epochs, config.steps_per_peer) == (3, 12)
    assert HivemindRunConfig.from_json(config.to_json()) == config


def test_without_hivemind_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "hivemind", None)  # makes `import hivemind` fail
    with pytest.raises(RuntimeError) as raised:
        require_hivemind()
    assert str(raised.value) == HIVEMIND_HINT
    with pytest.raises(RuntimeError, match="pip install 'swarmclient\\[hivemind\\]'"):
        run_hivemind(HivemindRunConfig())


def test_two_peers_train_the_budget_and_average_every_epoch(tmp_path: Path) -> None:
    pytest.importorskip("hivemind")
    config = HivemindRunConfig(
        peers=2,
        batch_size=8,
        seq_len=64,
        steps_per_epoch=4,
        total_tokens=2 * 2 * 8 * 64 * 4,  # two epochs
        compression="8bit",
        timeout_s=120.0,
        work_dir=tmp_path,
    )
    report = run_hivemind(config)

    _, heldout = prepare_tokens(config.job_spec())
    initial = build_model(preset_config(config.model), seed=config.seed)
    initial_loss = evaluate_version(initial, np.asarray(heldout, dtype=np.int64), config.seq_len)

    assert report["system"] == "hivemind"
    assert report["tokens"] == config.total_tokens
    assert report["bytes_sent"] > 0
    assert report["bytes_sent_all"] >= report["bytes_sent"]
    # The gradient all-reduces alone move at least one 8-bit copy of the model each epoch.
    assert report["bytes_sent_gradients"] >= config.num_epochs * report["num_params"]
    assert math.isfinite(report["final_eval_loss"])
    assert report["final_eval_loss"] < initial_loss - 0.1
    assert report["epochs"] == config.num_epochs
    assert report["averaged_epochs_with_all_peers"] == config.num_epochs
    # Averaged: the peers differ by 8-bit rounding only, far less than training moved them
    # (apart, trained on different shards, they would differ about as much as they moved).
    assert report["mean_param_diff"] < 0.2 * report["mean_param_change"]
    assert report["max_param_diff"] < 0.05
    assert report["wall_s"] > 0 and report["setup_s"] > 0
    assert report["compression"].startswith("hivemind uniform 8-bit")
