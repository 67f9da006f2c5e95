"""`swarm bench bandwidth`: how much of a volunteer's time goes to computing behind a capped link.

A real coordinator process and real `swarmclient join` processes on loopback run a DiLoCo job
twice: once with every client held to `--max-upload-mbps` and `--max-download-mbps` (20 Mbit/s
each way: the client's token bucket), once uncapped for comparison. Between each client and
the coordinator sits a relay in this process that timestamps every byte it carries, so the caps
are checked on the wire, not taken on trust: as the burst beyond the rate (the least bucket
depth the traffic keeps to the rate with), against what the client's own bucket allows.

Compute utilization of a client is the time it spent computing (the `compute_s` its accepted
results report: inner-loop training and held-out evaluation) over its wall time. Everything
else counts against it: waiting for a lease while the rest of the round finishes (the round
barrier) or for the next round's tasks, downloading and rebuilding parameters, encoding and
uploading the update. Two windows are reported:

- steady rounds: from the opening of round 1 to the close of the last training round, the
  regime of a long job; the target applies to it;
- whole job: from the client's first lease, so it includes the first, full download of the
  model.

Time without compute is split into fetching (download and rebuilding the version, from the
client's log), uploading (the wire), the rest of a task (encoding, the submission's round trip),
the round barrier (from a client's last result to the round's close) and the lease lag (from
the close to the client's next lease, which the coordinator holds open until the round opens).

The model is a random-init Llama written to the coordinator's model catalog before it starts,
sized so that an update is megabytes (3M parameters by default: 1.7 MB at int4, the default
codec, 3.3 MB at int8). Utilization
depends on compute per round as much as on the link, so the report also gives each client's
seconds without compute per round: rounds need nine times that in compute for 90%.

Targets: mean compute utilization of the clients at least 90% in steady rounds at 20 Mbit/s;
uploads and downloads within the cap on the wire, and downloads within it as the client reads.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from swarm.coordinator.bench import targets_table
from swarm.coordinator.bench.churn import _request
from swarm.coordinator.bench.relay import RELAY_READ_BYTES, Relay
from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.catalog import ModelCatalog
from swarm.coordinator.demo import start_client, start_coordinator, stop_process
from swarm.coordinator.storage import Database, Lease, Task, sqlite_url
from swarm.models import build_model
from swarm.models.chat import byte_chat_tokenizer
from swarm.models.sources import LoadedModel, model_config_dict, preset_model_config

UTILIZATION_TARGET = 0.90
TARGET_RATE_MBPS = 20.0

JOB: dict[str, Any] = {
    "method": "lm",
    "num_rounds": 4,
    "inner_steps": 50,
    "batch_size": 8,
    "seq_len": 128,
    "codec": "int4",
    "broadcast_codec": "int4+zstd",
    "eval_examples": 64,
    "seed": 0,
}
"""Four DiLoCo rounds of 50-step tasks: 25 s or more of compute per task for four clients
sharing two CPU cores, against an int4 update of about 1.7 MB (0.7 s at 20 Mbit/s) each way.
int4 is what a job on 20 Mbit/s links would choose: it trains level with int8 here (train loss
2.0248 against 2.0264 after four rounds) at half the bytes; `--codec int8` measures int8."""

BUCKET_BURST_S = 0.05
"""A client's token bucket holds this many seconds of its rate (`TokenBucket`'s default)."""
GAP_S = 0.25
"""Bytes on the wire closer together than this belong to one transfer."""
CONTROL_BYTES = 1024
"""Pieces smaller than this on the wire are control frames (heartbeats, acknowledgements)."""
MIN_TRANSFER_BYTES = 64 * 1024
"""Less data than this in a burst is not a transfer worth timing."""


@dataclass(frozen=True, kw_only=True)
class BandwidthBenchConfig:
    num_clients: int = 4
    rate_mbps: float = TARGET_RATE_MBPS
    """Upload and download cap of every client, in megabits per second."""
    compare_uncapped: bool = True
    """Also run the same job without caps."""
    hidden_size: int = 256
    num_layers: int = 4
    """The random-init Llama the job trains (256 x 4: 3.0M parameters, heads of 64)."""
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """Overrides of `JOB`."""
    threads_per_client: int = 1
    timeout_s: float = 1800.0
    work_dir: Path | None = None
    """Keep the logs and databases of the runs here (default: a temporary folder)."""

    def __post_init__(self) -> None:
        if not 1 <= self.num_clients <= 16:
            raise ValueError(f"num_clients must be in [1, 16], got {self.num_clients}")
        if not 0.01 <= self.rate_mbps <= 10_000:
            raise ValueError(f"rate_mbps must be in [0.01, 10000], got {self.rate_mbps}")
        if not 64 <= self.hidden_size <= 2048 or self.hidden_size % 64:
            raise ValueError(
                f"hidden_size must be a multiple of 64 in [64, 2048], got {self.hidden_size}"
            )
        if not 1 <= self.num_layers <= 32:
            raise ValueError(f"num_layers must be in [1, 32], got {self.num_layers}")
        if not 1 <= self.threads_per_client <= 64:
            raise ValueError(
                f"threads_per_client must be in [1, 64], got {self.threads_per_client}"
            )
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")

    @property
    def model_name(self) -> str:
        return f"bench-llama-{self.hidden_size}x{self.num_layers}"

    def job(self) -> dict[str, Any]:
        return {**JOB, **self.hyperparameters}


QUICK = BandwidthBenchConfig(
    num_clients=2,
    compare_uncapped=False,
    hidden_size=128,
    hyperparameters={"num_rounds": 3, "inner_steps": 10, "seq_len": 64, "eval_examples": 16},
)


# -- the wire -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Burst:
    """Consecutive bytes on the wire in one direction: one transfer."""

    began: float
    ended: float
    num_bytes: int

    @property
    def duration_s(self) -> float:
        return self.ended - self.began


def bursts(events: list[tuple[float, int]], gap_s: float = GAP_S) -> list[Burst]:
    """The transfers in a direction's (time, bytes) events: pieces of data closer than `gap_s`
    (control frames, under `CONTROL_BYTES`, left out), of `MIN_TRANSFER_BYTES` or more in all.
    A burst starts at its first piece, so its rate slightly overstates the link's."""
    found: list[Burst] = []
    run: list[tuple[float, int]] = []
    for event in sorted(e for e in events if e[1] >= CONTROL_BYTES):
        if run and event[0] - run[-1][0] > gap_s:
            found.append(Burst(run[0][0], run[-1][0], sum(n for _, n in run)))
            run = []
        run.append(event)
    if run:
        found.append(Burst(run[0][0], run[-1][0], sum(n for _, n in run)))
    return [b for b in found if b.num_bytes >= MIN_TRANSFER_BYTES]


def excess_bytes(events: list[tuple[float, int]], rate_mbps: float) -> int:
    """The least token-bucket depth at which `events` keep to `rate_mbps`: the most bytes that
    passed in any stretch of time beyond what the rate allows in it."""
    rate_bytes_s = rate_mbps * 1e6 / 8
    worst = 0.0
    lowest = float("inf")  # of (bytes before piece i) - rate * (time of piece i), over i <= j
    total = 0
    for time_s, num_bytes in sorted(events):
        lowest = min(lowest, total - rate_bytes_s * time_s)
        total += num_bytes
        worst = max(worst, total - rate_bytes_s * time_s - lowest)
    return int(worst)


DOWNLOAD_WINDOW_BYTES = 1_600_000
"""What may cross the wire ahead of a client that paces its reads: HTTP/2's flow-control
window plus the kernel buffers of the relay's and the client's sockets (about 1.3 MB measured).
A fixed amount per stream, not a share of the blob: the client's channel runs without HTTP/2's
bandwidth-delay probe, which otherwise widens the window until whole blobs cross at once."""


def burst_allowance_bytes(rate_mbps: float) -> int:
    """The burst a client held to `rate_mbps` may show on the wire: its bucket (`BUCKET_BURST_S`
    of the rate), one upload chunk (the transport cuts `rate / 20`) and one relay read."""
    rate_bytes_s = rate_mbps * 1e6 / 8
    return int(rate_bytes_s * (BUCKET_BURST_S + 1 / 20)) + RELAY_READ_BYTES


# -- one run ------------------------------------------------------------------------------


def add_model(data_dir: Path, config: BandwidthBenchConfig) -> str:
    """Write the bench's random-init Llama into the coordinator's catalog; return its name."""
    fields = preset_model_config("tiny-llama", chat=True)
    fields |= {
        "hidden_size": config.hidden_size,
        "intermediate_size": config.hidden_size * 8 // 3 // 16 * 16,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.hidden_size // 64,
        "num_key_value_heads": config.hidden_size // 64,
    }
    model = build_model(fields, seed=0)
    catalog = ModelCatalog(data_dir / "models", BlobStore(data_dir / "blobs"))
    catalog.add(
        LoadedModel(
            name=config.model_name,
            source="bench (random init)",
            config=model_config_dict(model),
            model=model,
            tokenizer=byte_chat_tokenizer(),
        )
    )
    return config.model_name


def run_once(
    config: BandwidthBenchConfig, *, rate_mbps: float, say: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """One run of the job with every client capped at `rate_mbps` (0: uncapped)."""
    with ExitStack() as stack:
        if config.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swarm-bw-")))
        else:
            work = config.work_dir / (f"capped-{rate_mbps:g}mbps" if rate_mbps else "uncapped")
            work.mkdir(parents=True, exist_ok=True)
        data_dir = work / "coordinator"
        model = add_model(data_dir, config)
        log = stack.enter_context((work / "coordinator.log").open("w"))
        coordinator, ready = start_coordinator(data_dir, log)
        stack.callback(stop_process, coordinator)
        relays = [Relay(ready["grpc_port"]) for _ in range(config.num_clients)]
        for relay in relays:
            stack.callback(relay.close)
        caps = (
            {"SWARM_MAX_UPLOAD_MBPS": f"{rate_mbps:g}", "SWARM_MAX_DOWNLOAD_MBPS": f"{rate_mbps:g}"}
            if rate_mbps
            else {}
        )
        clients = []
        for index, relay in enumerate(relays):
            client_log = stack.enter_context((work / f"client-{index}.log").open("w"))
            clients.append(
                start_client(
                    relay.address,
                    f"bw-{index}",
                    work / f"client-{index}",
                    client_log,
                    threads=config.threads_per_client,
                    extra_env=caps,
                )
            )
            stack.callback(stop_process, clients[-1])
        http = stack.enter_context(
            httpx.Client(base_url=f"http://127.0.0.1:{ready['http_port']}", timeout=30.0)
        )
        hyperparameters = {
            **config.job(),
            "min_clients": config.num_clients,
            "max_clients": config.num_clients,
        }
        job = _request(
            http,
            "POST",
            "/v1/fine_tuning/jobs",
            json={"model": model, "hyperparameters": hyperparameters},
        )
        job_id = job["id"]
        deadline = time.monotonic() + config.timeout_s
        reported = -1
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} did not finish in {config.timeout_s:.0f}s")
            time.sleep(0.5)
            job = _request(http, "GET", f"/v1/fine_tuning/jobs/{job_id}")
            closed = [
                r
                for r in _request(http, "GET", f"/v1/swarm/jobs/{job_id}/rounds")["data"]
                if r["closed_at"] and r["num_train_tasks"]
            ]
            if closed and closed[-1]["round"] > reported:
                reported = closed[-1]["round"]
                say(f"  round {reported} closed: train loss {closed[-1]['train_loss']:.4f}")
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
        rounds = _request(http, "GET", f"/v1/swarm/jobs/{job_id}/rounds")["data"]
        tasks = _request(http, "GET", f"/v1/swarm/jobs/{job_id}/tasks")["data"]
        workers = _request(http, "GET", "/v1/swarm/workers")["data"]
        leases = _leases(data_dir, job_id)
        for client in clients:
            stop_process(client)
        names = {w["id"]: w["name"] for w in workers}
        traces = [
            ClientTrace(
                name=f"bw-{index}",
                up=relay.up,
                down=relay.down,
                fetch_s=fetch_seconds(work / f"client-{index}.log"),
            )
            for index, relay in enumerate(relays)
        ]
        leases = [{**lease, "client": names.get(lease["worker_id"], "")} for lease in leases]
        return measure(
            rate_mbps=rate_mbps, job=job, rounds=rounds, tasks=tasks, leases=leases, traces=traces
        )


def _leases(data_dir: Path, job_id: str) -> list[dict[str, Any]]:
    """Every lease of the job's tasks, read from the coordinator's database."""
    fields = ("task_id", "worker_id", "leased_at", "ended_at", "outcome", "bytes_up", "bytes_down")
    db = Database(sqlite_url(data_dir))
    try:
        with db.read() as session:
            rows = session.execute(
                select(Lease, Task.kind)
                .join(Task, Task.id == Lease.task_id)
                .where(Task.job_id == job_id)
                .order_by(Lease.leased_at)
            ).all()
            return [
                {"kind": kind, **{f: getattr(lease, f) for f in fields}} for lease, kind in rows
            ]
    finally:
        db.dispose()


def fetch_seconds(log: Path) -> dict[str, float]:
    """Per task, the seconds the client spent fetching and rebuilding its inputs, from the
    line it logs once a task is done (`fetch 1.2s, compute 30.4s`)."""
    found = {}
    for line in log.read_text(errors="replace").splitlines():
        match = _TASK_DONE.search(line)
        if match:
            found[match["task"]] = float(match["fetch"])
    return found


_TASK_DONE = re.compile(r"task (?P<task>\S+) \(job [^)]*\): .*fetch (?P<fetch>[\d.]+)s, compute")


@dataclass(frozen=True)
class ClientTrace:
    """What the bench saw of one client: its bytes on the wire and its fetch times."""

    name: str
    up: list[tuple[float, int]]
    down: list[tuple[float, int]]
    fetch_s: dict[str, float]


# -- what a run measured ------------------------------------------------------------------


def measure(
    *,
    rate_mbps: float,
    job: dict[str, Any],
    rounds: list[dict[str, Any]],
    tasks: list[dict[str, Any]],
    leases: list[dict[str, Any]],
    traces: list[ClientTrace],
) -> dict[str, Any]:
    """Per client: compute, wall time and what filled the rest, bytes and rates."""
    training = [r for r in rounds if r["num_train_tasks"]]
    closes = sorted(r["closed_at"] for r in training)
    train_end = closes[-1]
    steady_start = closes[0] if len(closes) > 1 else None  # round 1 opens as round 0 closes
    compute = {
        t["id"]: float((t["metrics"] or {}).get("compute_s", 0.0))
        for t in tasks
        if t["status"] == "accepted"
    }
    clients = []
    for trace in traces:
        mine = [lease for lease in leases if lease["client"] == trace.name]
        first = min((lease["leased_at"] for lease in mine), default=train_end)
        whole = _window(trace, mine, compute, closes, first, train_end)
        steady = _window(trace, mine, compute, closes, steady_start or first, train_end)
        fetched = [lease for lease in mine if lease["task_id"] in trace.fetch_s]
        fetch_s = sum(trace.fetch_s[lease["task_id"]] for lease in fetched)
        # The log rounds fetch times to 0.1 s, and a bucket may start a fetch holding
        # BUCKET_BURST_S of tokens: 0.1 s more per fetch keeps either from passing for speed.
        fetch_s += 0.1 * len(fetched)
        downloaded = sum(lease["bytes_down"] for lease in fetched)
        clients.append(
            {
                "client": trace.name,
                "tasks": sum(lease["outcome"] == "submitted" for lease in mine),
                "steady": steady,
                "whole_job": whole,
                "bytes_up": sum(n for _, n in trace.up),
                "bytes_down": sum(n for _, n in trace.down),
                "payload_bytes_up": sum(lease["bytes_up"] for lease in mine),
                "payload_bytes_down": sum(lease["bytes_down"] for lease in mine),
                "fetches_timed": len(fetched),
                "download_client_mbps": round(downloaded * 8e-6 / fetch_s, 3) if fetched else None,
                "upload_wire_mbps": _rate_mbps(bursts(trace.up)),
                "excess_up_bytes": excess_bytes(trace.up, rate_mbps) if rate_mbps else None,
                "excess_down_bytes": excess_bytes(trace.down, rate_mbps) if rate_mbps else None,
            }
        )
    return {
        "rate_mbps": rate_mbps,
        "status": job["status"],
        "job_id": job["id"],
        "rounds": len(training),
        "train_wall_s": round(train_end - min(r["opened_at"] for r in training), 1),
        **{
            f"{window}_utilization_{stat}": round(
                fn([c[window]["utilization"] for c in clients]), 4
            )
            for window in ("steady", "whole_job")
            for stat, fn in (("mean", statistics.fmean), ("min", min))
        },
        "round_s": [round(r["closed_at"] - r["opened_at"], 1) for r in training],
        "delta_bytes": [r["delta_bytes"] for r in training if r["delta_bytes"]],
        "clients": clients,
    }


def _window(
    trace: ClientTrace,
    leases: list[dict[str, Any]],
    compute: dict[str, float],
    closes: list[float],
    start: float,
    end: float,
) -> dict[str, float]:
    """Where one client's time from `start` to `end` went.

    Holding a task: computing (what its accepted result reports), fetching and rebuilding
    inputs (its log), uploading (the wire), and the rest (encoding, the submission's round
    trip). Holding none: `barrier_s` until a round closes (others still at work), then
    `lease_lag_s` until the client asks again and gets the next round's task. A task counts
    in the window it was leased in."""
    wall = max(end - start, 1e-9)
    inside = sorted(
        (lease for lease in leases if start <= lease["leased_at"] < end),
        key=lambda lease: lease["leased_at"],
    )
    held = computing = fetching = barrier = lag = 0.0
    free_since = start
    for lease in [*inside, None]:
        free_until = end if lease is None else lease["leased_at"]
        if free_until > free_since:
            closed = [c for c in closes if free_since <= c < free_until]
            barrier += (closed[-1] if closed else free_until) - free_since
            lag += free_until - closed[-1] if closed else 0.0
        if lease is None:
            break
        free_since = min(lease["ended_at"] or end, end)
        held += free_since - lease["leased_at"]
        if lease["outcome"] == "submitted":
            computing += compute.get(lease["task_id"], 0.0)
        fetching += trace.fetch_s.get(lease["task_id"], 0.0)
    uploading = _busy_s(bursts(trace.up), start, end)
    num_rounds = sum(lease["kind"] == "train" for lease in inside)
    return {
        "wall_s": round(wall, 2),
        "compute_s": round(computing, 2),
        "utilization": round(computing / wall, 4),
        "fetch_s": round(fetching, 2),
        "upload_s": round(uploading, 2),
        "other_in_task_s": round(held - computing - fetching - uploading, 2),
        "barrier_s": round(barrier, 2),
        "lease_lag_s": round(lag, 2),
        "overhead_per_round_s": round((wall - computing) / max(num_rounds, 1), 2),
    }


def _busy_s(found: list[Burst], start: float, end: float) -> float:
    return sum(max(0.0, min(b.ended, end) - max(b.began, start)) for b in found)


def _rate_mbps(found: list[Burst]) -> float:
    """Bytes over time of the transfers long enough to time (a quarter second or more)."""
    timed = [b for b in found if b.duration_s >= 0.25]
    seconds = sum(b.duration_s for b in timed)
    return round(sum(b.num_bytes for b in timed) * 8e-6 / seconds, 3) if seconds else 0.0


# -- the bench ----------------------------------------------------------------------------


def run_bench(
    config: BandwidthBenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    say = progress or (lambda _: None)
    began = time.monotonic()
    runs: dict[str, Any] = {}
    plan = [("capped", config.rate_mbps)] + ([("uncapped", 0.0)] if config.compare_uncapped else [])
    for label, rate in plan:
        say(
            f"{label} run: {config.num_clients} clients"
            + (f" at {rate:g} Mbit/s up and down" if rate else " without caps")
            + f", {config.model_name} ..."
        )
        runs[label] = run_once(config, rate_mbps=rate, say=say)
        say(
            f"  compute utilization in steady rounds: mean "
            f"{runs[label]['steady_utilization_mean']:.1%}, min "
            f"{runs[label]['steady_utilization_min']:.1%}"
        )
    report = {
        "config": {
            "num_clients": config.num_clients,
            "rate_mbps": config.rate_mbps,
            "model": config.model_name,
            "threads_per_client": config.threads_per_client,
            "job": config.job(),
        },
        **runs,
        "wall_s": round(time.monotonic() - began, 1),
    }
    report["targets"] = check_targets(report)
    return report


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    capped = report["capped"]
    rate = report["config"]["rate_mbps"]
    utilization = capped["steady_utilization_mean"]
    clients = capped["clients"]
    allowed = burst_allowance_bytes(rate)
    checks = [
        {
            "name": "utilization",
            "target": f"mean compute utilization in steady rounds at {rate:g} Mbit/s "
            f">= {UTILIZATION_TARGET:.0%}",
            "value": round(utilization, 3),
            "met": utilization >= UTILIZATION_TARGET,
        },
        {
            "name": "upload_cap",
            "target": f"uploads keep to {rate:g} Mbit/s on the wire: burst beyond the rate "
            f"<= {allowed / 1e3:.0f} kB",
            "value": round(max(c["excess_up_bytes"] for c in clients) / 1e3, 1),
            "met": max(c["excess_up_bytes"] for c in clients) <= allowed,
        },
        {
            "name": "download_cap_client",
            "target": f"downloads reach the client at <= {rate:g} Mbit/s (bytes / fetch time)",
            "value": max(c["download_client_mbps"] or 0.0 for c in clients),
            "met": all(
                c["download_client_mbps"] is not None and c["download_client_mbps"] <= rate
                for c in clients
            ),
        },
        {
            "name": "download_cap_wire",
            "target": f"downloads keep to {rate:g} Mbit/s on the wire: burst beyond the rate "
            f"<= {DOWNLOAD_WINDOW_BYTES / 1e3:.0f} kB (the flow-control window and socket buffers)",
            "value": round(max(c["excess_down_bytes"] for c in clients) / 1e3, 1),
            "met": max(c["excess_down_bytes"] for c in clients) <= DOWNLOAD_WINDOW_BYTES,
        },
    ]
    return checks


def render_tables(report: dict[str, Any]) -> str:
    lines = []
    for label in ("capped", "uncapped"):
        run = report.get(label)
        if run is None:
            continue
        cap = f"{run['rate_mbps']:g} Mbit/s each way" if run["rate_mbps"] else "no cap"
        lines += [
            f"{label} ({cap}): {run['rounds']} training rounds in {run['train_wall_s']:.0f}s "
            f"({', '.join(f'{s:.0f}' for s in run['round_s'])}s); compute utilization in steady "
            f"rounds mean {run['steady_utilization_mean']:.1%}, min "
            f"{run['steady_utilization_min']:.1%}; whole job mean "
            f"{run['whole_job_utilization_mean']:.1%}, min {run['whole_job_utilization_min']:.1%}",
            "",
            "| client | wall s | compute s | utilization | fetch s | upload s | other in task s "
            "| barrier s | lease lag s | overhead s/round | whole job | MB up | MB down "
            "| up Mbit/s | down Mbit/s (client) | burst up kB | burst down kB |",
            "|---|" + "---:|" * 16,
        ]
        for c in run["clients"]:
            s = c["steady"]
            lines.append(
                f"| {c['client']} | {s['wall_s']:.1f} | {s['compute_s']:.1f} "
                f"| {s['utilization']:.1%} | {s['fetch_s']:.1f} | {s['upload_s']:.1f} "
                f"| {s['other_in_task_s']:.1f} | {s['barrier_s']:.1f} | {s['lease_lag_s']:.1f} "
                f"| {s['overhead_per_round_s']:.1f} | {c['whole_job']['utilization']:.1%} "
                f"| {c['bytes_up'] / 1e6:.1f} | {c['bytes_down'] / 1e6:.1f} "
                f"| {_number(c['upload_wire_mbps'])} | {_number(c['download_client_mbps'])} "
                f"| {_number(c['excess_up_bytes'], 1e-3)} "
                f"| {_number(c['excess_down_bytes'], 1e-3)} |"
            )
        lines.append("")
    lines += targets_table(report["targets"])
    return "\n".join(lines)


def _number(value: float | None, scale: float = 1.0) -> str:
    """A table cell: one decimal, or a dash for what was not measured (too quick to time)."""
    return f"{value * scale:.1f}" if value else "-"
