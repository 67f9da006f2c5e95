"""The volunteer worker: register, lease, fetch, train, submit, repeat.

A heartbeat thread keeps the session and the current lease alive. Stopping (Ctrl+C, SIGTERM)
interrupts the inner loop between steps and hands the task back, so nobody waits for a dead
lease; a lease the coordinator revokes (someone else finished the task) is abandoned the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swarm.client.account import load_token
from swarm.client.availability import MachineLoad, Schedule
from swarm.client.bandwidth import TokenBucket
from swarm.client.cache import BlobCache
from swarm.client.feedback import FeedbackStore
from swarm.client.hardware import (
    cached_download_rate,
    measure_download,
    profile_with_benchmark,
)
from swarm.client.identity import load_or_create_key, public_key_bytes
from swarm.client.outbox import FinishedResult, Outbox
from swarm.client.peers import Group, PeerAveraging, hivemind_installed
from swarm.client.settings import ClientSettings
from swarm.client.status import STATUS_FILE, StatusBoard
from swarm.client.transport import Stopped, Transport
from swarm.client.trust import PINS_FILE, CoordinatorTrust
from swarm.client.versions import VersionStore
from swarm.compression import CompressionPolicy, ErrorFeedback, encode_stream
from swarm.models import (
    AdapterConfig,
    InnerLoopConfig,
    InnerLoopInterrupted,
    InnerLoopResult,
    Objective,
    apply_adapter,
    build_model,
    config_from_bytes,
    is_lora,
    load_trainable_state,
    optimizer_state_mismatch,
    run_inner_loop,
)
from swarm.models.objectives import build_objective
from swarm.models.sources import load_weights
from swarm.protocol import PROTOCOL_VERSION, SwarmError, TransportError
from swarm.protocol import messages as m
from swarm.protocol.errors import (
    CompressionError,
    NotFoundError,
    ProtocolError,
    SchedulingError,
)
from swarm.protocol.limits import CHUNK_BYTES

logger = logging.getLogger(__name__)

#: how often a worker that may not work now (schedule, --idle-only) looks again.
AVAILABILITY_CHECK_S = 30.0

#: the longest a peer group's member waits for its leader's result while the leader's worker
#: still holds its task.
MAX_DEFER_S = 1800.0

CLIENT_VERSION = "0.1.0"


@dataclass
class WorkerStats:
    tasks_done: int = 0
    tasks_handed_back: int = 0
    tokens: int = 0


class Worker:
    def __init__(self, settings: ClientSettings, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.stats = WorkerStats()
        self._revoked = threading.Event()
        self._current_task: str | None = None
        self._cache = BlobCache(
            settings.data_dir / "blobs", max_bytes=int(settings.cache_max_gb * 1e9)
        )
        self._versions = VersionStore(self._cache)
        self._feedback = FeedbackStore(settings.data_dir / "feedback")
        self._outbox = Outbox(settings.data_dir / "outbox")
        self._models: dict[Any, tuple[torch.nn.Module, torch.nn.Module | None]] = {}
        # AdamW's state after this worker's last train task, for jobs that keep it (one job's
        # at a time: two optimizer moments per trainable value is the memory it costs).
        self._inner_state: tuple[str, dict[str, Any]] | None = None
        self._transport: Transport | None = None
        self._peers = (
            PeerAveraging(
                settings.peer_listen,
                tuple(a.strip() for a in settings.peer_announce.split(",") if a.strip()),
            )
            if settings.peer_averaging and hivemind_installed()
            else None
        )
        self._schedule = Schedule.parse(settings.schedule) if settings.schedule else None
        self._load = MachineLoad()
        self._load.others_share()  # the first sample: later ones measure since the last
        self.status = StatusBoard(
            settings.data_dir / STATUS_FILE,
            coordinator=settings.coordinator,
            name=settings.name,
            max_upload_mbps=settings.max_upload_mbps,
            max_download_mbps=settings.max_download_mbps,
        )

    def run(self) -> None:
        """Work until `stop` is set."""
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        key = load_or_create_key(self.settings.data_dir / "identity.key")
        benchmark = self.settings.data_dir / "benchmark.json"
        hardware = dataclasses.replace(
            self._limit_memory(profile_with_benchmark(benchmark)),
            download_bytes_per_s=cached_download_rate(benchmark, self.settings.coordinator),
        )
        self._key = key
        device = hardware.device_name if hardware.device_type != "cpu" else "CPU"
        self.status.update(
            device=f"{device} ({hardware.cpu_cores} cores)", state="connecting", detail=""
        )

        account_token = self.settings.account_token or load_token(self.settings.config_dir)

        def registration() -> m.RegisterWorkerRequest:
            """Signed afresh for every attempt: the coordinator checks how recent it is."""
            signed_at = time.time()
            public_key = public_key_bytes(key)
            return m.RegisterWorkerRequest(
                protocol_version=PROTOCOL_VERSION,
                name=self.settings.name,
                public_key=public_key,
                hardware=hardware,
                client_version=CLIENT_VERSION,
                signed_at_unix_s=signed_at,
                signature=key.sign(
                    m.registration_signing_bytes(public_key, self.settings.name, signed_at)
                ),
                account_token=account_token,
            )

        transport = Transport(
            self.settings.coordinator,
            registration,
            stop=self.stop,
            rpc_timeout_s=self.settings.rpc_timeout_s,
            max_backoff_s=self.settings.max_backoff_s,
            upload=TokenBucket(self.settings.max_upload_mbps),
            download=TokenBucket(self.settings.max_download_mbps),
            on_unreachable=lambda message: self.status.update(detail=message),
            trust=CoordinatorTrust(
                self.settings.data_dir / PINS_FILE,
                fingerprints=tuple(
                    f for f in self.settings.coordinator_fingerprint.split(",") if f.strip()
                ),
                ca_file=self.settings.tls_ca,
                insecure=self.settings.insecure,
                timeout_s=self.settings.rpc_timeout_s,
            ),
        )
        self._transport = transport
        heartbeat: threading.Thread | None = None
        try:
            transport.register()
            assert transport.registration is not None
            probe = transport.registration.probe_sha256
            if probe and not hardware.download_bytes_per_s:
                self.status.update(state="connecting", detail="measuring the download speed")
                try:
                    rate = measure_download(
                        (c.data for c in transport.fetch_blob(probe, 0, timeout_s=60.0)),
                        benchmark,
                        self.settings.coordinator,
                    )
                except SwarmError as exc:  # the speed is a hint; work goes on without it
                    logger.warning("could not measure the download speed: %s", exc)
                    rate = 0.0
                if rate:  # register again, so the coordinator knows the link from the start
                    hardware = dataclasses.replace(hardware, download_bytes_per_s=rate)
                    transport.register()
                    assert transport.registration is not None
            self.status.update(
                worker_id=transport.registration.session.worker_id,
                coordinator=transport.target,
                state="idle",
                detail="",
            )
            self._submit_finished(transport)
            heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
            heartbeat.start()
            while not self.stop.is_set():
                waiting = self._unavailable()
                if waiting:
                    self.status.update(state="waiting", detail=waiting, task_id="", steps=0)
                    self.stop.wait(AVAILABILITY_CHECK_S)
                    continue
                response = transport.lease_task(self._cache.largest())
                if response.task is None:
                    logger.debug("no task: %s", response.reason)
                    self.status.update(
                        state="idle",
                        detail=response.reason or "no work available; asking again soon",
                        task_id="",
                        job_id="",
                        steps=0,
                        loss=None,
                    )
                    self.stop.wait(response.retry_after_s * (0.75 + 0.5 * np.random.random()))
                    continue
                self._run_task(transport, response.task)
        except Stopped:
            pass
        finally:
            # gRPC aborts the process if a channel closes under a call still in flight on
            # another thread, so the heartbeat thread ends before the channel does.
            self.stop.set()
            if heartbeat is not None:
                heartbeat.join(timeout=self.settings.rpc_timeout_s + 1.0)
            transport.close()
            if self._peers is not None:
                self._peers.close()
            self.status.update(state="stopped", detail="", task_id="", steps=0)
            self.status.save()
            logger.info(
                "worker stopped: %d tasks done, %d handed back, %.1f MB down, %.1f MB up; "
                "parameters: %d full downloads, %d caught up from deltas (%d failed)",
                self.stats.tasks_done,
                self.stats.tasks_handed_back,
                transport.bytes_down / 1e6,
                transport.bytes_up / 1e6,
                self._versions.stats.full_downloads,
                self._versions.stats.delta_catch_ups,
                self._versions.stats.delta_failures,
            )

    def _limit_memory(self, hardware: m.HardwareProfile) -> m.HardwareProfile:
        """Offer jobs at most `--max-memory-gb`: the coordinator places by reported memory."""
        cap = int(self.settings.max_memory_gb * 1e9)
        if not cap or cap >= hardware.memory_bytes:
            return hardware
        if hardware.device_type in ("cuda", "rocm"):
            torch.cuda.set_per_process_memory_fraction(cap / hardware.memory_bytes)
        logger.info(
            "offering %.1f of this machine's %.1f GB to jobs (--max-memory-gb)",
            cap / 1e9,
            hardware.memory_bytes / 1e9,
        )
        return dataclasses.replace(hardware, memory_bytes=cap)

    def _unavailable(self) -> str:
        """Why the volunteer's limits say not to take work now ("" when they allow it)."""
        if self._schedule is not None and not self._schedule.now_open():
            return f"outside the schedule {self._schedule} (local time); waiting"
        if self.settings.idle_only:
            share = self._load.others_share()
            if share is not None and share > self.settings.idle_busy_share:
                return f"the machine is in use (other programs: {share:.0%} of the CPU); waiting"
        return ""

    def _heartbeat_loop(self) -> None:
        assert self._transport is not None
        interval = 5.0
        while not self.stop.wait(interval):
            task_id = self._current_task
            try:
                began = time.perf_counter()
                reply = self._transport.heartbeat([task_id] if task_id else [])
                self.status.update(
                    coordinator=self._transport.target,  # the one answering, after a failover
                    latency_ms=1e3 * (time.perf_counter() - began),
                    credits_granted=reply.credits_granted_micro / 1e6,
                    credits_pending=reply.credits_pending_micro / 1e6,
                    bytes_up=self._transport.bytes_up,
                    bytes_down=self._transport.bytes_down,
                )
                self.status.save()
                interval = reply.heartbeat_interval_s or interval
                if task_id and task_id in reply.revoked_task_ids:
                    logger.warning("task %s was revoked by the coordinator; abandoning it", task_id)
                    self._revoked.set()
            except SwarmError as exc:  # a missed heartbeat is not fatal; the lease has slack
                logger.debug("heartbeat failed: %s", exc)

    def _run_task(self, transport: Transport, task: m.Task) -> None:
        spec = task.train or task.evaluate
        if spec is None:
            logger.error(
                "task %s has a kind this client does not know; handing it back", task.task_id
            )
            self._hand_back(transport, task, m.FailureKind.ERROR, "unsupported task kind")
            return
        self._current_task = task.task_id
        self._revoked.clear()
        self._cache.begin_task()
        self.status.update(
            state="training" if task.train else "evaluating",
            detail="",
            task_id=task.task_id,
            job_id=task.job_id,
            step=0,
            steps=task.train.inner_steps if task.train else 0,
            loss=None,
        )
        try:
            began = time.perf_counter()
            model, objective = self._prepare(transport, task, spec)
            fetch_s = time.perf_counter() - began
            if task.evaluate is not None:
                self._evaluate(transport, task, task.evaluate, model, objective, fetch_s)
            else:
                assert task.train is not None
                self._train(transport, task, task.train, model, objective, fetch_s)
        except InnerLoopInterrupted as exc:
            if self._revoked.is_set():
                logger.info("abandoned task %s: %s", task.task_id, exc)
            else:
                logger.info("stopping: handing back task %s (%s)", task.task_id, exc)
                self._hand_back(transport, task, m.FailureKind.HANDBACK, "worker stopping")
        except torch.OutOfMemoryError as exc:
            self._hand_back(transport, task, m.FailureKind.OUT_OF_MEMORY, str(exc))
        except Stopped:
            self._hand_back(transport, task, m.FailureKind.HANDBACK, "worker stopping")
            raise
        except (SwarmError, FloatingPointError) as exc:
            logger.error("task %s failed: %s", task.task_id, exc)
            self._hand_back(transport, task, m.FailureKind.ERROR, str(exc))
        except Exception as exc:  # a bug or bad input we did not foresee: keep the worker alive
            logger.exception("task %s failed unexpectedly", task.task_id)
            self._hand_back(transport, task, m.FailureKind.ERROR, f"{type(exc).__name__}: {exc}")
        finally:
            self._current_task = None

    def _prepare(
        self, transport: Transport, task: m.Task, spec: m.TrainTask | m.EvaluateTask
    ) -> tuple[torch.nn.Module, Objective]:
        """The task's model at its version, and its objective over its data."""
        config = config_from_bytes(self._cache.get(spec.model_config_sha256, transport))
        model, reference = self._model(transport, config, spec)
        load_trainable_state(model, self._versions.params(task, transport))
        shard = self._cache.get(
            spec.tokens_sha256 if isinstance(spec, m.TrainTask) else spec.data_sha256, transport
        )
        objective = build_objective(
            spec.recipe.objective,
            shard,
            vocab_size=config["vocab_size"],
            seq_len=spec.seq_len,
            dpo_beta=spec.recipe.dpo_beta,
            reference=reference,
        )
        return model, objective

    def _model(
        self, transport: Transport, config: dict[str, Any], spec: m.TrainTask | m.EvaluateTask
    ) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """The job's model (kept between tasks) and, for full-weight DPO, its frozen reference."""
        key = (spec.model_config_sha256, tuple(spec.base_sha256s), repr(spec.recipe))
        if key in self._models:
            return self._models[key]
        self._models.clear()  # one job's model in memory at a time
        adapter = spec.recipe.adapter

        def base() -> torch.nn.Module:
            model = build_model(config)
            if spec.base_sha256s:
                load_weights(model, [self._cache.fetch(s, transport) for s in spec.base_sha256s])
            return model

        trains = (
            AdapterConfig(kind="full")
            if adapter.kind == "full"
            else AdapterConfig(
                kind=adapter.kind,
                rank=adapter.rank,
                alpha=adapter.alpha,
                dropout=adapter.dropout,
                target_modules=tuple(adapter.target_modules),
            )
        )
        model = apply_adapter(base(), trains)
        reference = None
        if spec.recipe.objective == "dpo" and not is_lora(model):
            reference = base().eval().requires_grad_(False)
        self._models[key] = (model, reference)
        return model, reference

    def _evaluate(
        self,
        transport: Transport,
        task: m.Task,
        spec: m.EvaluateTask,
        model: torch.nn.Module,
        objective: Objective,
        fetch_s: float,
    ) -> None:
        began = time.perf_counter()
        values = objective.evaluate(model, spec.batch_size, spec.max_examples)
        metrics = m.TaskMetrics(
            compute_s=time.perf_counter() - began,
            eval_loss=values["loss"],
            token_accuracy=values.get("token_accuracy", 0.0),
            reward_accuracy=values.get("reward_accuracy", 0.0),
            reward_margin=values.get("reward_margin", 0.0),
            examples=int(values["examples"]),
        )
        # Metrics only: nothing to keep on disk, and redoing an evaluation is cheap.
        empty = hashlib.sha256(b"").hexdigest()
        self._submit(transport, task.task_id, task.lease_deadline_unix_s, b"", empty, 0, metrics)
        logger.info(
            "task %s (job %s): evaluated version %d on %d held-out examples: %s; fetch %.1fs, "
            "compute %.1fs",
            task.task_id,
            task.job_id,
            task.version,
            metrics.examples,
            ", ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "examples"),
            fetch_s,
            metrics.compute_s,
        )

    def _train(
        self,
        transport: Transport,
        task: m.Task,
        spec: m.TrainTask,
        model: torch.nn.Module,
        objective: Objective,
        fetch_s: float,
    ) -> None:
        kept = self._inner_state
        state = kept[1] if spec.keep_inner_state and kept and kept[0] == task.job_id else None
        mismatch = optimizer_state_mismatch(state, model) if state is not None else ""
        if mismatch:  # kept for other parameters (the job's adapter changed): start afresh
            logger.warning("job %s: not resuming the inner optimizer (%s)", task.job_id, mismatch)
            state = None
        elif state is not None:
            logger.info("task %s: resuming job %s's inner optimizer", task.task_id, task.job_id)
        self._meet_peers(transport, task)
        result = self._inner_loop(task, spec, model, objective, state)
        self._inner_state = (task.job_id, result.optimizer_state) if spec.keep_inner_state else None
        metrics = m.TaskMetrics(
            loss_first=result.losses[0],
            loss_last=result.losses[-1],
            loss_mean=float(np.mean(result.losses)),
            tokens=result.tokens,
            compute_s=result.compute_s,
            steps=len(result.losses),
        )
        group = self._average_with_peers(transport, task, result.pseudo_gradient, result.tokens)
        if group is not None and group.leader != task.task_id:
            if self._defer_to_group(transport, task, group, metrics):
                return
            group = None  # the group's result will not come: send this worker's own
        if group is not None:
            try:
                self._send_update(transport, task, group.average, metrics, fetch_s, group.task_ids)
                return
            except ProtocolError as exc:  # the coordinator refused the group (a bogus member)
                logger.warning(
                    "task %s: the group's result was refused (%s); submitting this worker's own "
                    "update",
                    task.task_id,
                    exc,
                )
        self._send_update(transport, task, result.pseudo_gradient, metrics, fetch_s, [])

    def _send_update(
        self,
        transport: Transport,
        task: m.Task,
        update: dict[str, torch.Tensor],
        metrics: m.TaskMetrics,
        fetch_s: float,
        group_task_ids: list[str],
    ) -> None:
        """Encode `update` into the outbox and submit it (for a peer group: `group_task_ids`)."""
        payload, digest, size, feedback = self._encode(task, update)
        self._outbox.seal(
            FinishedResult(
                task_id=task.task_id,
                job_id=task.job_id,
                lease_deadline_unix_s=task.lease_deadline_unix_s,
                payload=payload,
                payload_sha256=digest,
                payload_size=size,
                metrics=metrics,
                group_task_ids=group_task_ids,
            )
        )
        logger.info("task %s: result saved (%d bytes); submitting", task.task_id, size)
        self.status.update(
            state="submitting", tokens_per_s=metrics.tokens / max(metrics.compute_s, 1e-9)
        )
        # Until the coordinator answers, the result stays on disk for a restart to send again.
        try:
            accepted = self._submit(
                transport,
                task.task_id,
                task.lease_deadline_unix_s,
                payload,
                digest,
                size,
                metrics,
                group_task_ids=group_task_ids,
            )
        except TransportError:
            raise  # kept in the outbox: the next start sends it again
        except SwarmError:  # refused: there is nothing to send again
            self._outbox.remove(task.task_id)
            feedback.discard()
            raise
        self._outbox.remove(task.task_id)
        if accepted:  # the coordinator has what was sent: the rest is the new residual
            feedback.commit()
            self._feedback.save(task.job_id, feedback)
        else:
            feedback.discard()
        logger.info(
            "task %s (job %s round %d): loss %.4f -> %.4f, %d tokens, fetch %.1fs, "
            "compute %.1fs, %.1f KB up",
            task.task_id,
            task.job_id,
            task.round,
            metrics.loss_first,
            metrics.loss_last,
            metrics.tokens,
            fetch_s,
            metrics.compute_s,
            size / 1e3,
        )

    def _meet_peers(self, transport: Transport, task: m.Task) -> None:
        """Before training, tell the coordinator where this worker listens for peer averaging
        and connect to the round's workers already known, so the group is ready by the end."""
        assert task.train is not None
        if task.train.peer_averaging is None or self._peers is None:
            return
        try:
            self._peers.connect(transport.find_peers(task.task_id, self._peers.addrs()))
        except Exception as exc:  # averaging tries again at the end, or falls back
            logger.warning(
                "task %s: could not announce this worker to peers: %s", task.task_id, exc
            )

    def _average_with_peers(
        self, transport: Transport, task: m.Task, update: dict[str, torch.Tensor], tokens: int
    ) -> Group | None:
        """Average with the round's other workers if the job asks for it and this client can."""
        assert task.train is not None
        if task.train.peer_averaging is None:
            return None
        if self._peers is None:
            logger.info(
                "task %s: job %s averages with peers, but %s; submitting this worker's own update",
                task.task_id,
                task.job_id,
                "hivemind is not installed (pip install swarmclient[hivemind])"
                if self.settings.peer_averaging
                else "--no-peer-averaging is set",
            )
            return None
        self.status.update(state="averaging")
        # Any failure, `FindPeers` included, is logged there and comes back as None.
        return self._peers.average(
            task,
            update,
            tokens,
            find_peers=lambda addrs: transport.find_peers(task.task_id, addrs),
        )

    def _defer_to_group(
        self, transport: Transport, task: m.Task, group: Group, metrics: m.TaskMetrics
    ) -> bool:
        """Submit an empty result naming the group leader's; False if the leader's result did
        not arrive in time (the caller then submits this worker's own update)."""
        assert task.train is not None and task.train.peer_averaging is not None
        self.status.update(state="submitting")
        empty = hashlib.sha256(b"").hexdigest()
        # The coordinator says "not yet" only while the leader's worker holds its task (a large
        # upload on a slow link takes a while); once it is gone, it says so and this worker
        # sends its own update. The cap is for a leader that holds its task and never sends.
        deadline = time.monotonic() + MAX_DEFER_S
        while True:
            try:
                accepted = self._submit(
                    transport,
                    task.task_id,
                    task.lease_deadline_unix_s,
                    b"",
                    empty,
                    0,
                    metrics,
                    group_payload_task_id=group.leader,
                )
            except NotFoundError:  # the leader's result is not in yet
                if time.monotonic() < deadline and not self.stop.wait(0.25):
                    continue
                reason: object = f"it did not arrive in {MAX_DEFER_S:.0f}s"
            except (SchedulingError, ProtocolError) as exc:  # it will not come
                reason = exc
            else:
                if accepted:
                    logger.info(
                        "task %s (job %s round %d): loss %.4f -> %.4f, %d tokens, sent with task "
                        "%s's result",
                        task.task_id,
                        task.job_id,
                        task.round,
                        metrics.loss_first,
                        metrics.loss_last,
                        metrics.tokens,
                        group.leader,
                    )
                return True  # accepted, or ignored (the round closed): nothing more to send
            logger.warning(
                "task %s: the group's result (task %s) will not speak for it (%s); submitting "
                "this worker's own update",
                task.task_id,
                group.leader,
                reason,
            )
            return False

    def _inner_loop(
        self,
        task: m.Task,
        spec: m.TrainTask,
        model: torch.nn.Module,
        objective: Objective,
        state: dict[str, Any] | None,
    ) -> InnerLoopResult:
        return run_inner_loop(
            model,
            objective,
            InnerLoopConfig(
                steps=spec.inner_steps,
                batch_size=spec.batch_size,
                learning_rate=spec.learning_rate,
                weight_decay=spec.weight_decay,
                max_grad_norm=spec.max_grad_norm,
                warmup_steps=spec.warmup_steps,
                seed=spec.seed,
            ),
            samples=spec.sample_indices,
            on_step=self._on_step(task),
            optimizer_state=state,
        )

    def _on_step(self, task: m.Task):  # type: ignore[no-untyped-def]
        assert task.train is not None
        total = task.train.inner_steps
        marks = {max(0, total * q // 4 - 1) for q in (1, 2, 3)}

        def on_step(step: int, loss: float) -> bool:
            self.status.update(step=step + 1, loss=loss)
            if step in marks:
                logger.info("task %s: step %d/%d, loss %.4f", task.task_id, step + 1, total, loss)
            return not (self.stop.is_set() or self._revoked.is_set())

        return on_step

    def _encode(
        self, task: m.Task, update: dict[str, torch.Tensor]
    ) -> tuple[Path, str, int, ErrorFeedback]:
        """Compress `update` with the job's policy and residuals into the outbox.

        Returns the spool file, its digest and size, and the job's error feedback with the new
        residuals staged. A residual gone bad (overflow, a damaged file) is dropped once rather
        than blocking every later task.
        """
        assert task.train is not None
        policy = CompressionPolicy(**dataclasses.asdict(task.train.update_policy))
        feedback = self._feedback.get(task.job_id)

        def spool() -> tuple[Path, str, int]:
            assert task.train is not None
            stream = encode_stream(update, policy, seed=task.train.seed, feedback=feedback)
            return self._outbox.spool(task.task_id, stream)

        try:
            return (*spool(), feedback)
        except CompressionError as exc:
            if not len(feedback):
                raise
            logger.warning("job %s: %s; dropping the residuals", task.job_id, exc)
            feedback.clear()
        return (*spool(), feedback)

    def _submit_finished(self, transport: Transport) -> None:
        """Send the results that were finished when the client last stopped (a crash, a kill)."""
        for result in self._outbox.finished():
            logger.info(
                "re-submitting task %s (job %s), finished before the client stopped",
                result.task_id,
                result.job_id,
            )
            try:
                self._submit(
                    transport,
                    result.task_id,
                    result.lease_deadline_unix_s,
                    result.payload,
                    result.payload_sha256,
                    result.payload_size,
                    result.metrics,
                    group_task_ids=result.group_task_ids,
                )
            except TransportError as exc:
                logger.warning("could not re-submit task %s: %s", result.task_id, exc)
            # Its error-feedback residual was not kept: the next update starts from the last
            # accepted one's.
            self._outbox.remove(result.task_id)

    def _submit(
        self,
        transport: Transport,
        task_id: str,
        lease_deadline_unix_s: float,
        payload: bytes | Path,
        digest: str,
        size: int,
        metrics: m.TaskMetrics,
        *,
        group_task_ids: list[str] | None = None,
        group_payload_task_id: str = "",
    ) -> bool:
        """Send a result; True if the coordinator accepted it."""
        group_task_ids = group_task_ids or []
        signature = self._key.sign(
            m.result_signing_bytes(task_id, digest, metrics, group_task_ids, group_payload_task_id)
        )

        def attempt(session: m.Session) -> m.SubmitResultResponse:
            header = m.ResultHeader(
                session=session,
                task_id=task_id,
                metrics=metrics,
                payload_sha256=digest,
                payload_size=size,
                signature=signature,
                group_task_ids=group_task_ids,
                group_payload_task_id=group_payload_task_id,
            )
            return transport.submit_result(header, payload, CHUNK_BYTES, timeout_s=300.0)

        # Submitting is retried even while stopping: finished work is never thrown away.
        for failures in range(1000):
            try:
                response = attempt(transport.session)
                break
            except TransportError as exc:
                if time.time() > lease_deadline_unix_s + 3600:
                    raise
                logger.warning("submitting task %s failed (%s); retrying", task_id, exc)
                if failures >= 2:
                    transport.recheck()  # a coordinator with a new certificate: stop, say so
                transport.pause(failures, stoppable=False)
        if response.accepted:
            self.stats.tasks_done += 1
            self.stats.tokens += metrics.tokens
            self.status.update(tasks_done=self.stats.tasks_done)
        else:
            logger.info("task %s: %s", task_id, response.message)
        return response.accepted

    def _hand_back(
        self, transport: Transport, task: m.Task, kind: m.FailureKind, message: str
    ) -> None:
        try:
            transport.report_failure(task.task_id, kind, message)
            self.stats.tasks_handed_back += 1
            self.status.update(tasks_handed_back=self.stats.tasks_handed_back)
        except SwarmError as exc:  # the lease will expire on its own
            logger.warning("could not hand back task %s: %s", task.task_id, exc)
