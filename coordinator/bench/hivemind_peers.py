"""The hivemind side of `swarm bench peers`: the same tiny model, data and token budget trained
by N `hivemind.Optimizer` peers on loopback, for comparison with the swarm's DiLoCo rounds.

Each peer is its own process (`python -m swarm.coordinator.bench.hivemind_peers`): the first
starts the DHT and writes its multiaddrs to a file, the others join it. Every peer builds the
`tiny-llama` preset with the same seed, trains on the shards `r, r + N, ...` of the built-in
corpus (tokenized and split by the swarm's own `prepare_tokens`), `batch_size` windows per
local step in the seeded order `sample_order` gives, and takes part in standard hivemind
collaborative training (`use_local_updates=False`): gradients accumulate locally until the
peers together have `N * batch_size * steps_per_epoch` sequences, are averaged with one
all-reduce, and every peer applies the same AdamW step; parameters are then averaged as well
(hivemind's default `average_state_every=1`), which undoes the drift lossy compression causes.

Two changes to hivemind 1.1.12 apply inside the peer processes only:

- Its 8-bit codec's `extract` calls `int()` on a one-element array, which numpy >= 2.4
  refuses (TypeError); the replacement reads element 0. Installed only if numpy raises.
- Its progress tracker also ends an epoch when an *estimated* arrival time passes, which
  extrapolates peers that have already finished their share; epochs could then close with
  fewer samples than the target. Here an epoch closes only once the target is reported, and a
  peer that has done its `steps_per_epoch` steps waits for the others, so every epoch is
  exactly `target_batch_size` sequences and the token budget is exact.

Bytes are counted in each peer by wrapping hivemind's two send paths (no other counter exists):
`P2P.send_raw_data` (stream RPCs: all-reduce parts, matchmaking, state downloads) and the
daemon control channel's `write_pbmsg` (unary RPCs: the DHT, progress reports, and small
control messages). Counters are shared `multiprocessing.Value`s created before hivemind forks
its DHT and averager processes; stream bytes are attributed to the gradient or the state
averager by process id. Only traffic during training (from the start barrier to the end
barrier) counts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from swarm.coordinator.bench.compression import evaluate_version
from swarm.coordinator.jobs import prepare_tokens
from swarm.models import (
    LanguageModeling,
    batches_of,
    build_model,
    preset_config,
    sample_order,
)
from swarm.scheduler import JobSpec, task_seed

logger = logging.getLogger(__name__)

HIVEMIND_HINT = "hivemind is not installed: pip install 'swarmclient[hivemind]'"
COMPRESSIONS = ("8bit", "fp16", "none")
RUN_ID = "swarm-bench-peers"
ADAMW_BETAS = (0.9, 0.95)  # as the swarm's inner loop (`swarm.models.training`)


@dataclass(frozen=True, kw_only=True)
class HivemindRunConfig:
    """Attributes:
    peers: peer processes.
    model: a `swarm.models` preset.
    total_tokens: tokens trained by all peers together; a whole number of epochs of
        `peers * batch_size * seq_len * steps_per_epoch` tokens.
    batch_size: sequences per local step.
    seq_len: tokens per sequence.
    inner_lr: AdamW learning rate (one AdamW step per epoch, on the averaged gradient).
    weight_decay: AdamW weight decay.
    max_grad_norm: the averaged gradient is clipped to this norm before each step (0: off).
    steps_per_epoch: local steps each peer accumulates before the peers average gradients.
    average_state_every: average parameters every this many epochs (hivemind's default 1).
    compression: `8bit` (hivemind's uniform 8-bit quantization for tensors of at least
        `small_tensor_elements` elements, fp16 below: the swarm's job default splits the same
        way), `fp16` or `none`; for gradient and parameter averaging alike.
    small_tensor_elements: the size under which a tensor travels as fp16 under `8bit`.
    num_shards: contiguous shards of the corpus (0: one per peer); peer r trains on
        shards r, r + peers, ...
    seed: model init and data order.
    matchmaking_time_s: how long an averaging round gathers peers at most (a round starts
        as soon as all `peers` joined).
    averaging_timeout_s: how long an all-reduce may take before a peer gives up.
    timeout_s: the whole run, from launching the first peer.
    work_dir: where peers write logs, reports and final parameters (None: a new temporary
        directory, kept).
    """

    peers: int = 2
    model: str = "tiny-llama"
    total_tokens: int = 40_960
    batch_size: int = 8
    seq_len: int = 64
    inner_lr: float = 1e-3
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    steps_per_epoch: int = 10
    average_state_every: int = 1
    compression: str = "8bit"
    small_tensor_elements: int = 4096
    num_shards: int = 0
    seed: int = 0
    matchmaking_time_s: float = 2.0
    averaging_timeout_s: float = 30.0
    timeout_s: float = 300.0
    work_dir: Path | None = None

    def __post_init__(self) -> None:
        limits: dict[str, tuple[float, float]] = {
            "peers": (2, 64),
            "batch_size": (1, 4096),
            "seq_len": (8, 131_072),
            "inner_lr": (1e-9, 1.0),
            "weight_decay": (0.0, 1.0),
            "max_grad_norm": (0.0, 1e6),
            "steps_per_epoch": (1, 100_000),
            "average_state_every": (1, 100_000),
            "small_tensor_elements": (0, 2**40),
            "num_shards": (0, 100_000),
            "seed": (0, 2**63 - 1),
            "matchmaking_time_s": (0.1, 600.0),
            "averaging_timeout_s": (1.0, 3600.0),
            "timeout_s": (1.0, 7 * 86_400.0),
        }
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(
                f"compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}"
            )
        if 0 < self.num_shards < self.peers:
            raise ValueError(
                f"num_shards must be 0 or at least peers ({self.peers}), got {self.num_shards}"
            )
        per_epoch = self.tokens_per_epoch
        if self.total_tokens < per_epoch or self.total_tokens % per_epoch:
            raise ValueError(
                f"total_tokens must be a positive multiple of peers * batch_size * seq_len * "
                f"steps_per_epoch = {per_epoch}, got {self.total_tokens}"
            )
        if self.work_dir is not None:
            object.__setattr__(self, "work_dir", Path(self.work_dir))

    @property
    def tokens_per_epoch(self) -> int:
        return self.peers * self.batch_size * self.seq_len * self.steps_per_epoch

    @property
    def num_epochs(self) -> int:
        return self.total_tokens // self.tokens_per_epoch

    @property
    def steps_per_peer(self) -> int:
        return self.num_epochs * self.steps_per_epoch

    def job_spec(self) -> JobSpec:
        """The swarm job whose data (shards, held-out tail) and model both sides train."""
        return JobSpec(
            model=self.model,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            inner_lr=self.inner_lr,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            num_shards=self.num_shards or self.peers,
            seed=self.seed,
        )

    def to_json(self) -> str:
        values = asdict(self)
        values["work_dir"] = str(self.work_dir) if self.work_dir is not None else None
        return json.dumps(values)

    @classmethod
    def from_json(cls, text: str) -> HivemindRunConfig:
        values = json.loads(text)
        if values.get("work_dir") is not None:
            values["work_dir"] = Path(values["work_dir"])
        return cls(**values)


def require_hivemind() -> None:
    """Raise RuntimeError with the install hint if hivemind cannot be imported."""
    try:
        import hivemind  # noqa: F401
    except ImportError:
        raise RuntimeError(HIVEMIND_HINT) from None


def compression_name(config: HivemindRunConfig) -> str:
    if config.compression == "8bit":
        return f"hivemind uniform 8-bit (tensors >= {config.small_tensor_elements} elements) + fp16"
    return {"fp16": "hivemind fp16", "none": "none (fp32)"}[config.compression]


# -- the launcher ---------------------------------------------------------------------------


def run_hivemind(
    config: HivemindRunConfig, say: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Train `config` with N hivemind peer processes on loopback and merge their reports.

    Returns a JSON-ready dict: `system`, `peers`, `tokens`, `wall_s` (training, from the start
    barrier to the last peer done), `setup_s` (launch to start barrier: interpreters, imports,
    DHT, optimizer), `total_s`, `bytes_sent` (stream payload: tensors and matchmaking),
    `bytes_sent_gradients`, `bytes_sent_state`, `bytes_sent_all` (with DHT and control
    traffic), `final_eval_loss` (peer 0's model), `max_param_diff` and `mean_param_diff`
    (between the peers' final parameters; compare `mean_param_change`, how far peer 0's moved
    from the initial model), `epochs`, `averaged_epochs_with_all_peers` (epochs whose gradient
    all-reduce included every peer, on every peer), `state_averages_with_all_peers`,
    `averaging_failures`, `compression`, `config`, and `per_peer` (each peer's report).

    Raises:
        RuntimeError: hivemind is missing, a peer failed, or the run exceeded `timeout_s`.
    """
    require_hivemind()
    work_dir = config.work_dir or Path(tempfile.mkdtemp(prefix="swarm-hivemind-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    maddrs_file = work_dir / "maddrs.json"
    maddrs_file.unlink(missing_ok=True)
    launched = time.time()
    deadline = time.monotonic() + config.timeout_s
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(_launch_peer(config, 0, work_dir, maddrs_file=maddrs_file))
        initial_peers = _wait_for_maddrs(maddrs_file, processes[0], work_dir, deadline)
        say(f"hivemind: DHT up at {initial_peers[0]}, starting {config.peers - 1} more peer(s)")
        for rank in range(1, config.peers):
            processes.append(_launch_peer(config, rank, work_dir, initial_peers=initial_peers))
        for rank, process in enumerate(processes):
            remaining = deadline - time.monotonic()
            try:
                returncode = process.wait(timeout=max(remaining, 0.1))
            except subprocess.TimeoutExpired:
                raise RuntimeError(
                    f"hivemind run exceeded timeout_s={config.timeout_s:g}; peer {rank} log:\n"
                    f"{_log_tail(work_dir, rank)}"
                ) from None
            if returncode != 0:
                raise RuntimeError(
                    f"hivemind peer {rank} exited with {returncode}; its log:\n"
                    f"{_log_tail(work_dir, rank)}"
                )
            say(f"hivemind: peer {rank} done")
    finally:
        for process in processes:
            _stop_group(process)
    report = merge_reports(
        config,
        [json.loads((work_dir / f"peer{r}.json").read_text()) for r in range(config.peers)],
        launched=launched,
    )
    report["total_s"] = time.time() - launched
    report["work_dir"] = str(work_dir)
    say(
        f"hivemind: {report['tokens']:,} tokens in {report['wall_s']:.1f} s, "
        f"{report['bytes_sent']:,} bytes sent, final held-out loss "
        f"{report['final_eval_loss']:.4f}"
    )
    return report


def _launch_peer(
    config: HivemindRunConfig,
    rank: int,
    work_dir: Path,
    *,
    maddrs_file: Path | None = None,
    initial_peers: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "swarm.coordinator.bench.hivemind_peers",
        "--rank",
        str(rank),
        "--peers",
        str(config.peers),
        "--config",
        config.to_json(),
        "--out",
        str(work_dir / f"peer{rank}.json"),
    ]
    if maddrs_file is not None:
        command += ["--maddrs-out", str(maddrs_file)]
    if initial_peers:
        command += ["--initial-peers", *initial_peers]
    with open(work_dir / f"peer{rank}.log", "wb") as log:
        # A session of its own: the peer's DHT, averager and p2pd processes go with it.
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_for_maddrs(
    path: Path, first: subprocess.Popen[bytes], work_dir: Path, deadline: float
) -> list[str]:
    while not path.exists():
        if first.poll() is not None:
            raise RuntimeError(
                f"hivemind peer 0 exited with {first.returncode} before its DHT was up; its "
                f"log:\n{_log_tail(work_dir, 0)}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"hivemind peer 0 did not start its DHT; its log:\n{_log_tail(work_dir, 0)}"
            )
        time.sleep(0.05)
    maddrs: list[str] = json.loads(path.read_text())
    return maddrs


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a peer and everything it started (it leads its own process group)."""
    if process.poll() is None:
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # leftovers, such as a p2pd whose parent died


def _log_tail(work_dir: Path, rank: int, num_chars: int = 4000) -> str:
    path = work_dir / f"peer{rank}.log"
    return path.read_text(errors="replace")[-num_chars:] if path.exists() else "(no log)"


def merge_reports(
    config: HivemindRunConfig, peers: list[dict[str, Any]], *, launched: float
) -> dict[str, Any]:
    """One report from the peers' reports (ordered by rank)."""
    params = [load_file(p["params_file"])["params"] for p in peers]
    max_param_diff = max(float((p - params[0]).abs().max()) for p in params)
    mean_param_diff = max(float((p - params[0]).abs().mean()) for p in params)
    ready_at = min(p["ready_at"] for p in peers)
    n = config.peers
    stream = sum(p["stream_bytes"] for p in peers)
    return {
        "system": "hivemind",
        "peers": n,
        "model": config.model,
        "num_params": peers[0]["num_params"],
        "tokens": sum(p["tokens"] for p in peers),
        "steps_per_peer": config.steps_per_peer,
        "target_batch_size": n * config.batch_size * config.steps_per_epoch,
        "wall_s": max(p["done_at"] for p in peers) - ready_at,
        "setup_s": ready_at - launched,
        "bytes_sent": stream,
        "bytes_sent_gradients": sum(p["stream_bytes_gradients"] for p in peers),
        "bytes_sent_state": sum(p["stream_bytes_state"] for p in peers),
        "bytes_sent_all": stream + sum(p["control_bytes"] for p in peers),
        "final_eval_loss": peers[0]["final_eval_loss"],
        "max_param_diff": max_param_diff,
        "mean_param_diff": mean_param_diff,
        "mean_param_change": peers[0]["mean_param_change"],
        "epochs": min(p["epochs"] for p in peers),
        "averaged_epochs_with_all_peers": min(
            sum(size == n for size in p["gradient_group_sizes"]) for p in peers
        ),
        "state_averages_with_all_peers": min(
            sum(size == n for size in p["state_group_sizes"]) for p in peers
        ),
        "averaging_failures": sum(p["averaging_failures"] for p in peers),
        "compression": compression_name(config),
        "config": json.loads(config.to_json()),
        "per_peer": [{k: v for k, v in p.items() if k != "params_file"} for p in peers],
    }


# -- one peer -------------------------------------------------------------------------------


class _ClippedAdamW(torch.optim.AdamW):
    """AdamW that clips its gradients to `max_grad_norm` first, as the swarm's inner loop
    does per step; here hivemind steps it once per epoch, on the averaged gradient."""

    def __init__(self, params: Any, *, max_grad_norm: float, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.max_grad_norm = max_grad_norm

    def step(self, closure: Any = None) -> Any:
        if self.max_grad_norm > 0:
            grads = [
                p for group in self.param_groups for p in group["params"] if p.grad is not None
            ]
            torch.nn.utils.clip_grad_norm_(grads, self.max_grad_norm)
        return super().step(closure)


class _Traffic:
    """Payload bytes this peer's processes send, in counters shared across hivemind's forks."""

    def __init__(self) -> None:
        # Shared memory that hivemind's DHT and averager processes inherit: they are forked
        # (the default start method on Linux up to Python 3.13) after `install`.
        self.gradients = multiprocessing.Value("q", 0)
        self.state = multiprocessing.Value("q", 0)
        self.other_streams = multiprocessing.Value("q", 0)
        self.control = multiprocessing.Value("q", 0)
        self.gradient_pid = multiprocessing.Value("q", 0)
        self.state_pid = multiprocessing.Value("q", 0)

    def install(self) -> None:
        """Wrap hivemind's send paths; call before the DHT starts (it forks)."""
        from hivemind.p2p import P2P
        from hivemind.p2p.p2p_daemon_bindings import control

        send_raw_data, write_pbmsg = P2P.send_raw_data, control.write_pbmsg
        traffic = self

        async def counted_send_raw_data(data: bytes, writer: Any, **kwargs: Any) -> None:
            pid = os.getpid()
            counter = (
                traffic.gradients
                if pid == traffic.gradient_pid.value
                else traffic.state
                if pid == traffic.state_pid.value
                else traffic.other_streams
            )
            with counter.get_lock():
                counter.value += len(data)
            await send_raw_data(data, writer, **kwargs)

        async def counted_write_pbmsg(writer: Any, message: Any) -> None:
            with traffic.control.get_lock():
                traffic.control.value += message.ByteSize()
            await write_pbmsg(writer, message)

        P2P.send_raw_data = staticmethod(counted_send_raw_data)
        control.write_pbmsg = counted_write_pbmsg

    def snapshot(self) -> dict[str, int]:
        return {
            "stream_bytes_gradients": int(self.gradients.value),
            "stream_bytes_state": int(self.state.value),
            "stream_bytes_other": int(self.other_streams.value),
            "control_bytes": int(self.control.value),
        }


class _AveragingLog(logging.Handler):
    """Group sizes of the averaging rounds, from hivemind's own status messages (its only
    record of them); the optimizer logs them at INFO with `verbose=True`."""

    PATTERNS = {
        "gradient": re.compile(r"^Averaged gradients with (\d+) peers"),
        "state": re.compile(r"^Averaged parameters with (\d+) peers"),
    }
    FAILURES = ("Averaging gradients failed", "Averaging failed", "Proceeding with local")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.group_sizes: dict[str, list[int]] = {"gradient": [], "state": []}
        self.failures = 0
        self.out_of_sync = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for kind, pattern in self.PATTERNS.items():
            match = pattern.match(message)
            if match:
                self.group_sizes[kind].append(int(match.group(1)))
        if message.startswith(self.FAILURES):
            self.failures += 1
        if message.startswith("Peer is out of sync"):
            self.out_of_sync += 1


def _fix_numpy_quantization() -> bool:
    """Make hivemind 1.1.12's 8-bit `extract` work on numpy >= 2.4; True if it was needed."""
    try:
        int(np.frombuffer(np.int64(1).tobytes(), count=1, dtype=np.int64))
        return False
    except TypeError:
        pass
    from hivemind.compression.quantization import Quantization

    def extract(self: Any, serialized: Any) -> torch.Tensor:
        # As hivemind's, but element 0: numpy >= 2.4 no longer converts a 1-element array.
        size = int(np.frombuffer(serialized.buffer, count=1, dtype=np.int64)[0])
        codebook = np.frombuffer(serialized.buffer, offset=8, count=size, dtype=self.codebook_dtype)
        indices = np.frombuffer(
            serialized.buffer, offset=8 + codebook.nbytes, dtype=self.indices_dtype
        )
        quantized = torch.as_tensor(indices, dtype=torch.int64).reshape(tuple(serialized.size))
        values = torch.as_tensor(codebook).to(dtype=getattr(torch, serialized.dtype))
        return values[quantized].requires_grad_(serialized.requires_grad)

    Quantization.extract = extract
    return True


def _make_compression(config: HivemindRunConfig) -> Any:
    from hivemind.compression import (
        Float16Compression,
        NoCompression,
        SizeAdaptiveCompression,
        Uniform8BitQuantization,
    )

    if config.compression == "8bit":
        _fix_numpy_quantization()
        return SizeAdaptiveCompression(
            threshold=max(config.small_tensor_elements, 1),
            less=Float16Compression(),
            greater_equal=Uniform8BitQuantization(),
        )
    return Float16Compression() if config.compression == "fp16" else NoCompression()


def _make_optimizer(config: HivemindRunConfig, dht: Any, model: torch.nn.Module) -> Any:
    """A `hivemind.Optimizer` whose epochs close on the reported target only (see the module
    docstring), with `finish_epoch` for a peer that has done its share of an epoch."""
    import hivemind
    from hivemind.optim.grad_averager import GradientAverager
    from hivemind.optim.progress_tracker import ProgressTracker

    class ExactTracker(ProgressTracker):
        @property
        def ready_to_update_epoch(self) -> bool:
            return bool(
                self.global_epoch > self.local_progress.epoch
                or self.global_progress.samples_accumulated >= self.target_batch_size
            )

    class LockstepOptimizer(hivemind.Optimizer):
        def _make_progress_tracker(self, target_batch_size: int, **kwargs: Any) -> Any:
            return ExactTracker(
                dht=self.dht,
                prefix=self.run_id,
                target_batch_size=target_batch_size,
                client_mode=self.client_mode,
                status_loglevel=self.status_loglevel,
                start=True,
                **kwargs,
            )

        def finish_epoch(self, epoch: int, deadline: float) -> None:
            """Wait until the others have reported their samples, then average and step
            (unless this peer's last `step` already did), as `step` would."""
            while self.local_epoch < epoch:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"epoch {epoch} did not close in time")
                # What `step` does between batches: (re)schedule the averaging rounds once the
                # epoch's end is near. Without it, a peer whose last step came early enough
                # would still hold the previous epoch's finished round, and `step` skips
                # gradient averaging for such a round.
                self._maybe_schedule_gradient_averaging()
                self._maybe_schedule_state_averaging()
                if self.tracker.ready_to_update_epoch:
                    self.state_averager.step(apply_delayed_updates=True)
                    self._update_global_epoch(grad_scaler=None)
                else:
                    time.sleep(0.01)

    compression = _make_compression(config)
    averager_opts = {
        "target_group_size": config.peers,  # start a round as soon as everyone is in
        "request_timeout": min(1.0, config.matchmaking_time_s / 2),
    }
    return LockstepOptimizer(
        dht=dht,
        run_id=RUN_ID,
        target_batch_size=config.peers * config.batch_size * config.steps_per_epoch,
        batch_size_per_step=config.batch_size,
        optimizer=lambda params: _ClippedAdamW(
            params,
            lr=config.inner_lr,
            weight_decay=config.weight_decay,
            betas=ADAMW_BETAS,
            max_grad_norm=config.max_grad_norm,
        ),
        params=model.parameters(),
        use_local_updates=False,
        matchmaking_time=config.matchmaking_time_s,
        averaging_timeout=config.averaging_timeout_s,
        grad_compression=compression,
        state_averaging_compression=compression,
        average_state_every=config.average_state_every,
        # `averager_opts` reach only the state averager; the gradient averager gets them here.
        grad_averager_factory=partial(GradientAverager, **averager_opts),
        averager_opts=averager_opts,
        tracker_opts={
            "min_refresh_period": 0.05,
            "max_refresh_period": 0.5,
            "default_refresh_period": 0.5,
        },
        verbose=True,
    )


def _dht_barrier(dht: Any, name: str, rank: int, num_peers: int, deadline: float) -> None:
    """Wait until all `num_peers` peers reached barrier `name` (a DHT key, one subkey each)."""
    from hivemind.utils import get_dht_time

    key = f"{RUN_ID}_barrier_{name}"
    dht.store(key, subkey=rank, value=True, expiration_time=get_dht_time() + 600)
    while True:
        found = dht.get(key, latest=True)
        if found is not None and len(found.value) >= num_peers:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {name!r}: not all {num_peers} peers arrived")
        time.sleep(0.05)


def run_peer(
    config: HivemindRunConfig,
    rank: int,
    *,
    initial_peers: Sequence[str],
    out: Path,
    maddrs_out: Path | None = None,
) -> dict[str, Any]:
    """One peer: join (or start) the DHT, train its share, write its report to `out`."""
    started_at = time.time()
    deadline = time.monotonic() + config.timeout_s
    torch.set_num_threads(1)
    require_hivemind()
    import hivemind

    traffic = _Traffic()
    traffic.install()
    averaging_log = _AveragingLog()
    for name in ("hivemind.optim.optimizer", "hivemind.optim.state_averager"):
        logging.getLogger(name).addHandler(averaging_log)
    warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
    # Its "accumulated N samples" line would come every refresh (50 ms).
    logging.getLogger("hivemind.optim.progress_tracker").setLevel(logging.WARNING)

    dht = hivemind.DHT(
        start=True,
        initial_peers=list(initial_peers),
        host_maddrs=["/ip4/127.0.0.1/tcp/0"],  # loopback only
        nat_port_map=False,
        auto_nat=False,
    )
    if maddrs_out is not None:
        staging = maddrs_out.with_suffix(".tmp")
        staging.write_text(json.dumps([str(a) for a in dht.get_visible_maddrs()]))
        staging.rename(maddrs_out)

    spec = config.job_spec()
    shards, heldout = prepare_tokens(spec)
    tokens = np.concatenate(shards[rank :: config.peers])
    objective = LanguageModeling(tokens, config.seq_len)
    steps = config.steps_per_peer
    samples = sample_order(
        objective.num_samples, steps * config.batch_size, task_seed(config.seed, 0, rank)
    )
    batches = batches_of(samples, steps, config.batch_size)
    model = build_model(preset_config(config.model), seed=config.seed)
    model.train()
    initial = torch.cat([p.detach().flatten() for p in model.parameters()])
    optimizer = _make_optimizer(config, dht, model)
    traffic.gradient_pid.value = optimizer.grad_averager.pid
    traffic.state_pid.value = optimizer.state_averager.pid

    _dht_barrier(dht, "start", rank, config.peers, deadline)
    ready_at = time.time()
    before = traffic.snapshot()
    logger.info("peer %d: training %d steps in %d epochs", rank, steps, config.num_epochs)
    num_tokens, losses = 0, []
    torch.manual_seed(task_seed(config.seed, 0, rank))
    for epoch in range(config.num_epochs):
        for batch in batches[epoch * config.steps_per_epoch : (epoch + 1) * config.steps_per_epoch]:
            loss, batch_tokens = objective.training_loss(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            num_tokens += batch_tokens
            losses.append(loss.item())
        optimizer.finish_epoch(epoch + 1, deadline)
        logger.info("peer %d: epoch %d done, last loss %.4f", rank, epoch + 1, losses[-1])
    # The last parameter averaging runs in the background: wait for it and apply it.
    optimizer.state_averager.step(wait_for_delayed_updates=True, apply_delayed_updates=True)
    done_at = time.time()
    _dht_barrier(dht, "done", rank, config.peers, deadline)
    after = traffic.snapshot()
    epochs = int(optimizer.local_epoch)
    optimizer.shutdown()
    dht.shutdown()

    params_file = out.with_suffix(".params.safetensors")
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    save_file({"params": flat.contiguous()}, params_file)
    sent = {name: after[name] - before[name] for name in after}
    report = {
        "rank": rank,
        "num_params": int(flat.numel()),
        "mean_param_change": float((flat - initial).abs().mean()),
        "steps": len(losses),
        "tokens": num_tokens,
        "epochs": epochs,
        "started_at": started_at,
        "ready_at": ready_at,
        "done_at": done_at,
        "stream_bytes": sent["stream_bytes_gradients"]
        + sent["stream_bytes_state"]
        + sent["stream_bytes_other"],
        **sent,
        "gradient_group_sizes": averaging_log.group_sizes["gradient"],
        "state_group_sizes": averaging_log.group_sizes["state"],
        "averaging_failures": averaging_log.failures,
        "out_of_sync": averaging_log.out_of_sync,
        "last_train_loss": losses[-1],
        "final_eval_loss": (
            evaluate_version(model, np.asarray(heldout, dtype=np.int64), config.seq_len)
            if rank == 0
            else None
        ),
        "params_file": str(params_file),
    }
    staging = out.with_suffix(".tmp")
    staging.write_text(json.dumps(report))
    staging.rename(out)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m swarm.coordinator.bench.hivemind_peers`: one peer of `run_hivemind`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--peers", type=int, required=True)
    parser.add_argument("--initial-peers", nargs="*", default=[])
    parser.add_argument("--config", required=True, help="HivemindRunConfig as JSON")
    parser.add_argument("--out", type=Path, required=True, help="where to write the report")
    parser.add_argument("--maddrs-out", type=Path, help="write the DHT's multiaddrs here")
    args = parser.parse_args(argv)
    config = HivemindRunConfig.from_json(args.config)
    if args.peers != config.peers:
        parser.error(f"--peers {args.peers} differs from the config's peers={config.peers}")
    if not 0 <= args.rank < config.peers:
        parser.error(f"--rank must be in [0, {config.peers - 1}]")
    if args.rank > 0 and not args.initial_peers:
        parser.error("--initial-peers is required for every peer but the first")
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s peer{args.rank} %(name)s: %(message)s"
    )
    status = 0
    try:
        run_peer(
            config,
            args.rank,
            initial_peers=args.initial_peers,
            out=args.out,
            maddrs_out=args.maddrs_out,
        )
    except Exception:
        logger.exception("peer %d failed", args.rank)
        status = 1
    # hivemind's background processes and pending asyncio tasks can hold the interpreter at
    # exit, worst after a failure; the launcher stops whatever is left of the process group.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
