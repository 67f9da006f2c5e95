"""`swarm bench bandwidth` at a small size: real processes behind a capped link.

A coordinator and two clients held to 8 Mbit/s each way run a short DiLoCo job through a
relay that timestamps every byte. Uploads keep to the cap on the wire, downloads keep to it as
the client reads them, and every second of a client's wall time is accounted for. (The same
harness, at full size and against an uncapped run, is `swarm bench bandwidth`.)
"""

from __future__ import annotations

from typing import Any

import pytest

from swarm.coordinator.bench.bandwidth import (
    DOWNLOAD_WINDOW_BYTES,
    BandwidthBenchConfig,
    burst_allowance_bytes,
    bursts,
    excess_bytes,
    render_tables,
    run_bench,
)

pytestmark = pytest.mark.integration

RATE_MBPS = 8.0  # a 0.8 MB int8 update takes about 0.8 s: long enough to time
SMALL = BandwidthBenchConfig(
    num_clients=2,
    rate_mbps=RATE_MBPS,
    compare_uncapped=False,
    hidden_size=128,  # 0.8M parameters: a 3.2 MB first download, 0.8 MB each way per round
    hyperparameters={
        "num_rounds": 3,
        "inner_steps": 10,
        "seq_len": 64,
        "eval_examples": 16,
        "codec": "int8",
        "broadcast_codec": "int8+zstd",
    },
    timeout_s=300.0,
)
UPDATE_BYTES = 700_000


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return run_bench(SMALL)


def test_the_job_runs_and_every_client_uploads_each_round(report: dict[str, Any]) -> None:
    run = report["capped"]
    assert run["status"] == "succeeded", run
    assert run["rounds"] == 3 and len(run["clients"]) == 2, run
    for client in run["clients"]:
        assert client["tasks"] >= 3, client  # one train task per round, maybe evaluations
        assert client["payload_bytes_up"] >= 3 * UPDATE_BYTES, client
        assert client["bytes_up"] >= client["payload_bytes_up"], client  # framing on the wire
        assert client["bytes_down"] >= client["payload_bytes_down"] > 3 * UPDATE_BYTES, client


def test_uploads_keep_to_the_cap_on_the_wire(report: dict[str, Any]) -> None:
    for client in report["capped"]["clients"]:
        assert client["excess_up_bytes"] <= burst_allowance_bytes(RATE_MBPS), client
        # Paced, not merely small: an update takes most of the time the cap says it must.
        assert 0.5 * RATE_MBPS <= client["upload_wire_mbps"] <= 1.2 * RATE_MBPS, client


def test_downloads_keep_to_the_cap_as_the_client_reads_them(report: dict[str, Any]) -> None:
    for client in report["capped"]["clients"]:
        assert client["fetches_timed"] >= 3, client  # the client's log lines were found
        assert 0.25 * RATE_MBPS <= client["download_client_mbps"] <= RATE_MBPS, client


def test_downloads_keep_to_the_cap_on_the_wire(report: dict[str, Any]) -> None:
    """A capped client's channel runs without HTTP/2's bandwidth-delay probe: with it, the
    window grew until whole blobs crossed at once (6 to 9.5 MB at the bench's full size)."""
    for client in report["capped"]["clients"]:
        assert client["excess_down_bytes"] <= DOWNLOAD_WINDOW_BYTES, client


def test_utilization_accounts_for_every_second(report: dict[str, Any]) -> None:
    run = report["capped"]
    for client in run["clients"]:
        for window in (client["steady"], client["whole_job"]):
            assert 0.0 < window["utilization"] <= 1.0, window
            parts = ("compute_s", "fetch_s", "upload_s", "other_in_task_s")
            parts += ("barrier_s", "lease_lag_s")
            assert sum(window[p] for p in parts) == pytest.approx(window["wall_s"], abs=0.1)
            assert min(window[p] for p in parts if p != "other_in_task_s") >= 0.0, window
            # Each round moves an update each way at 8 Mbit/s: about 1.6 s not computing.
            assert window["overhead_per_round_s"] >= 1.2, window
    assert run["steady_utilization_min"] <= run["steady_utilization_mean"] <= 1.0


def test_the_report_has_targets_and_tables(report: dict[str, Any]) -> None:
    names = [t["name"] for t in report["targets"]]
    assert names == ["utilization", "upload_cap", "download_cap_client", "download_cap_wire"]
    assert all({"name", "target", "value", "met"} <= t.keys() for t in report["targets"])
    targets = {t["name"]: t for t in report["targets"]}
    assert targets["upload_cap"]["met"] and targets["download_cap_client"]["met"], targets
    text = render_tables(report)
    assert "| bw-0 |" in text and "| bw-1 |" in text and "uncapped" not in text


def test_excess_bytes_is_the_burst_beyond_the_rate() -> None:
    rate_mbps = 8.0  # 1 MB/s
    paced = [(i * 0.05, 50_000) for i in range(40)]  # 2 MB over 2 s in 50 kB steps
    assert excess_bytes(paced, rate_mbps) == pytest.approx(50_000, abs=1)  # a step ahead
    at_once = [(0.0, 2_000_000)]
    assert excess_bytes(at_once, rate_mbps) == 2_000_000
    assert [b.num_bytes for b in bursts([*paced, (10.0, 100_000)])] == [2_000_000, 100_000]
    assert bursts([(0.0, 200), (0.1, 300)]) == []  # control frames: no transfer
