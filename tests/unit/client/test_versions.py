"""Catching up to a new version from deltas, and falling back to the full parameters.

Every blob a test needs is put in the worker's real cache first, so nothing is fetched: the
transport is never touched (None stands in for it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from swarm.client.cache import BlobCache
from swarm.client.versions import VersionStore
from swarm.compression import CompressionPolicy, make_delta
from swarm.models import state_to_bytes
from swarm.protocol import messages as m
from tests.unit.client.train_tasks import train_task

BROADCAST = CompressionPolicy(chain="int8+zstd", small_chain="fp32")
NO_TRANSPORT: Any = None


DELTAS: dict[int, bytes] = {}


def _versions(count: int) -> list[dict[str, torch.Tensor]]:
    """What workers hold for versions 0..count-1, built as the coordinator builds them (the
    delta that leads to each version is kept in DELTAS)."""
    generator = torch.Generator().manual_seed(0)
    exact = {"w": torch.randn(64, 96, generator=generator), "b": torch.randn(96)}
    held = [exact]
    for version in range(1, count):
        exact = {n: t + 0.01 * torch.randn(t.shape, generator=generator) for n, t in exact.items()}
        DELTAS[version], rebuilt = make_delta(held[-1], exact, BROADCAST, seed=version)
        held.append(rebuilt)
    return held


def _task(cache: BlobCache, held: list[dict[str, torch.Tensor]], versions: range) -> m.Task:
    """A task for the last of `held`, listing the deltas of `versions` (all put in the cache)."""
    deltas = [
        m.ParamDelta(
            version=v,
            delta_sha256=cache.put(DELTAS[v]),
            size_bytes=0,
            params_sha256=hashlib.sha256(state_to_bytes(held[v])).hexdigest(),
        )
        for v in versions
    ]
    return train_task(
        job_id="ftjob-x",
        version=len(held) - 1,
        params_sha256=cache.put(state_to_bytes(held[-1])),
        policy=m.CompressionPolicy(**BROADCAST.to_dict()),
        deltas=deltas,
    )


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_a_worker_holding_an_older_version_applies_the_deltas_after_it(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    held = _versions(4)
    store = VersionStore(cache)
    first = _task(cache, held[:2], range(1, 2))
    store.params(first, NO_TRANSPORT)  # version 1 is downloaded whole
    assert store.stats.full_downloads == 1
    latest = _task(cache, held, range(1, 4))
    assert _equal(store.params(latest, NO_TRANSPORT), held[3])
    assert (store.stats.full_downloads, store.stats.delta_catch_ups) == (1, 1)


def test_a_restarted_worker_starts_from_the_version_it_rebuilt_before(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    held = _versions(4)
    before = VersionStore(cache)
    before.params(_task(cache, held[:2], range(1, 2)), NO_TRANSPORT)
    before.params(_task(cache, held[:3], range(1, 3)), NO_TRANSPORT)  # rebuilds version 2
    after = VersionStore(cache)  # nothing in memory
    latest = _task(cache, held, range(1, 4))
    cache.discard(latest.train.params_sha256 if latest.train else "")  # not available whole
    assert _equal(after.params(latest, NO_TRANSPORT), held[3])
    assert (after.stats.full_downloads, after.stats.delta_catch_ups) == (0, 1)


def test_a_corrupt_delta_falls_back_to_the_full_parameters(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    held = _versions(3)
    store = VersionStore(cache)
    store.params(_task(cache, held[:2], range(1, 2)), NO_TRANSPORT)
    latest = _task(cache, held, range(1, 3))
    assert latest.train is not None
    latest.train.param_deltas[-1] = m.ParamDelta(
        version=2,
        delta_sha256=cache.put(b"SWPL not a delta"),
        size_bytes=16,
        params_sha256=latest.train.param_deltas[-1].params_sha256,
    )
    assert _equal(store.params(latest, NO_TRANSPORT), held[2])
    assert (store.stats.delta_failures, store.stats.full_downloads) == (1, 2)


def test_a_gap_in_the_deltas_means_a_full_download(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    held = _versions(4)
    store = VersionStore(cache)
    store.params(_task(cache, held[:2], range(1, 2)), NO_TRANSPORT)  # holds version 1
    latest = _task(cache, held, range(3, 4))  # only version 2 -> 3 is listed
    assert _equal(store.params(latest, NO_TRANSPORT), held[3])
    assert (store.stats.full_downloads, store.stats.delta_catch_ups) == (2, 0)


def test_a_delta_that_rebuilds_the_wrong_version_falls_back_to_the_full_parameters(
    tmp_path: Path,
) -> None:
    cache = BlobCache(tmp_path)
    held = _versions(3)
    store = VersionStore(cache)
    store.params(_task(cache, held[:2], range(1, 2)), NO_TRANSPORT)
    latest = _task(cache, held, range(2, 3))
    assert latest.train is not None
    wrong = latest.train.param_deltas[0]
    # A well-formed delta, but the one from version 0 to 1: the digest check must catch it.
    latest.train.param_deltas[0] = m.ParamDelta(
        version=2,
        delta_sha256=cache.put(DELTAS[1]),
        size_bytes=wrong.size_bytes,
        params_sha256=wrong.params_sha256,
    )
    assert _equal(store.params(latest, NO_TRANSPORT), held[2])
    assert (store.stats.delta_failures, store.stats.full_downloads) == (1, 2)
