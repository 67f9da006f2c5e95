"""The parameter versions a worker holds, and catching up to a new one from deltas.

A task names the version to train from by digest and lists the deltas of the last few versions.
A worker that holds one of them (in memory, or rebuilt earlier and kept in the blob cache, so a
restart does not lose it) downloads only the deltas after it, applies them exactly as the
coordinator did, and checks the digest of the result; anything else falls back to downloading
the full parameters. Superseded versions of a job leave the cache as new ones arrive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import torch

from swarm.client.cache import BlobCache
from swarm.client.transport import Transport
from swarm.compression import CompressionPolicy, apply_delta
from swarm.models import state_from_bytes, state_to_bytes
from swarm.protocol import messages as m
from swarm.protocol.errors import CompressionError, SwarmError

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class VersionStats:
    full_downloads: int = 0
    delta_catch_ups: int = 0
    delta_failures: int = 0


@dataclasses.dataclass(frozen=True)
class _Held:
    job_id: str
    version: int
    params_sha256: str
    state: dict[str, torch.Tensor]


class VersionStore:
    def __init__(self, cache: BlobCache) -> None:
        self._cache = cache
        self._held: _Held | None = None  # one job at a time stays in memory
        self.stats = VersionStats()

    def params(self, task: m.Task, transport: Transport) -> dict[str, torch.Tensor]:
        """The trainable parameters `task` starts from."""
        spec = _spec(task)
        held = self._held if self._held and self._held.job_id == task.job_id else None
        if held is not None and held.params_sha256 == spec.params_sha256:
            return held.state
        state = self._catch_up(task, held, transport)
        if state is None:
            state = state_from_bytes(self._cache.get(spec.params_sha256, transport))
            self.stats.full_downloads += 1
        if held is not None:
            self._cache.discard(held.params_sha256)
        for delta in spec.param_deltas[:-1]:  # superseded versions leave the cache
            self._cache.discard(delta.params_sha256)
        self._held = _Held(task.job_id, task.version, spec.params_sha256, state)
        return state

    def _catch_up(
        self, task: m.Task, held: _Held | None, transport: Transport
    ) -> dict[str, torch.Tensor] | None:
        spec = _spec(task)
        deltas = spec.param_deltas
        if not deltas or deltas[-1].params_sha256 != spec.params_sha256:
            return None
        start = self._starting_point(deltas, held, transport)
        if start is None:
            return None
        index, state = start
        policy = CompressionPolicy(**dataclasses.asdict(spec.broadcast_policy))
        try:
            for delta in deltas[index:]:
                state = apply_delta(state, self._cache.get(delta.delta_sha256, transport), policy)
            data = state_to_bytes(state)
            if hashlib.sha256(data).hexdigest() != spec.params_sha256:
                raise CompressionError("the rebuilt version does not match its digest")
        except SwarmError as exc:
            logger.warning(
                "task %s: could not catch up to version %d from deltas (%s); downloading it",
                task.task_id,
                task.version,
                exc,
            )
            self.stats.delta_failures += 1
            return None
        self._cache.put(data)
        self.stats.delta_catch_ups += 1
        logger.info(
            "task %s: caught up to version %d with %d delta(s), %.1f KB",
            task.task_id,
            task.version,
            len(deltas) - index,
            sum(d.size_bytes for d in deltas[index:]) / 1e3,
        )
        return state

    def _starting_point(
        self, deltas: list[m.ParamDelta], held: _Held | None, transport: Transport
    ) -> tuple[int, dict[str, torch.Tensor]] | None:
        """Index of the first delta to apply, and the state it applies to: the version held in
        memory, else the newest listed version rebuilt earlier and kept in the cache."""
        if held is not None and 0 <= held.version + 1 - deltas[0].version < len(deltas):
            return held.version + 1 - deltas[0].version, held.state
        for i in range(len(deltas) - 2, -1, -1):
            if self._cache.has(deltas[i].params_sha256):
                data = self._cache.get(deltas[i].params_sha256, transport)
                return i + 1, state_from_bytes(data)
        return None


def _spec(task: m.Task) -> m.TrainTask | m.EvaluateTask:
    spec = task.train or task.evaluate
    if spec is None:
        raise SwarmError(f"task {task.task_id} names no parameters")
    return spec
