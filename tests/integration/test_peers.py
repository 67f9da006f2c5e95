"""`swarm bench peers`: hivemind peers and the swarm's processes train the same job on loopback.

A short run of both sides (the bench's `--quick`): both learn, both count their bytes, and the
report compares them on the same tokens and the same held-out evaluation. (The same harness, at
full size, is `swarm bench peers`; its numbers are in docs/benchmarks.md.)
"""

from __future__ import annotations

import math
import socket
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from swarm.coordinator.bench.hivemind_peers import HIVEMIND_HINT
from swarm.coordinator.bench.peers import (
    QUICK,
    PeersBenchConfig,
    render_tables,
    run_bench,
)
from swarm.coordinator.bench.relay import Relay
from swarm.coordinator.jobs import prepare_tokens

pytestmark = pytest.mark.integration


def test_both_sides_get_the_same_job_and_budget() -> None:
    config = PeersBenchConfig(peers=3, rounds=4, inner_steps=30, steps_per_epoch=6)
    hivemind = config.hivemind_config()
    spec = config.job_spec()
    assert hivemind.total_tokens == config.total_tokens == 4 * 3 * 30 * 8 * 64
    assert hivemind.steps_per_peer == spec.num_rounds * spec.inner_steps
    assert (spec.work_sizing, spec.round_quorum, spec.min_clients, spec.max_clients) == (
        "fixed",
        1.0,
        3,
        3,
    )
    # The same shards and held-out tail on both sides.
    swarm_shards, swarm_heldout = prepare_tokens(spec)
    hivemind_shards, hivemind_heldout = prepare_tokens(hivemind.job_spec())
    assert [len(s) for s in swarm_shards] == [len(s) for s in hivemind_shards]
    assert (swarm_heldout == hivemind_heldout).all()


def test_bad_configs_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="steps_per_epoch must divide"):
        PeersBenchConfig(rounds=2, inner_steps=10, steps_per_epoch=3)
    with pytest.raises(ValueError, match="peers"):
        PeersBenchConfig(peers=1)
    with pytest.raises(ValueError, match="hivemind_compression"):
        PeersBenchConfig(hivemind_compression="int4")
    with pytest.raises(ValueError, match="codec"):
        PeersBenchConfig(codec="no-such-codec")


def test_without_hivemind_the_bench_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "hivemind", None)  # makes `import hivemind` fail
    with pytest.raises(RuntimeError) as raised:
        run_bench(QUICK)
    assert str(raised.value) == HIVEMIND_HINT


def test_the_relay_counts_every_byte_each_way() -> None:
    server = socket.create_server(("127.0.0.1", 0))

    def echo_twice() -> None:
        conn, _ = server.accept()
        with conn:
            received = 0
            while received < 100_000:
                data = conn.recv(1 << 16)
                received += len(data)
                conn.sendall(data + data)

    thread = threading.Thread(target=echo_twice, daemon=True)
    thread.start()
    relay = Relay(server.getsockname()[1])
    try:
        with socket.create_connection(("127.0.0.1", relay.port)) as client:
            client.sendall(b"x" * 100_000)
            received = 0
            while received < 200_000:
                received += len(client.recv(1 << 16))
        thread.join(timeout=10)
        # The relay counts a chunk after forwarding it: the last count may trail the bytes.
        deadline = time.monotonic() + 10
        while relay.snapshot()["to_clients"] < 200_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert relay.snapshot() == {"to_coordinator": 100_000, "to_clients": 200_000}
        assert relay.num_connections == 1
    finally:
        relay.close()
        server.close()


def test_both_sides_train_the_same_tokens_and_count_their_bytes(tmp_path: Path) -> None:
    pytest.importorskip("hivemind")
    config = replace(QUICK, work_dir=tmp_path)
    report = run_bench(config)
    hivemind, swarm = report["hivemind"], report["swarm"]

    assert hivemind["tokens"] == swarm["tokens"] == config.total_tokens
    assert swarm["rounds"] == config.rounds and swarm["clients_per_round"] == [2, 2]
    for side in (hivemind, swarm):
        assert math.isfinite(side["final_eval_loss"])
        assert side["final_eval_loss"] < report["initial_eval_loss"] - 0.3, side
        assert side["wall_s"] > 0
    # Evaluated the same way: the local evaluation of the downloaded result is the swarm's own.
    assert swarm["final_eval_loss"] == pytest.approx(swarm["swarm_eval_loss"], rel=1e-6)
    assert swarm["swarm_initial_eval_loss"] == pytest.approx(report["initial_eval_loss"])

    # Bytes: positive, and the wire carries at least the payload the coordinator recorded.
    assert hivemind["bytes_sent_all"] >= hivemind["bytes_sent"] > 0
    assert (
        swarm["bytes_sent"] == swarm["bytes_sent_by_clients"] + swarm["bytes_sent_by_coordinator"]
    )
    assert swarm["bytes_sent_by_clients"] >= swarm["payload_bytes_up"] > 0
    assert swarm["bytes_sent_by_coordinator"] >= swarm["payload_bytes_down"] > 0
    # ... and little more than that: RPC framing and control messages are a small share.
    payload = swarm["payload_bytes_up"] + swarm["payload_bytes_down"]
    assert swarm["bytes_sent"] < 1.05 * payload + 100_000
    # An int4 pseudo-gradient is at least half a byte per parameter.
    num_params = hivemind["num_params"]
    assert swarm["payload_bytes_up"] >= config.rounds * config.peers * num_params / 2
    assert report["bytes_ratio"] == pytest.approx(hivemind["bytes_sent_all"] / swarm["bytes_sent"])

    assert [t["name"] for t in report["targets"]] == ["bytes", "loss", "wall time", "same tokens"]
    assert all(set(t) == {"name", "target", "value", "met"} for t in report["targets"])
    assert report["targets"][-1]["met"]
    table = render_tables(report)
    assert "| bytes sent (counted) |" in table and "| target | value | met |" in table
