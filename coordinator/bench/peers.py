"""`swarm bench peers`: the swarm against hivemind, side by side, on the same job.

The same tiny model (same preset and seed), the same data (the built-in corpus split into the
same shards, the same held-out tail), the same number of processes, batch size, sequence length,
inner AdamW settings and token budget, trained twice on loopback:

1. **hivemind**: N `hivemind.Optimizer` peers (`hivemind_peers.run_hivemind`), its standard
   collaborative training: gradients averaged by all-reduce every `steps_per_epoch` local steps
   of every peer, one AdamW step on the average, then parameters averaged; 8-bit compression.
2. **the swarm**: a real coordinator process and N real `swarmclient` processes; a DiLoCo job
   submitted over the HTTP API: every round each client runs `inner_steps` AdamW steps from
   the published version and uploads its compressed pseudo-gradient; the coordinator averages
   them and publishes the next version, which clients download as a compressed delta.

Bytes. hivemind's are counted inside its peers at its two send paths (see `hivemind_peers`):
what the peers hand to the p2p daemon, not the daemon's own framing. The swarm's are counted
on the wire: the clients reach the coordinator's gRPC port only through a relay in this process
that counts every byte of the TCP stream each way (HTTP/2 frames, headers, protobuf, pings,
the initial parameters, the token shards, every round's evaluation), from the moment the job is
submitted until it has succeeded. Registration before the job (including the 1 MiB download
probe every new client fetches once) is reported apart as setup, as hivemind's DHT bootstrap
is. The payload bytes the coordinator itself records per lease (`bytes_up`, `bytes_down` of
the rounds) are reported beside, as a check on the relay.

Loss. Both sides are measured the same way, `compression.evaluate_version` on the job's
held-out tail: hivemind's peer 0 at the end, the swarm's final version as downloaded from the
job's `merged` artifact. Wall time is training only on both sides: hivemind from its start
barrier to the last peer done, the swarm from its first round's opening to its last training
round's close (the outer step that publishes the final version).

Targets (issue 11): the swarm sends at least 10x fewer bytes than hivemind, at an equal or lower
final held-out loss, in no more wall time.

Defaults, and why. Both sides: tiny-llama, 2 processes, batches of 8 x 64 tokens, AdamW at lr
1e-3 (the compression bench's choice for this model and batch; for hivemind at 5 steps per
epoch it also did better than 3e-3 and 1e-2 in one-off runs), no warm-up (hivemind's optimizer
has none), 307,200 tokens. The swarm: 6 rounds of H = 50 steps, `int4` pseudo-gradients with
error feedback and `int4+zstd` broadcast deltas (in the compression bench int4 ended level with
fp32), plain averaging as the outer step (outer lr 1, no momentum: better than Nesterov over a
handful of rounds, also from the compression bench), AdamW state kept per client. hivemind:
an all-reduce every 5 local steps per peer (target batch 80 sequences), 8-bit compression; how
bytes and loss move with that cadence is in docs/benchmarks.md.
"""

from __future__ import annotations

import signal
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from safetensors.torch import load_file

from swarm.coordinator.bench import targets_table
from swarm.coordinator.bench.compression import evaluate_version
from swarm.coordinator.bench.hivemind_peers import (
    COMPRESSIONS,
    HivemindRunConfig,
    compression_name,
    require_hivemind,
    run_hivemind,
)
from swarm.coordinator.bench.relay import Relay
from swarm.coordinator.demo import download_artifact, start_client, start_coordinator, stop_process
from swarm.coordinator.jobs import prepare_tokens
from swarm.models import build_model, preset_config
from swarm.scheduler import JobSpec

BYTES_RATIO_TARGET = 10.0


@dataclass(frozen=True, kw_only=True)
class PeersBenchConfig:
    """Attributes:
    peers: processes on each side (hivemind peers; swarm clients, plus the coordinator).
    model: a `swarm.models` preset.
    seq_len: tokens per sequence.
    batch_size: sequences per local step, on both sides.
    rounds: the swarm's DiLoCo rounds (outer steps).
    inner_steps: the swarm's H, AdamW steps per train task; every client runs one task per
        round, so each side takes `rounds * inner_steps` local steps per process.
    steps_per_epoch: hivemind's local steps per process between gradient averages; its
        `target_batch_size` is `peers * batch_size * steps_per_epoch`. Must divide
        `rounds * inner_steps`.
    inner_lr: AdamW learning rate on both sides.
    weight_decay: AdamW weight decay on both sides.
    max_grad_norm: gradient clipping on both sides (the swarm per inner step, hivemind per
        averaged step).
    codec: the swarm's chain for pseudo-gradients of large tensors.
    broadcast_codec: the swarm's chain for the deltas between versions that clients download.
    outer_lr: the swarm's outer Nesterov learning rate.
    outer_momentum: the swarm's outer Nesterov momentum.
    hivemind_compression: `8bit`, `fp16` or `none`, for hivemind's gradient and parameter
        averaging alike.
    num_shards: contiguous shards of the corpus (0: one per process).
    seed: model init and data order, both sides.
    timeout_s: each side's run at most.
    work_dir: keep both runs' logs and data here (None: temporary folders).
    """

    peers: int = 2
    model: str = "tiny-llama"
    seq_len: int = 64
    batch_size: int = 8
    rounds: int = 6
    inner_steps: int = 50
    steps_per_epoch: int = 5
    inner_lr: float = 1e-3
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    codec: str = "int4"
    broadcast_codec: str = "int4+zstd"
    outer_lr: float = 1.0
    outer_momentum: float = 0.0
    hivemind_compression: str = "8bit"
    num_shards: int = 0
    seed: int = 0
    timeout_s: float = 1800.0
    work_dir: Path | None = None

    def __post_init__(self) -> None:
        limits: dict[str, tuple[float, float]] = {
            "peers": (2, 16),
            "seq_len": (8, 131_072),
            "batch_size": (1, 4096),
            "rounds": (1, 10_000),
            "inner_steps": (1, 100_000),
            "steps_per_epoch": (1, 100_000),
            "inner_lr": (1e-9, 1.0),
            "weight_decay": (0.0, 1.0),
            "max_grad_norm": (0.0, 1e6),
            "outer_lr": (1e-6, 10.0),
            "outer_momentum": (0.0, 0.999),
            "num_shards": (0, 100_000),
            "seed": (0, 2**63 - 1),
            "timeout_s": (1.0, 7 * 86_400.0),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")
        if (self.rounds * self.inner_steps) % self.steps_per_epoch:
            raise ValueError(
                f"steps_per_epoch must divide rounds * inner_steps = "
                f"{self.rounds * self.inner_steps}, got {self.steps_per_epoch}"
            )
        if self.hivemind_compression not in COMPRESSIONS:
            raise ValueError(
                f"hivemind_compression must be one of {', '.join(COMPRESSIONS)}, "
                f"got {self.hivemind_compression!r}"
            )
        if self.work_dir is not None:
            object.__setattr__(self, "work_dir", Path(self.work_dir))
        self.hivemind_config()  # hivemind's side of the same checks
        self.job_spec()  # the swarm validates the model, codecs and shards

    @property
    def total_tokens(self) -> int:
        return self.rounds * self.peers * self.inner_steps * self.batch_size * self.seq_len

    def hivemind_config(self, work_dir: Path | None = None) -> HivemindRunConfig:
        return HivemindRunConfig(
            peers=self.peers,
            model=self.model,
            total_tokens=self.total_tokens,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            inner_lr=self.inner_lr,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            steps_per_epoch=self.steps_per_epoch,
            compression=self.hivemind_compression,
            num_shards=self.num_shards,
            seed=self.seed,
            timeout_s=self.timeout_s,
            work_dir=work_dir,
        )

    def job_spec(self) -> JobSpec:
        """The swarm's job: the data and model of `hivemind_config().job_spec()`, trained
        with DiLoCo rounds."""
        return JobSpec(
            model=self.model,
            method="lm",
            num_rounds=self.rounds,
            inner_steps=self.inner_steps,
            # Every task exactly `inner_steps`: the token budget is the same as hivemind's.
            work_sizing="fixed",
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            inner_lr=self.inner_lr,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            warmup_steps=0,  # as hivemind's AdamW, which has none
            # Each client keeps its AdamW moments from round to round, as DiLoCo's replicas
            # (and hivemind's peers, whose optimizer lives as long as they do).
            inner_state="worker",
            outer_lr=self.outer_lr,
            outer_momentum=self.outer_momentum,
            min_clients=self.peers,
            max_clients=self.peers,
            # Every round waits for every client's task: no token of the budget is dropped.
            round_quorum=1.0,
            num_shards=self.num_shards or self.peers,
            codec=self.codec,
            broadcast_codec=self.broadcast_codec,
            eval_examples=128,  # what `evaluate_version` reads (the tail has fewer windows)
            seed=self.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["work_dir"] = str(self.work_dir) if self.work_dir is not None else None
        values["total_tokens"] = self.total_tokens
        return values


QUICK = PeersBenchConfig(rounds=2, inner_steps=10, steps_per_epoch=5, timeout_s=300.0)


# -- the swarm side ----------------------------------------------------------------------------


def _get(http: httpx.Client, path: str) -> Any:
    response = http.get(path)
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    return response.json()


def _wait(
    what: str,
    ready: Callable[[], Any],
    deadline: float,
    processes: list[Any],
    work: Path,
) -> Any:
    """Poll `ready` until it returns something truthy; fail early if a process died."""
    while True:
        value = ready()
        if value:
            return value
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"a swarm process exited with {process.returncode} while waiting for "
                    f"{what}; logs in {work}"
                )
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}; logs in {work}")
        time.sleep(0.2)


def run_swarm(
    config: PeersBenchConfig, say: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Train `config`'s job with a coordinator and `peers` client processes on loopback."""
    spec = config.job_spec()
    launched = time.monotonic()
    deadline = launched + config.timeout_s
    with ExitStack() as stack:
        if config.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swarm-peers-")))
        else:
            work = config.work_dir / "swarm"
            work.mkdir(parents=True, exist_ok=True)
        log = stack.enter_context((work / "coordinator.log").open("w"))
        coordinator, ready = start_coordinator(work / "coordinator", log)
        stack.callback(stop_process, coordinator, signal.SIGTERM)
        relay = Relay(ready["grpc_port"])
        stack.callback(relay.close)
        target = f"127.0.0.1:{relay.port}"
        processes = [coordinator]
        for index in range(config.peers):
            client_log = stack.enter_context((work / f"client-{index}.log").open("w"))
            client = start_client(target, f"peers-{index}", work / f"client-{index}", client_log)
            stack.callback(stop_process, client)
            processes.append(client)
        http = stack.enter_context(
            httpx.Client(base_url=f"http://127.0.0.1:{ready['http_port']}", timeout=60.0)
        )
        say(f"swarm: coordinator up, waiting for {config.peers} clients to join via {target}")
        joined_at: list[float] = []

        def joined() -> bool:
            """All clients registered and done with their download probe (each registers
            again with the rate it measured); a client whose probe failed is waited for 30 s."""
            workers = _get(http, "/v1/swarm/workers")["data"]
            if len(workers) < config.peers:
                return False
            joined_at.append(time.monotonic())
            probed = all(w["download_bytes_per_s"] for w in workers)
            return probed or time.monotonic() - joined_at[0] > 30.0

        _wait(f"{config.peers} clients to join", joined, deadline, processes, work)
        setup = relay.snapshot()
        setup_s = time.monotonic() - launched
        hyperparameters = spec.to_dict()
        hyperparameters.pop("model")
        response = http.post(
            "/v1/fine_tuning/jobs", json={"model": spec.model, "hyperparameters": hyperparameters}
        )
        if response.status_code != 200:
            raise RuntimeError(f"creating the swarm job failed: {response.text[:300]}")
        job_id = response.json()["id"]
        say(
            f"swarm: job {job_id}, {spec.num_rounds} rounds of {spec.inner_steps} steps on "
            f"{config.peers} clients, codec {spec.codec}, broadcast {spec.broadcast_codec}"
        )
        shown: set[int] = set()

        def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = _get(http, f"/v1/fine_tuning/jobs/{job_id}")
            for r in _get(http, f"/v1/swarm/jobs/{job_id}/rounds")["data"]:
                if r["status"] == "closed" and r["num_train_tasks"] and r["round"] not in shown:
                    shown.add(r["round"])
                    say(
                        f"swarm: round {r['round']} closed, train loss {r['train_loss']:.4f}, "
                        f"{r['closed_at'] - r['opened_at']:.1f} s"
                    )
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        job = _wait(f"job {job_id} to finish", finished, deadline, processes, work)
        done = relay.snapshot()
        if job["status"] != "succeeded":
            raise RuntimeError(
                f"the swarm job {job['status']}: {(job.get('error') or {}).get('message')}; "
                f"logs in {work}"
            )
        rounds = _get(http, f"/v1/swarm/jobs/{job_id}/rounds")["data"]
        folder = work / "result"
        download_artifact(http, job_id, "merged", folder)
        final_eval_loss = evaluate_version(
            load_result(config, folder), _heldout(config), config.seq_len
        )
        num_connections = relay.num_connections
    training = [r for r in rounds if r["num_train_tasks"]]
    sent = {k: done[k] - setup[k] for k in done}
    wall_s = max(r["closed_at"] for r in training) - min(r["opened_at"] for r in training)
    report = {
        "system": "swarm",
        "peers": config.peers,
        "model": config.model,
        "tokens": sum(r["tokens"] for r in rounds),
        "rounds": len(training),
        "clients_per_round": [r["num_clients"] for r in training],
        "wall_s": wall_s,
        "job_s": max(r["closed_at"] for r in rounds) - min(r["opened_at"] for r in rounds),
        "setup_s": setup_s,
        "bytes_sent": sent["to_coordinator"] + sent["to_clients"],
        "bytes_sent_by_clients": sent["to_coordinator"],
        "bytes_sent_by_coordinator": sent["to_clients"],
        "setup_bytes": setup["to_coordinator"] + setup["to_clients"],
        "payload_bytes_up": sum(r["bytes_up"] for r in rounds),
        "payload_bytes_down": sum(r["bytes_down"] for r in rounds),
        # Round 0's downloads: the initial parameters in full (hivemind's peers build them from
        # the seed instead), the model config and the token shards.
        "payload_bytes_down_first_round": training[0]["bytes_down"],
        "tcp_connections": num_connections,
        "final_eval_loss": final_eval_loss,
        "swarm_eval_loss": job["swarm"]["eval_loss"],
        "swarm_initial_eval_loss": job["swarm"]["initial_eval_loss"],
        "train_loss": [r["train_loss"] for r in training],
        "compression": f"updates {spec.codec} (small tensors {spec.small_tensor_codec}), "
        f"broadcast deltas {spec.broadcast_codec}",
        "job_id": job_id,
        "spec": spec.to_dict(),
    }
    say(
        f"swarm: {report['tokens']:,} tokens in {wall_s:.1f} s, {report['bytes_sent']:,} bytes "
        f"on the wire, final held-out loss {final_eval_loss:.4f}"
    )
    return report


def _heldout(config: PeersBenchConfig) -> np.ndarray:
    _, heldout = prepare_tokens(config.job_spec())
    return np.asarray(heldout, dtype=np.int64)


def load_result(config: PeersBenchConfig, folder: Path) -> torch.nn.Module:
    """The preset model with the weights of a downloaded `merged` artifact."""
    model = build_model(preset_config(config.model), seed=config.seed)
    state: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(path)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings: the output head is the input embedding, which may be saved once.
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"the merged artifact does not match {config.model}: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    return model


def initial_eval_loss(config: PeersBenchConfig) -> float:
    """The held-out loss both sides start from (the preset at the seed)."""
    model = build_model(preset_config(config.model), seed=config.seed)
    return evaluate_version(model, _heldout(config), config.seq_len)


# -- the bench ---------------------------------------------------------------------------------


def run_bench(
    config: PeersBenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Both sides, one after the other; a JSON-ready report with `hivemind`, `swarm`, the
    ratios and the targets.

    Raises:
        RuntimeError: hivemind is not installed (with the install hint), or a side failed.
    """
    require_hivemind()
    say = progress or (lambda _: None)
    began = time.monotonic()
    hivemind_dir = config.work_dir / "hivemind" if config.work_dir is not None else None
    hivemind_config = config.hivemind_config(hivemind_dir)
    say(
        f"hivemind: {config.peers} peers, {hivemind_config.num_epochs} epochs of "
        f"{config.steps_per_epoch} local steps, {compression_name(hivemind_config)} ..."
    )
    hivemind = run_hivemind(hivemind_config, say)
    say(f"swarm: a coordinator and {config.peers} clients ...")
    swarm = run_swarm(config, say)
    report: dict[str, Any] = {
        "config": config.to_dict(),
        "initial_eval_loss": initial_eval_loss(config),
        "hivemind": {k: v for k, v in hivemind.items() if k != "per_peer"},
        "swarm": swarm,
        # The swarm's wire bytes against everything hivemind's peers hand to its daemon.
        "bytes_ratio": hivemind["bytes_sent_all"] / swarm["bytes_sent"],
        "loss_gap": swarm["final_eval_loss"] / hivemind["final_eval_loss"] - 1.0,
        "wall_ratio": swarm["wall_s"] / hivemind["wall_s"],
        "wall_s": time.monotonic() - began,
    }
    report["targets"] = check_targets(report)
    return report


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against what was measured."""
    swarm, hivemind = report["swarm"], report["hivemind"]
    return [
        {
            "name": "bytes",
            "target": f">= {BYTES_RATIO_TARGET:.0f}x fewer bytes than hivemind",
            "value": round(report["bytes_ratio"], 2),
            "met": report["bytes_ratio"] >= BYTES_RATIO_TARGET,
        },
        {
            "name": "loss",
            "target": "final held-out loss <= hivemind's",
            "value": round(report["loss_gap"], 4),
            "met": swarm["final_eval_loss"] <= hivemind["final_eval_loss"],
        },
        {
            "name": "wall time",
            "target": "wall time <= hivemind's",
            "value": round(report["wall_ratio"], 3),
            "met": swarm["wall_s"] <= hivemind["wall_s"],
        },
        {
            "name": "same tokens",
            "target": "both sides trained the same tokens",
            "value": swarm["tokens"] == hivemind["tokens"],
            "met": swarm["tokens"] == hivemind["tokens"] == report["config"]["total_tokens"],
        },
    ]


def render_tables(report: dict[str, Any]) -> str:
    """The report as Markdown tables (what `docs/benchmarks.md` shows)."""
    hivemind, swarm = report["hivemind"], report["swarm"]
    rows = [
        ("processes", f"{hivemind['peers']} peers", f"1 coordinator + {swarm['peers']} clients"),
        ("compression", hivemind["compression"], swarm["compression"]),
        (
            "averaging",
            f"{hivemind['epochs']} epochs: gradient all-reduce + AdamW step + parameter average",
            f"{swarm['rounds']} rounds of {report['config']['inner_steps']} AdamW steps + "
            "outer step",
        ),
        ("tokens trained", f"{hivemind['tokens']:,}", f"{swarm['tokens']:,}"),
        (
            "bytes sent (counted)",
            f"{hivemind['bytes_sent_all']:,} (payload to the p2p daemon)",
            f"{swarm['bytes_sent']:,} (TCP stream, both ways)",
        ),
        (
            "of which payload",
            f"{hivemind['bytes_sent']:,} (tensor streams)",
            f"{swarm['payload_bytes_up'] + swarm['payload_bytes_down']:,} "
            f"({swarm['payload_bytes_up']:,} up, {swarm['payload_bytes_down']:,} down)",
        ),
        ("wall time of training (s)", f"{hivemind['wall_s']:.1f}", f"{swarm['wall_s']:.1f}"),
        ("setup before training (s)", f"{hivemind['setup_s']:.1f}", f"{swarm['setup_s']:.1f}"),
        (
            "held-out loss, start -> end",
            f"{report['initial_eval_loss']:.4f} -> {hivemind['final_eval_loss']:.4f}",
            f"{report['initial_eval_loss']:.4f} -> {swarm['final_eval_loss']:.4f}",
        ),
    ]
    lines = ["| | hivemind | swarm |", "|---|---|---|"]
    lines += [f"| {name} | {a} | {b} |" for name, a, b in rows]
    lines += ["", *targets_table(report["targets"])]
    return "\n".join(lines)
