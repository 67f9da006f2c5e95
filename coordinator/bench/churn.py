"""`swarm bench churn`: a job survives volunteers that come and go and a coordinator crash.

Two runs of the same job (same seed, data and token budget: the job trains for a fixed number
of epochs), each a real coordinator process and real client processes on loopback:

1. calm: nobody fails;
2. churn: every training round, a share of the clients (30% of 6: two) is killed with SIGKILL
   at a random moment and restarted at once, and once, in the middle of the job, the
   coordinator itself is killed with SIGKILL and restarted on the same database.

Reported for each run: goodput (trained tokens the job applied, per second of the job's wall
time), final held-out loss, rounds, late and revoked results, leases that expired; and the
checks: every epoch of every shard consumed exactly once, no task accepted twice, the ledger
balanced and every accepted result paid once.

Targets: goodput under churn at least 0.9 x (1 - 0.3) of the calm run's; final held-out loss
within 2% of it; every check passes.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from swarm.coordinator.bench import targets_table
from swarm.coordinator.demo import start_client, start_coordinator, stop_process
from swarm.scheduler import Span, covers_exactly

GOODPUT_TARGET = 0.9 * (1 - 0.3)
LOSS_GAP_TARGET = 0.02

JOB: dict[str, Any] = {
    "model": "tiny-llama",
    "method": "lm",
    "num_epochs": 20,
    "inner_steps": 40,
    "batch_size": 8,
    "seq_len": 128,
    "num_shards": 6,
    "round_quorum": 0.5,
    "late_updates": "stale",
    "max_staleness": 1,
    "codec": "int8",
    "eval_examples": 64,
    "seed": 0,
}
"""About six rounds of six 40-step tasks of tiny-llama on the shipped corpus (twenty epochs of its
66k training tokens): tasks of about 20 s on this 2-core machine, so that restarting a client
(seconds of imports, on the same two cores as every other client) is not most of a round."""

# A dead client's task goes to another worker within seconds; one that restarts gets its task
# back at once (it registers with the same key), so the ttl only has to outlast a busy moment.
FAST_LEASES = {"SWARM_LEASE_TTL_S": "8", "SWARM_HEARTBEAT_INTERVAL_S": "1"}
# Clients retry a coordinator that is down at least every two seconds (a swarm of six, not of
# thousands: no herd to spread out).
CLIENT_ENV = {"SWARM_MAX_BACKOFF_S": "2"}


@dataclass(frozen=True, kw_only=True)
class ChurnBenchConfig:
    num_clients: int = 6
    churn_fraction: float = 0.3
    """Share of the clients killed and restarted every training round."""
    kill_coordinator: bool = True
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """Overrides of `JOB`."""
    db: str | None = None
    """A database URL for the coordinator (default: SQLite in its data directory)."""
    coordinators: int = 1
    """Coordinators sharing the database (and a blob directory). With more than one, the
    coordinator killed mid-job stays dead: its clients fail over to the others. Each client
    lists them all, starting from a different one, so work arrives through every coordinator."""
    seed: int = 0
    """Seeds which clients die and when."""
    timeout_s: float = 900.0
    work_dir: Path | None = None
    """Keep the logs and databases of both runs here (default: a temporary folder)."""

    def __post_init__(self) -> None:
        if not 1 <= self.num_clients <= 16:
            raise ValueError(f"num_clients must be in [1, 16], got {self.num_clients}")
        if not 0.0 <= self.churn_fraction < 1.0:
            raise ValueError(f"churn_fraction must be in [0, 1), got {self.churn_fraction}")
        if not 1 <= self.coordinators <= 8:
            raise ValueError(f"coordinators must be in [1, 8], got {self.coordinators}")
        if self.coordinators > 1 and not (self.db or "").startswith("postgresql"):
            raise ValueError(
                "several coordinators share one PostgreSQL database: give db a postgresql:// URL"
            )

    @property
    def kills_per_round(self) -> int:
        return round(self.churn_fraction * self.num_clients)


QUICK = ChurnBenchConfig(
    num_clients=3,
    hyperparameters={"num_epochs": 3, "inner_steps": 6, "seq_len": 64},
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Swarm:
    """Coordinators and their clients as processes, which can be killed and started again."""

    def __init__(self, work: Path, config: ChurnBenchConfig, stack: ExitStack) -> None:
        self.work, self.config, self.stack = work, config, stack
        count = config.coordinators
        self.grpc_ports = [_free_port() for _ in range(count)]
        self.http_ports = [_free_port() for _ in range(count)]
        self.targets = [f"127.0.0.1:{port}" for port in self.grpc_ports]
        self.coordinators: list[subprocess.Popen[bytes] | None] = [None] * count
        self.clients: list[subprocess.Popen[bytes]] = []
        self.starts = 0
        self.kills = 0
        self.coordinator_kills = 0
        # Kills run on their own threads: once the swarm stops, none may start a client again.
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def http_port(self) -> int:
        """The HTTP API of the coordinator that is never killed (the last)."""
        return self.http_ports[-1]

    def start_coordinators(self) -> None:
        for index in range(self.config.coordinators):
            self.start_coordinator(index)

    def start_coordinator(self, index: int = 0) -> None:
        self.starts += 1
        log = self.stack.enter_context((self.work / f"coordinator-{self.starts}.log").open("w"))
        env = dict(FAST_LEASES)
        if self.config.coordinators > 1:
            # The shared blob store, and a dead peer noticed within seconds.
            env |= {"SWARM_BLOB_DIR": str(self.work / "blobs"), "SWARM_COORDINATOR_TIMEOUT_S": "4"}
        self.coordinators[index], _ = start_coordinator(
            self.work / ("coordinator" if index == 0 else f"coordinator-{index}"),
            log,
            self.config.db,
            env,
            grpc_port=self.grpc_ports[index],
            http_port=self.http_ports[index],
        )

    def start_client(self, index: int) -> subprocess.Popen[bytes]:
        log = self.stack.enter_context((self.work / f"client-{index}.log").open("a"))
        first = index % len(self.targets)
        targets = ",".join(self.targets[first:] + self.targets[:first])
        return start_client(
            targets, f"churn-{index}", self.work / f"client-{index}", log, extra_env=CLIENT_ENV
        )

    def kill_client(self, index: int) -> None:
        """SIGKILL: no hand-back, no goodbye; the client starts again at once (unless the
        swarm is stopping)."""
        with self._lock:
            if self._stopped:
                return
            self.clients[index].kill()
            self.clients[index].wait()
            self.kills += 1
            self.clients[index] = self.start_client(index)

    def kill_coordinator(self) -> None:
        """SIGKILL the first coordinator; alone, it restarts on the same database; with
        others beside it, it stays dead and they carry on."""
        coordinator = self.coordinators[0]
        assert coordinator is not None
        coordinator.kill()
        coordinator.wait()
        self.coordinator_kills += 1
        if self.config.coordinators == 1:
            self.start_coordinator(0)
        else:
            self.coordinators[0] = None

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        for client in self.clients:
            stop_process(client)
        for coordinator in self.coordinators:
            if coordinator is not None:
                stop_process(coordinator, signal.SIGTERM)


def run_once(
    config: ChurnBenchConfig, *, churn: bool, say: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """One run of the job, with or without churn; what it measured and checked."""
    rng = random.Random(config.seed)
    with ExitStack() as stack:
        if config.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swarm-churn-")))
        else:
            work = config.work_dir / ("churn" if churn else "calm")
            work.mkdir(parents=True, exist_ok=True)
        swarm = Swarm(work, config, stack)
        swarm.start_coordinators()
        stack.callback(swarm.stop)
        swarm.clients = [swarm.start_client(i) for i in range(config.num_clients)]
        http = stack.enter_context(
            httpx.Client(base_url=f"http://127.0.0.1:{swarm.http_port}", timeout=30.0)
        )
        body = {"model": JOB["model"], "hyperparameters": {**JOB, **config.hyperparameters}}
        body["hyperparameters"].pop("model")
        body["hyperparameters"]["min_clients"] = config.num_clients
        job = _request(http, "POST", "/v1/fine_tuning/jobs", json=body)
        job_id = job["id"]
        deadline = time.monotonic() + config.timeout_s
        churned: set[int] = set()
        coordinator_killed = not (churn and config.kill_coordinator)
        while True:
            job = _request(http, "GET", f"/v1/fine_tuning/jobs/{job_id}")
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} did not finish in {config.timeout_s:.0f}s")
            rounds = _request(http, "GET", f"/v1/swarm/jobs/{job_id}/rounds")["data"]
            open_ = [r for r in rounds if r["status"] == "open" and r["num_train_tasks"]]
            if churn and open_ and open_[-1]["round"] not in churned:
                current = open_[-1]["round"]
                churned.add(current)
                _churn_round(swarm, config, rng, say, current)
                if not coordinator_killed and current >= 2:
                    time.sleep(rng.uniform(0.5, 2.0))
                    say(
                        f"  round {current}: killing the coordinator (SIGKILL) and restarting it"
                        if config.coordinators == 1
                        else f"  round {current}: killing one of {config.coordinators} "
                        "coordinators (SIGKILL); the others carry on"
                    )
                    swarm.kill_coordinator()
                    coordinator_killed = True
            time.sleep(0.2)
        return _measure(http, job, swarm, churn)


def _churn_round(
    swarm: Swarm,
    config: ChurnBenchConfig,
    rng: random.Random,
    say: Callable[[str], None],
    round_index: int,
) -> None:
    """Kill `kills_per_round` clients at random moments of the round, in the background."""
    victims = rng.sample(range(config.num_clients), config.kills_per_round)
    delays = sorted(rng.uniform(1.0, 5.0) for _ in victims)
    say(f"  round {round_index}: killing clients {victims} (SIGKILL) and restarting them")

    def kill() -> None:
        began = time.monotonic()
        for victim, delay in zip(victims, delays, strict=True):
            time.sleep(max(0.0, began + delay - time.monotonic()))
            swarm.kill_client(victim)

    threading.Thread(target=kill, name=f"churn-{round_index}", daemon=True).start()


def _request(http: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """An API call that rides out a coordinator restart."""
    for attempt in range(300):
        try:
            response = http.request(method, path, **kwargs)
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if response.status_code >= 500 and attempt < 299:
            time.sleep(0.2)
            continue
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json()
    raise RuntimeError(f"{method} {path}: the coordinator did not come back")


def _measure(http: httpx.Client, job: dict[str, Any], swarm: Swarm, churn: bool) -> dict[str, Any]:
    job_id = job["id"]
    rounds = _request(http, "GET", f"/v1/swarm/jobs/{job_id}/rounds")["data"]
    tasks = _request(http, "GET", f"/v1/swarm/jobs/{job_id}/tasks")["data"]
    ledger = _request(http, "GET", "/v1/swarm/ledger")
    workers = _request(http, "GET", "/v1/swarm/workers")["data"]
    train = [t for t in tasks if t["kind"] == "train"]
    accepted = [t for t in train if t["status"] == "accepted"]
    consumed = [
        Span(epoch=s["epoch"], shard=s["shard"], start=s["start"], stop=s["stop"])
        for t in accepted
        for s in t["spans"]
        if s["state"] == "consumed"
    ]
    spec = job["swarm"]["spec"]
    sizes = _shard_sizes(tasks, consumed)
    exactly_once = bool(consumed) and all(
        covers_exactly(consumed, sizes, epoch) for epoch in range(spec["num_epochs"])
    )
    applied_tokens = sum(r["tokens"] for r in rounds)
    started = min(r["opened_at"] for r in rounds)
    finished = max(r["closed_at"] or r["opened_at"] for r in rounds)
    wall_s = finished - started
    paid = [t for t in tasks if t["status"] == "accepted"]
    return {
        "churn": churn,
        "status": job["status"],
        "job_id": job_id,
        "wall_s": round(wall_s, 1),
        "applied_tokens": applied_tokens,
        "train_samples_per_epoch": sum(sizes),
        "goodput_tokens_per_s": applied_tokens / wall_s if wall_s > 0 else 0.0,
        "final_eval_loss": job["swarm"]["eval_loss"],
        "initial_eval_loss": job["swarm"]["initial_eval_loss"],
        "rounds": sum(1 for r in rounds if r["num_train_tasks"]),
        "train_tasks_accepted": len(accepted),
        "train_tasks_cancelled": sum(t["status"] == "cancelled" for t in train),
        "late_results_applied": sum(r["num_late"] for r in rounds),
        "unapplied_results": sum(t["applied_round"] is None for t in accepted),
        "leases_expired": sum(w["tasks_failed"] for w in workers),
        "clients_killed": swarm.kills,
        "coordinator_kills": swarm.coordinator_kills,
        "workers_registered": len(workers),
        "checks": {
            "every_epoch_consumed_exactly_once": exactly_once,
            "no_task_accepted_twice": len({t["id"] for t in paid}) == len(paid),
            "ledger_balanced": bool(ledger["balanced"]),
            "every_result_paid_once": abs(sum(t["credits"] for t in paid) - ledger["minted"])
            < 1e-6 * max(1.0, ledger["minted"]),
        },
        "minted_credits": ledger["minted"],
    }


def _shard_sizes(tasks: list[dict[str, Any]], consumed: list[Span]) -> list[int]:
    """Samples per shard, as the spans of epoch 0 reveal them (they tile each shard)."""
    num_shards = 1 + max((s.shard for s in consumed), default=-1)
    ends = [0] * num_shards
    for span in consumed:
        if span.epoch == 0:
            ends[span.shard] = max(ends[span.shard], span.stop)
    return ends


def run_bench(
    config: ChurnBenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    say = progress or (lambda _: None)
    began = time.monotonic()
    say(f"calm run: {config.num_clients} clients, nobody fails ...")
    calm = run_once(config, churn=False, say=say)
    say(f"  {calm['wall_s']:.0f}s, final held-out loss {calm['final_eval_loss']:.4f}")
    say(
        f"churn run: {config.kills_per_round} of {config.num_clients} clients killed every round"
        + (", the coordinator killed once" if config.kill_coordinator else "")
        + " ..."
    )
    churned = run_once(config, churn=True, say=say)
    say(f"  {churned['wall_s']:.0f}s, final held-out loss {churned['final_eval_loss']:.4f}")
    report = {
        "config": {
            "num_clients": config.num_clients,
            "churn_fraction": config.churn_fraction,
            "kills_per_round": config.kills_per_round,
            "kill_coordinator": config.kill_coordinator,
            "job": {**JOB, **config.hyperparameters},
            "database": "postgresql" if config.db else "sqlite",
            "coordinators": config.coordinators,
        },
        "calm": calm,
        "churn": churned,
        "goodput_ratio": churned["goodput_tokens_per_s"] / calm["goodput_tokens_per_s"],
        "loss_gap": churned["final_eval_loss"] / calm["final_eval_loss"] - 1.0,
        "wall_s": round(time.monotonic() - began, 1),
    }
    report["targets"] = check_targets(report)
    return report


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    checks = [
        {
            "target": f"goodput under churn >= {GOODPUT_TARGET:.2f} x calm",
            "value": round(report["goodput_ratio"], 3),
            "met": report["goodput_ratio"] >= GOODPUT_TARGET,
        },
        {
            "target": f"final held-out loss within {LOSS_GAP_TARGET:.0%} of calm",
            "value": round(report["loss_gap"], 4),
            "met": report["loss_gap"] <= LOSS_GAP_TARGET,
        },
    ]
    for name in report["churn"]["checks"]:
        both = report["churn"]["checks"][name] and report["calm"]["checks"][name]
        checks.append({"target": name.replace("_", " "), "value": both, "met": both})
    return checks


def render_tables(report: dict[str, Any]) -> str:
    calm, churn = report["calm"], report["churn"]
    rows = [
        ("status", calm["status"], churn["status"]),
        ("wall time of the job (s)", f"{calm['wall_s']:.1f}", f"{churn['wall_s']:.1f}"),
        ("tokens applied", f"{calm['applied_tokens']:,}", f"{churn['applied_tokens']:,}"),
        (
            "goodput (tokens/s)",
            f"{calm['goodput_tokens_per_s']:,.0f}",
            f"{churn['goodput_tokens_per_s']:,.0f}",
        ),
        (
            "held-out loss, start -> end",
            f"{calm['initial_eval_loss']:.4f} -> {calm['final_eval_loss']:.4f}",
            f"{churn['initial_eval_loss']:.4f} -> {churn['final_eval_loss']:.4f}",
        ),
        ("training rounds", calm["rounds"], churn["rounds"]),
        ("train results accepted", calm["train_tasks_accepted"], churn["train_tasks_accepted"]),
        ("late results applied", calm["late_results_applied"], churn["late_results_applied"]),
        ("leases expired", calm["leases_expired"], churn["leases_expired"]),
        ("clients killed (SIGKILL)", calm["clients_killed"], churn["clients_killed"]),
        ("coordinator killed (SIGKILL)", calm["coordinator_kills"], churn["coordinator_kills"]),
    ]
    lines = ["| | calm | churn |", "|---|---:|---:|"]
    lines += [f"| {name} | {a} | {b} |" for name, a, b in rows]
    lines += ["", *targets_table(report["targets"])]
    return "\n".join(lines)
