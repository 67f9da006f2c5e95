"""Peer averaging: the workers of one round average their updates among themselves, and one
of them submits the group's average for all (jobs with `data_plane` "hivemind").

It saves the coordinator's link, which carries one update per group instead of one per worker.
The workers meet over hivemind: each runs a DHT node, tells the coordinator where it listens
(`FindPeers`) and connects to the workers of its round that the coordinator names. A
`DecentralizedAverager` per round then forms a group and all-reduces the pseudo-gradients
(fp16 on the wire, weighted by tokens), gathering each member's task id. Every member ends up
with the same average; the member with the smallest task id (the group's leader) submits it,
listing the group's tasks, and every other member submits an empty result that defers to the
leader's. A member that forms no group, or whose leader's result never arrives, submits its own
update as without peers, so a peer that disappears costs time, not work.

hivemind is optional (`pip install swarmclient[hivemind]`); without it, or with
`--no-peer-averaging`, the client submits every update itself.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from swarm.protocol import messages as m

logger = logging.getLogger(__name__)

MATCHMAKING_SHARE = 0.5
"""A group's leader waits this share of the job's `peer_timeout_s` for the rest of the round
before averaging with the members it has (it starts at once when the whole round is there): the
round waits for its stragglers anyway, and one more member is one fewer upload."""
_TASK_ID = re.compile(r"[\w.-]{1,64}")

CONNECT_TIMEOUT_S = 5.0
"""Connecting to one announced peer; an address that swallows connections costs no more."""
REQUEST_TIMEOUT_S = 3.0
"""hivemind's matchmaking requests (shorter than the matchmaking time, as hivemind advises)."""


def hivemind_installed() -> bool:
    return importlib.util.find_spec("hivemind") is not None


@dataclass(frozen=True, kw_only=True)
class Group:
    """The outcome of averaging in a group.

    Attributes:
        task_ids: the group's tasks, sorted; the first is the leader's.
        average: the token-weighted average of the members' updates.
    """

    task_ids: list[str]
    average: dict[str, torch.Tensor]

    @property
    def leader(self) -> str:
        return self.task_ids[0]


class PeerAveraging:
    """One hivemind DHT node for the client's lifetime, and an averager per round.

    Args:
        listen: the multiaddr the node listens on (`/ip4/0.0.0.0/tcp/0`: every interface, a
            free port).
        announce: multiaddrs to tell other workers instead of the ones the node sees itself
            listening on (a port forwarded through NAT); empty: those it sees.
    """

    def __init__(self, listen: str, announce: tuple[str, ...] = ()) -> None:
        self._listen = listen
        self._announce = announce
        self._dht: Any = None
        self._averager: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    def addrs(self) -> list[str]:
        """Where other workers reach this one (starts the DHT node on first use)."""
        dht = self._node()
        return list(self._announce) or [str(a) for a in dht.get_visible_maddrs()]

    def _node(self) -> Any:
        with self._lock:
            if self._dht is None:
                import hivemind
                from hivemind.utils.logging import use_hivemind_log_handler

                # hivemind's messages go through the client's logging. Its failures show as the
                # client's own fallback messages; its tracebacks and advice only at DEBUG.
                use_hivemind_log_handler("nowhere")
                logging.getLogger("hivemind").setLevel(
                    logging.WARNING if logger.isEnabledFor(logging.DEBUG) else logging.CRITICAL
                )
                began = time.perf_counter()
                with _keeping_sigint():
                    self._dht = hivemind.DHT(host_maddrs=[self._listen], start=True)
                logger.info(
                    "peer averaging: hivemind node up in %.1fs at %s",
                    time.perf_counter() - began,
                    ", ".join(str(a) for a in self._dht.get_visible_maddrs()),
                )
            return self._dht

    def connect(self, addrs: list[str]) -> int:
        """Connect to the workers at `addrs` (multiaddrs ending in /p2p/ID); how many answered."""
        by_peer: dict[str, list[str]] = {}
        for addr in addrs:
            match = re.search(r"/p2p/(\w+)$", addr)
            if match:
                by_peer.setdefault(match.group(1), []).append(addr)
        if not by_peer:
            return 0
        return int(self._node().run_coroutine(_Connect(by_peer)))

    def average(
        self,
        task: m.Task,
        update: dict[str, torch.Tensor],
        tokens: int,
        *,
        find_peers: Callable[[list[str]], list[str]],
    ) -> Group | None:
        """Average `update` with the other workers of `task`'s round; None if no group formed
        (then the caller submits `update` itself)."""
        assert task.train is not None and task.train.peer_averaging is not None
        began = time.perf_counter()
        try:
            group = self._average(task, update, tokens, find_peers)
        except Exception as exc:  # hivemind's failures are many and varied: fall back
            logger.warning(
                "task %s: peer averaging failed after %.1fs (%s); submitting this worker's own "
                "update",
                task.task_id,
                time.perf_counter() - began,
                exc,
            )
            return None
        if group is not None:
            logger.info(
                "task %s: averaged with %d peer(s) in %.1fs; %s",
                task.task_id,
                len(group.task_ids) - 1,
                time.perf_counter() - began,
                "this worker submits for the group"
                if group.leader == task.task_id
                else f"task {group.leader} submits for the group",
            )
        return group

    def _average(
        self,
        task: m.Task,
        update: dict[str, torch.Tensor],
        tokens: int,
        find_peers: Callable[[list[str]], list[str]],
    ) -> Group:
        """`average`'s work; raises on any failure."""
        assert task.train is not None and task.train.peer_averaging is not None
        plan = task.train.peer_averaging
        reached = self.connect(find_peers(self.addrs()))
        logger.info("task %s: looking for a group (%d peer(s) reached)", task.task_id, reached)
        names = sorted(update)
        averager = self._averager_for(task.job_id, plan, {n: update[n] for n in names})
        with averager.get_tensors() as tensors:
            for name, tensor in zip(names, tensors, strict=True):
                tensor.copy_(update[name])
        # The matchmaking key's bits come from the round's group key (which only workers handed
        # a task of the round know), so workers of other rounds, and outsiders, never meet it.
        key = plan.group_key or f"round {task.round}"
        averager.set_group_bits(f"{int(hashlib.sha256(key.encode()).hexdigest()[:16], 16):064b}")
        gathered = averager.step(
            gather={"task_id": task.task_id, "round": task.round},
            weight=float(max(tokens, 1)),
            timeout=plan.timeout_s,
        )
        if not gathered or len(gathered) < 2:
            raise RuntimeError("no group formed")
        with averager.get_tensors() as averaged:
            average = {
                name: tensor.clone().to(update[name].dtype)
                for name, tensor in zip(names, averaged, strict=True)
            }
        # Every member sees the same gathered data, so all of them decide alike below.
        if {g.get("round") for g in gathered.values() if isinstance(g, dict)} != {task.round}:
            raise RuntimeError("the group mixed workers of different rounds")
        task_ids = sorted(str(g.get("task_id")) for g in gathered.values() if isinstance(g, dict))
        if len(task_ids) != len(gathered) or len(set(task_ids)) != len(task_ids):
            raise RuntimeError(f"the group's task ids are inconsistent: {task_ids[:8]}")
        if not all(_TASK_ID.fullmatch(t) for t in task_ids):  # a peer lying about its task
            raise RuntimeError(f"a peer reported a malformed task id: {task_ids[:8]}")
        if task.task_id not in task_ids:
            raise RuntimeError("the group does not list this worker's task")
        return Group(task_ids=task_ids, average=average)

    def _averager_for(
        self, job_id: str, plan: m.PeerAveraging, update: dict[str, torch.Tensor]
    ) -> Any:
        """The job's averager, made on its first round and kept (hivemind's averagers are meant
        to live long: one started and shut down per round unsettles the DHT node)."""
        key = (job_id, plan, [(name, tuple(t.shape)) for name, t in update.items()])
        if self._averager is not None and self._averager[0] == key:
            return self._averager[1]
        if self._averager is not None:
            self._averager[1].shutdown()
            self._averager = None
        with _keeping_sigint():
            averager = self._make_averager(job_id, plan, update)
        self._averager = (key, averager)
        return averager

    def _make_averager(
        self, job_id: str, plan: m.PeerAveraging, update: dict[str, torch.Tensor]
    ) -> Any:
        from hivemind.averaging import DecentralizedAverager
        from hivemind.compression import Float16Compression

        return DecentralizedAverager(
            [torch.zeros(t.shape, dtype=torch.float32) for t in update.values()],
            dht=self._node(),
            prefix=re.sub(r"[^A-Za-z0-9_-]", "_", f"swarm_{job_id}"),
            start=True,
            target_group_size=max(2, plan.group_size),
            min_group_size=2,
            min_matchmaking_time=plan.timeout_s * MATCHMAKING_SHARE,
            request_timeout=min(REQUEST_TIMEOUT_S, plan.timeout_s / 4),
            allreduce_timeout=plan.timeout_s,
            compression=Float16Compression(),
        )

    def close(self) -> None:
        with self._lock:
            if self._averager is not None:
                self._averager[1].shutdown()
                self._averager = None
            if self._dht is not None:
                self._dht.shutdown()
                self._dht = None


@contextmanager
def _keeping_sigint() -> Iterator[None]:
    """hivemind's DHT and averager set SIGINT to be ignored in the process that starts them;
    the client's handler (stop, hand the task back) is put back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


class _Connect:
    """Connect a running DHT node to peers (run inside the node's process by `run_coroutine`:
    a class, not a closure, so it pickles into that process)."""

    def __init__(self, by_peer: dict[str, list[str]]) -> None:
        self.by_peer = by_peer

    async def __call__(self, dht: Any, node: Any) -> int:
        import asyncio

        from hivemind.p2p import PeerID
        from hivemind.utils.multiaddr import Multiaddr

        async def one(peer: str, addrs: list[str]) -> bool:
            try:  # an address another worker announced may be anything: none may stop the rest
                peer_id = PeerID.from_base58(peer)
                if peer_id == node.peer_id:
                    return False
                # The daemon wants transport addresses: without the /p2p/ID at the end.
                transports = [Multiaddr(a.rsplit("/p2p/", 1)[0]) for a in addrs]
                await asyncio.wait_for(
                    node.p2p._client.connect(peer_id, transports), CONNECT_TIMEOUT_S
                )
                ping = node.protocol.call_ping(peer_id)
                return await asyncio.wait_for(ping, CONNECT_TIMEOUT_S) is not None
            except Exception as exc:  # unreachable or malformed: another peer may still do
                logger.info("peer averaging: could not reach %s: %s", peer[:80], exc)
                return False

        results = await asyncio.gather(*(one(p, a) for p, a in self.by_peer.items()))
        return sum(results)
