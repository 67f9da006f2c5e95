"""`swarm bench coordinator`: how many task cycles one coordinator process serves.

For each database (SQLite, PostgreSQL) and each swarm size (100, 1,000 and 5,000 workers), a
fresh `swarm coordinator` process runs a set of jobs of the `micro-llama` preset, and simulated
workers load it: asyncio gRPC clients in this process that speak the real protocol (signed
registration, `LeaseTask`, `FetchBlob`, signed `SubmitResult` streams with a valid compressed
payload) but compute nothing. A **task cycle** is one lease, the download the task needs (the
version's parameters the first time a worker sees a job, its broadcast delta after that) and
the result's upload. Rounds close, aggregate and publish as in any job, so their cost is part
of what is measured.

Reported per run: task cycles per second over the measured window, results accepted, and p50
and p99 latency of each RPC as the workers saw it (the load generator shares the machine's
cores with the coordinator, so these include its own queueing).

Target (from BOINC's ~100 tasks/s task server): at least 500 task cycles per second, with p99
under 250 ms, at 1,000 workers on 2 cores; 1,000 cycles per second is the stretch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import secrets
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from safetensors.torch import load as load_safetensors

from swarm.compression import CompressionPolicy, encode_payload
from swarm.coordinator.bench import targets_table
from swarm.coordinator.demo import start_coordinator, stop_process
from swarm.protocol import messages as m
from swarm.protocol.raw import async_channel, async_stub
from swarm.protocol.raw import wire as pb
from swarm.protocol.version import PROTOCOL_VERSION

TARGET_CYCLES_PER_S = 500.0
STRETCH_CYCLES_PER_S = 1000.0
TARGET_P99_S = 0.25
TARGET_WORKERS = 1000

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

JOB: dict[str, Any] = {
    "method": "lm",
    "num_rounds": 100_000,
    "inner_steps": 1,
    "work_sizing": "fixed",
    "batch_size": 1,
    "seq_len": 16,
    "warmup_steps": 0,
    "round_quorum": 1.0,
    "round_timeout_s": 30.0,
    "codec": "int8",
    "eval_examples": 1,
    "eval_batch_size": 1,
    "checkpoint_every": 0,
    "num_shards": 4,
}
"""A job whose tasks are as cheap as possible to describe and to check: the `micro-llama`
preset (26k parameters, so an int8 update is about 27 kB) and one-sample tasks. A round closes
as soon as all its tasks are in, so every job keeps cycling."""

RPCS = ("LeaseTask", "FetchBlob", "SubmitResult")


@dataclass(frozen=True, kw_only=True)
class LoadBenchConfig:
    workers: tuple[int, ...] = (100, 1000, 5000)
    """Swarm sizes: simulated workers, all registered and cycling at once."""
    databases: tuple[str, ...] = ("sqlite", "postgresql")
    workers_per_job: int = 50
    """Train tasks per round of each job (jobs = workers / this, at least one)."""
    duration_s: float = 30.0
    """The measured window, after `warmup_s` of load."""
    warmup_s: float = 10.0
    connections: int = 100
    """gRPC connections the simulated workers share (HTTP/2 multiplexes their calls)."""
    postgres_admin_url: str = POSTGRES_ADMIN_URL
    """Where a fresh database is created (and dropped) for each PostgreSQL run."""
    coordinator_env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the coordinator (`SWARM_GRPC_THREADS`, ...)."""
    work_dir: Path | None = None
    """Keep every run's coordinator log and data here (default: a temporary folder)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.workers or min(self.workers) < 1 or max(self.workers) > 20_000:
            raise ValueError(f"workers must be between 1 and 20000, got {self.workers}")
        unknown = set(self.databases) - {"sqlite", "postgresql"}
        if unknown or not self.databases:
            raise ValueError(f"databases are sqlite and/or postgresql, got {self.databases}")
        if self.workers_per_job < 1 or self.duration_s <= 0 or self.warmup_s < 0:
            raise ValueError("workers_per_job, duration_s and warmup_s must be positive")
        if self.connections < 1:
            raise ValueError("connections must be at least 1")


QUICK = LoadBenchConfig(
    workers=(40,), databases=("sqlite",), workers_per_job=20, duration_s=6.0, warmup_s=3.0
)


class Latencies:
    """Every call's duration per RPC, and the task cycles completed, in the measured window."""

    def __init__(self) -> None:
        self.measuring = False
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.refused: dict[str, int] = defaultdict(int)
        self.cycles = 0
        self.accepted = 0
        self.empty_leases = 0
        self.bytes_down = 0
        self.bytes_up = 0

    def observe(self, rpc: str, seconds: float) -> None:
        if self.measuring:
            self.samples[rpc].append(seconds)

    def failed(self, rpc: str, error: grpc.aio.AioRpcError) -> None:
        """A call that failed: refused at once by an overloaded coordinator, or an error."""
        if self.measuring:
            overloaded = error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            (self.refused if overloaded else self.errors)[rpc] += 1

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for rpc in RPCS:
            values = sorted(self.samples.get(rpc, []))
            out[rpc] = {
                "calls": len(values),
                "p50_ms": 1e3 * _quantile(values, 0.50),
                "p99_ms": 1e3 * _quantile(values, 0.99),
                "errors": self.errors.get(rpc, 0),
                "refused": self.refused.get(rpc, 0),
            }
        return out


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


class JobPayloads:
    """One valid, compressed update per job (built once from its parameters' shapes)."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._by_job: dict[str, tuple[bytes, str]] = {}

    def known(self, job_id: str) -> bool:
        return job_id in self._by_job

    def learn(self, job_id: str, params: bytes, policy: pb.CompressionPolicy) -> None:
        tensors = load_safetensors(params)
        generator = torch.Generator().manual_seed(self._seed)
        update = {
            name: 1e-4 * torch.randn(t.shape, generator=generator)
            for name, t in sorted(tensors.items())
        }
        compression = CompressionPolicy(
            chain=policy.chain, small_chain=policy.small_chain, small_elements=policy.small_elements
        )
        data = encode_payload(update, compression, seed=self._seed)
        self._by_job[job_id] = (data, hashlib.sha256(data).hexdigest())

    def get(self, job_id: str) -> tuple[bytes, str]:
        return self._by_job[job_id]


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class SimulatedWorker:
    """One registered worker's protocol loop, without the computing."""

    def __init__(self, index: int, stub: Any, bench: LoadRun) -> None:
        self.index = index
        self.stub = stub
        self.bench = bench
        self.key = Ed25519PrivateKey.generate()
        self.session = pb.Session()
        self.versions: dict[str, int] = {}  # job -> the version this worker holds
        self.failures = 0  # in a row: the backoff grows with them, as `swarmclient`'s does

    async def back_off(self) -> None:
        """Exponential backoff with full jitter (0.5 s doubling to 30 s), as the real client."""
        self.failures += 1
        await asyncio.sleep(random.uniform(0, min(30.0, 0.5 * 2 ** min(self.failures, 10))))

    async def register(self) -> None:
        public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        name = f"sim-{self.index}"
        signed_at = time.time()
        request = pb.RegisterWorkerRequest(
            protocol_version=PROTOCOL_VERSION,
            name=name,
            public_key=public,
            hardware=pb.HardwareProfile(
                device_type="cpu", memory_bytes=8 << 30, cpu_cores=4, platform="simulated"
            ),
            client_version="bench",
            signed_at_unix_s=signed_at,
            signature=self.key.sign(m.registration_signing_bytes(public, name, signed_at)),
        )
        for attempt in range(20):
            try:
                response = await self.stub.RegisterWorker(request, timeout=60)
                self.session = response.session
                return
            except grpc.aio.AioRpcError:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.5 + random.random())

    async def run(self, stop_at: float) -> None:
        stats = self.bench.stats
        while time.monotonic() < stop_at:
            try:
                began = time.perf_counter()
                leased = await self.stub.LeaseTask(
                    pb.LeaseTaskRequest(session=self.session), timeout=30
                )
                stats.observe("LeaseTask", time.perf_counter() - began)
            except grpc.aio.AioRpcError as exc:
                stats.failed("LeaseTask", exc)
                await self.back_off()
                continue
            if not leased.HasField("task"):
                stats.empty_leases += stats.measuring
                # As a real client does: come back when told to (with jitter, as it does).
                await asyncio.sleep(leased.retry_after_s * random.uniform(0.5, 1.0))
                continue
            try:
                await self._cycle(leased.task)
                self.failures = 0
            except grpc.aio.AioRpcError:
                await self.back_off()

    async def _cycle(self, task: pb.Task) -> None:
        stats = self.bench.stats
        spec = task.train if task.WhichOneof("spec") == "train" else task.evaluate
        held = self.versions.get(task.job_id)
        deltas = [d for d in spec.param_deltas if held is not None and d.version > held]
        if held is not None and deltas and deltas[0].version == held + 1:
            want = deltas[-1].delta_sha256  # the newest delta stands in for the chain
        else:
            want = spec.params_sha256
        began = time.perf_counter()
        try:
            data = await self._fetch(want)
        finally:
            stats.observe("FetchBlob", time.perf_counter() - began)
        self.versions[task.job_id] = task.version
        if not self.bench.payloads.known(task.job_id):
            params = data if want == spec.params_sha256 else await self._fetch(spec.params_sha256)
            self.bench.payloads.learn(task.job_id, params, task.train.update_policy)
        if task.WhichOneof("spec") == "train":
            payload, sha = self.bench.payloads.get(task.job_id)
            metrics = m.TaskMetrics(
                loss_first=5.5,
                loss_last=5.4,
                loss_mean=5.45,
                tokens=len(task.train.sample_indices) * task.train.seq_len,
                compute_s=0.01,
                steps=task.train.inner_steps,
            )
        else:
            payload, sha = b"", EMPTY_SHA256
            metrics = m.TaskMetrics(eval_loss=5.5, examples=task.evaluate.max_examples)
        header = pb.ResultHeader(
            session=self.session,
            task_id=task.task_id,
            metrics=m.to_proto(metrics, pb.TaskMetrics),
            payload_sha256=sha,
            payload_size=len(payload),
            signature=self.key.sign(m.result_signing_bytes(task.task_id, sha, metrics)),
        )

        async def chunks() -> AsyncIterator[pb.SubmitResultChunk]:
            yield pb.SubmitResultChunk(header=header)
            if payload:
                yield pb.SubmitResultChunk(data=payload)

        began = time.perf_counter()
        try:
            response = await self.stub.SubmitResult(chunks(), timeout=30)
        except grpc.aio.AioRpcError as exc:
            stats.failed("SubmitResult", exc)
            raise
        stats.observe("SubmitResult", time.perf_counter() - began)
        if stats.measuring:
            stats.cycles += 1
            stats.accepted += response.accepted
            stats.bytes_down += len(data)
            stats.bytes_up += len(payload)

    async def _fetch(self, sha256: str) -> bytes:
        parts = []
        try:
            async for chunk in self.stub.FetchBlob(
                pb.FetchBlobRequest(session=self.session, sha256=sha256), timeout=30
            ):
                parts.append(chunk.data)
        except grpc.aio.AioRpcError as exc:
            self.bench.stats.failed("FetchBlob", exc)
            raise
        return b"".join(parts)


class LoadRun:
    """The simulated swarm against one coordinator."""

    def __init__(
        self,
        target: str,
        num_workers: int,
        config: LoadBenchConfig,
        cpu_s: Callable[[], float | None] = lambda: None,
        certificate_pem: bytes | None = None,
    ) -> None:
        self.target = target
        self.certificate_pem = certificate_pem
        self.cpu_s = cpu_s
        self.num_workers = num_workers
        self.config = config
        self.stats = Latencies()
        self.payloads = JobPayloads(config.seed)

    async def run(self, say: Callable[[str], None]) -> dict[str, Any]:
        channels = [
            async_channel(self.target, self.certificate_pem)
            for _ in range(min(self.config.connections, self.num_workers))
        ]
        try:
            stubs = [async_stub(channel) for channel in channels]
            workers = [
                SimulatedWorker(i, stubs[i % len(stubs)], self) for i in range(self.num_workers)
            ]
            began = time.monotonic()
            limit = asyncio.Semaphore(64)

            async def register(worker: SimulatedWorker) -> None:
                async with limit:
                    await worker.register()

            await asyncio.gather(*(register(w) for w in workers))
            say(f"    {self.num_workers} workers registered in {time.monotonic() - began:.1f}s")
            start = time.monotonic()
            stop_at = start + self.config.warmup_s + self.config.duration_s
            loops = [asyncio.ensure_future(w.run(stop_at)) for w in workers]
            await asyncio.sleep(self.config.warmup_s)
            self.stats.measuring = True
            window_began, cpu_began = time.monotonic(), self.cpu_s()
            await asyncio.sleep(self.config.duration_s)
            self.stats.measuring = False
            window, cpu_ended = time.monotonic() - window_began, self.cpu_s()
            await asyncio.gather(*loops, return_exceptions=True)
        finally:
            for channel in channels:
                await channel.close()
        cores = None if cpu_began is None or cpu_ended is None else (cpu_ended - cpu_began) / window
        return {
            "workers": self.num_workers,
            "window_s": window,
            "task_cycles": self.stats.cycles,
            "cycles_per_s": self.stats.cycles / window,
            "coordinator_cores": cores,
            "coordinator_cpu_ms_per_cycle": None
            if cores is None or not self.stats.cycles
            else 1e3 * cores * window / self.stats.cycles,
            "results_accepted": self.stats.accepted,
            "empty_leases": self.stats.empty_leases,
            "download_mb_per_s": self.stats.bytes_down / window / 1e6,
            "upload_mb_per_s": self.stats.bytes_up / window / 1e6,
            "rpcs": self.stats.summary(),
        }


def _postgres_database(admin_url: str, stack: ExitStack) -> str:
    """A fresh PostgreSQL database for one run, dropped when `stack` closes."""
    import psycopg

    name = f"swarm_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f"CREATE DATABASE {name}")

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    stack.callback(drop)
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def run_one(
    config: LoadBenchConfig, database: str, num_workers: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """One coordinator process, its jobs, and `num_workers` simulated workers."""
    with ExitStack() as stack:
        if config.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swarm-load-")))
        else:
            work = config.work_dir / f"{database}-{num_workers}"
            shutil.rmtree(work, ignore_errors=True)  # a fresh coordinator, not a restart
            work.mkdir(parents=True)
        db = _postgres_database(config.postgres_admin_url, stack) if database != "sqlite" else None
        log = stack.enter_context((work / "coordinator.log").open("w"))
        # Leases answer at once (no long polls), so a lease's latency is the coordinator's work,
        # not a wait for the next round; idle workers poll instead, which is load it serves.
        env = {
            "SWARM_LOG_LEVEL": "WARNING",
            "SWARM_LEASE_LONG_POLL_S": "0",
            **config.coordinator_env,
        }
        process, ready = start_coordinator(work / "coordinator", log, db, env)
        stack.callback(stop_process, process)
        num_jobs = max(1, num_workers // config.workers_per_job)
        per_job = num_workers // num_jobs
        with httpx.Client(base_url=f"http://127.0.0.1:{ready['http_port']}", timeout=60) as http:
            job_ids = []
            for _ in range(num_jobs):
                hyper = {**JOB, "min_clients": per_job, "max_clients": per_job}
                response = http.post(
                    "/v1/fine_tuning/jobs", json={"model": "micro-llama", "hyperparameters": hyper}
                )
                if response.status_code != 200:
                    raise RuntimeError(f"job submission failed: {response.text[:300]}")
                job_ids.append(response.json()["id"])
            say(f"    {num_jobs} jobs of {per_job} tasks per round submitted")
            load = LoadRun(
                f"127.0.0.1:{ready['grpc_port']}",
                num_workers,
                config,
                cpu_s=lambda: _process_cpu_s(process),
                # Over TLS, as real workers talk to it (pinned to its self-signed certificate).
                certificate_pem=(work / "coordinator" / "tls" / "coordinator.crt").read_bytes()
                if ready.get("tls_fingerprint")
                else None,
            )
            result = asyncio.run(load.run(say))
            rounds = sum(
                sum(
                    r["status"] == "closed"
                    for r in http.get(f"/v1/swarm/jobs/{j}/rounds").json()["data"]
                )
                for j in job_ids
            )
        return {
            "database": database,
            "jobs": num_jobs,
            "tasks_per_round": per_job,
            "rounds_closed": rounds,
            **result,
        }


def _process_cpu_s(process: subprocess.Popen[bytes]) -> float | None:
    """User plus system CPU seconds the coordinator has used so far (Linux)."""
    try:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_bench(
    config: LoadBenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    say = progress or (lambda _: None)
    runs = []
    for database in config.databases:
        for num_workers in config.workers:
            say(f"  {database}, {num_workers} workers")
            run = run_one(config, database, num_workers, say)
            say(
                f"    {run['cycles_per_s']:.0f} task cycles/s, p99 "
                + ", ".join(f"{rpc} {run['rpcs'][rpc]['p99_ms']:.0f} ms" for rpc in RPCS)
            )
            runs.append(run)
    return {
        "bench": "coordinator",
        "config": {
            "workers": list(config.workers),
            "databases": list(config.databases),
            "workers_per_job": config.workers_per_job,
            "duration_s": config.duration_s,
            "warmup_s": config.warmup_s,
            "connections": config.connections,
            "cpu_cores": os.cpu_count(),
        },
        "runs": runs,
        "targets": _targets(runs),
    }


def _targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    targets = []
    for run in runs:
        if run["workers"] != TARGET_WORKERS:
            continue
        p99 = max(run["rpcs"][rpc]["p99_ms"] for rpc in RPCS) / 1e3
        targets.append(
            {
                "target": f"{run['database']}, {TARGET_WORKERS} workers: >= "
                f"{TARGET_CYCLES_PER_S:.0f} task cycles/s with every RPC's p99 < "
                f"{TARGET_P99_S * 1e3:.0f} ms",
                "value": f"{run['cycles_per_s']:.0f}/s, p99 {p99 * 1e3:.0f} ms",
                "met": run["cycles_per_s"] >= TARGET_CYCLES_PER_S and p99 < TARGET_P99_S,
            }
        )
    return targets


def render_tables(report: dict[str, Any]) -> str:
    lines = [
        "| database | workers | jobs | task cycles/s | coordinator CPU ms/cycle | accepted | "
        "rounds | "
        + " | ".join(f"{rpc} p50 / p99 ms" for rpc in RPCS)
        + " | errors | refused (overloaded) |",
        "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(RPCS) + "---:|---:|",
    ]
    for run in report["runs"]:
        rpcs = run["rpcs"]
        cpu = run.get("coordinator_cpu_ms_per_cycle")
        lines.append(
            f"| {run['database']} | {run['workers']:,} | {run['jobs']} | "
            f"{run['cycles_per_s']:.0f} | {'-' if cpu is None else f'{cpu:.1f}'} | "
            f"{run['results_accepted']:,} | {run['rounds_closed']} | "
            + " | ".join(f"{rpcs[r]['p50_ms']:.0f} / {rpcs[r]['p99_ms']:.0f}" for r in RPCS)
            + f" | {sum(rpcs[r]['errors'] for r in RPCS)} | "
            + f"{sum(rpcs[r].get('refused', 0) for r in RPCS)} |"
        )
    if report["targets"]:
        lines += ["", *targets_table(report["targets"])]
    return "\n".join(lines)


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)
