"""`swarm demo`: a coordinator and local clients train a model on this machine, end to end.

Everything runs as separate processes talking over loopback, exactly as on a real swarm: the
coordinator serves gRPC and HTTP, each client is a `swarmclient join` process, and the demo
itself is just an HTTP client that creates the job and watches its rounds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from swarm.coordinator.server import READY_FILE


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    num_clients: int = 2
    hyperparameters: dict[str, Any] | None = None
    model: str = "tiny-llama"
    timeout_s: float = 900.0
    work_dir: Path | None = None
    db: str | None = None
    threads_per_client: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.num_clients <= 16:
            raise ValueError(f"num_clients must be in [1, 16], got {self.num_clients}")


DEFAULT_HYPERPARAMETERS: dict[str, Any] = {"num_rounds": 10, "inner_steps": 24}


def start_coordinator(
    data_dir: Path,
    log: TextIO,
    db: str | None = None,
    extra_env: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start `swarm coordinator` on free loopback ports; return it and its ready file."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / READY_FILE).unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "swarm.coordinator",
        "coordinator",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        "--data-dir",
        str(data_dir),
    ]
    if db:
        command += ["--db", db]
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(extra_env or {})}
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the coordinator exited with code {process.returncode}; "
                f"see {getattr(log, 'name', 'its log')}"
            )
        try:
            return process, json.loads((data_dir / READY_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the coordinator did not start within {timeout_s:.0f}s")


def start_client(
    target: str,
    name: str,
    data_dir: Path,
    log: TextIO,
    threads: int = 1,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `swarmclient join` as a separate process."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "swarm.client",
            "join",
            "--coordinator",
            target,
            "--name",
            name,
            "--data-dir",
            str(data_dir),
            "--threads",
            str(threads),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(extra_env or {})},
    )


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout_s: float = 20.0
) -> int:
    """Ask a process to stop; kill it if it does not within `timeout_s`."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def format_bytes(num: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(num) < 1000 or unit == "GB":
            return f"{num:.1f} {unit}" if unit != "B" else f"{int(num)} B"
        num /= 1000
    return f"{num:.1f} GB"


def run_demo(config: DemoConfig, *, emit: Any = print, quiet: bool = False) -> dict[str, Any]:
    """Run the demo; return its summary. `emit` receives one human-readable line at a time."""
    say = (lambda *_: None) if quiet else emit
    began = time.monotonic()
    with ExitStack() as stack:
        work = config.work_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="swarm-demo-"))
        )
        work.mkdir(parents=True, exist_ok=True)
        coordinator_log = stack.enter_context((work / "coordinator.log").open("w"))
        coordinator, ready = start_coordinator(work / "coordinator", coordinator_log, config.db)
        stack.callback(stop_process, coordinator, signal.SIGTERM)
        target = f"127.0.0.1:{ready['grpc_port']}"
        base_url = f"http://127.0.0.1:{ready['http_port']}"
        say(f"coordinator up: gRPC {target}, HTTP {base_url} (logs in {work})")
        for i in range(config.num_clients):
            log = stack.enter_context((work / f"client-{i}.log").open("w"))
            client = start_client(
                target, f"demo-client-{i}", work / f"client-{i}", log, config.threads_per_client
            )
            stack.callback(stop_process, client)
        say(f"started {config.num_clients} clients")

        http = stack.enter_context(httpx.Client(base_url=base_url, timeout=60.0))
        hyperparameters = {
            **DEFAULT_HYPERPARAMETERS,
            "min_clients": config.num_clients,
            **(config.hyperparameters or {}),
        }
        response = http.post(
            "/v1/fine_tuning/jobs", json={"model": config.model, "hyperparameters": hyperparameters}
        )
        if response.status_code != 200:
            raise RuntimeError(f"creating the job failed: {response.text}")
        job = response.json()
        say(
            f"job {job['id']}: {job['model']}, {job['swarm']['num_trainable_params']:,} "
            f"parameters, {hyperparameters['num_rounds']} rounds, held-out loss "
            f"{job['swarm']['initial_eval_loss']:.4f}"
        )
        say(
            f"{'round':>5}  {'train':>7}  {'held-out':>8}  {'tokens':>8}  {'up':>9}  "
            f"{'down':>9}  {'clients':>7}  {'time':>6}"
        )

        shown = 0
        rounds: list[dict[str, Any]] = []
        deadline = time.monotonic() + config.timeout_s
        while True:
            job = http.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
            rounds = http.get(f"/v1/swarm/jobs/{job['id']}/rounds").json()["data"]
            for r in (r for r in rounds if r["status"] == "closed" and r["round"] >= shown):
                say(
                    f"{r['round']:>5}  {r['train_loss']:>7.4f}  {r['eval_loss']:>8.4f}  "
                    f"{r['tokens']:>8,}  {format_bytes(r['bytes_up']):>9}  "
                    f"{format_bytes(r['bytes_down']):>9}  {r['num_clients']:>7}  "
                    f"{r['closed_at'] - r['opened_at']:>5.1f}s"
                )
                shown = r["round"] + 1
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"job {job['id']} did not finish within {config.timeout_s:.0f}s"
                    f" (status {job['status']}); logs in {work}"
                )
            for process in [coordinator]:
                if process.poll() is not None:
                    raise RuntimeError(f"the coordinator died; see {work / 'coordinator.log'}")
            time.sleep(0.25)

    closed = [r for r in rounds if r["status"] == "closed"]
    initial, final = job["swarm"]["initial_eval_loss"], job["swarm"]["eval_loss"]
    summary = {
        "job_id": job["id"],
        "status": job["status"],
        "model": job["model"],
        "num_trainable_params": job["swarm"]["num_trainable_params"],
        "rounds": len(closed),
        "num_clients": config.num_clients,
        "min_clients_per_round": min((r["num_clients"] for r in closed), default=0),
        "initial_eval_loss": initial,
        "final_eval_loss": final,
        "eval_loss_reduction": (1 - final / initial) if initial and final else None,
        "tokens": sum(r["tokens"] for r in closed),
        "bytes_up": sum(r["bytes_up"] for r in closed),
        "bytes_down": sum(r["bytes_down"] for r in closed),
        "wall_s": round(time.monotonic() - began, 2),
    }
    say(
        f"job {summary['status']}: {summary['rounds']} rounds, held-out loss "
        f"{initial:.4f} -> {final:.4f} ({100 * (summary['eval_loss_reduction'] or 0):.1f}% lower), "
        f"{summary['tokens']:,} tokens, {format_bytes(summary['bytes_up'])} up, "
        f"{format_bytes(summary['bytes_down'])} down, every round had at least "
        f"{summary['min_clients_per_round']} clients, {summary['wall_s']:.1f}s"
    )
    return summary
