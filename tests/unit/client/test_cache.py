"""The worker's blob cache, downloading from an in-process coordinator over loopback gRPC."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from swarm.client.cache import BlobCache, CacheUsage
from swarm.client.transport import Transport
from swarm.protocol.errors import IntegrityError, NotFoundError, ProtocolError
from swarm.protocol.limits import CHUNK_BYTES
from tests.conftest import LiveCoordinator, signed_registration

BLOB = os.urandom(2 * CHUNK_BYTES + 12_345)  # spans several streamed chunks


@pytest.fixture
def transport(live_coordinator: LiveCoordinator) -> Iterator[Transport]:
    key = Ed25519PrivateKey.generate()
    link = Transport(
        live_coordinator.target,
        lambda: signed_registration(key, name="cache-test"),
        stop=threading.Event(),
        rpc_timeout_s=10.0,
    )
    try:
        yield link
    finally:
        link.close()


@pytest.fixture
def blob_sha(live_coordinator: LiveCoordinator) -> str:
    return live_coordinator.services.blobs.put_bytes(BLOB)


@pytest.fixture
def cache(tmp_path: Path) -> BlobCache:
    return BlobCache(tmp_path / "cache")


def test_get_downloads_verifies_and_caches(
    cache: BlobCache, transport: Transport, blob_sha: str
) -> None:
    assert cache.get(blob_sha, transport) == BLOB
    assert transport.bytes_down == len(BLOB)
    assert cache.path(blob_sha).read_bytes() == BLOB
    assert not cache.path(blob_sha).with_suffix(".part").exists()


def test_second_get_does_not_touch_the_network(
    cache: BlobCache, transport: Transport, blob_sha: str, live_coordinator: LiveCoordinator
) -> None:
    cache.get(blob_sha, transport)
    downloaded = transport.bytes_down
    # Even with the coordinator's copy gone, the cached blob is served from disk.
    live_coordinator.services.blobs.path(blob_sha).unlink()
    assert cache.get(blob_sha, transport) == BLOB
    assert transport.bytes_down == downloaded


def test_a_new_cache_object_reuses_files_on_disk(
    cache: BlobCache, transport: Transport, blob_sha: str
) -> None:
    cache.get(blob_sha, transport)
    downloaded = transport.bytes_down
    assert BlobCache(cache.root).get(blob_sha, transport) == BLOB
    assert transport.bytes_down == downloaded


@pytest.mark.parametrize("already", [1, CHUNK_BYTES, CHUNK_BYTES + 7, len(BLOB) - 1, len(BLOB)])
def test_partial_download_resumes_with_only_the_remainder(
    cache: BlobCache, transport: Transport, blob_sha: str, already: int
) -> None:
    cache.path(blob_sha).with_suffix(".part").write_bytes(BLOB[:already])
    assert cache.get(blob_sha, transport) == BLOB
    assert transport.bytes_down == len(BLOB) - already
    assert cache.path(blob_sha).read_bytes() == BLOB
    assert not cache.path(blob_sha).with_suffix(".part").exists()


def test_corrupt_partial_download_is_discarded(
    cache: BlobCache, transport: Transport, blob_sha: str
) -> None:
    partial = cache.path(blob_sha).with_suffix(".part")
    partial.write_bytes(b"\x00" * 1000)
    with pytest.raises(IntegrityError, match="SHA-256"):
        cache.get(blob_sha, transport)
    assert not partial.exists()
    assert not cache.path(blob_sha).exists()
    # The next attempt starts over and succeeds.
    assert cache.get(blob_sha, transport) == BLOB
    assert hashlib.sha256(cache.path(blob_sha).read_bytes()).hexdigest() == blob_sha


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "A" * 64, "a" * 63, "a" * 64 + ".part", "", "../" + "a" * 61]
)
def test_a_name_that_is_not_a_sha256_is_refused_before_any_download(
    cache: BlobCache, transport: Transport, name: str
) -> None:
    with pytest.raises(ProtocolError):
        cache.get(name, transport)
    assert transport.bytes_down == 0
    assert list(cache.root.iterdir()) == []


def test_unknown_blob_is_not_found(cache: BlobCache, transport: Transport) -> None:
    sha = hashlib.sha256(b"the coordinator never had this").hexdigest()
    with pytest.raises(NotFoundError):
        cache.get(sha, transport)
    assert not cache.path(sha).exists()


def test_empty_blob(
    cache: BlobCache, transport: Transport, live_coordinator: LiveCoordinator
) -> None:
    sha = live_coordinator.services.blobs.put_bytes(b"")
    assert cache.get(sha, transport) == b""
    assert cache.path(sha).exists()


# -- the size cap ---------------------------------------------------------------------------


def _aged(cache: BlobCache, data: bytes, age_s: float) -> str:
    """Put `data` and make its last use `age_s` seconds ago."""
    digest = cache.put(data)
    when = cache.path(digest).stat().st_mtime - age_s
    os.utime(cache.path(digest), (when, when))
    return digest


def test_the_least_recently_used_blobs_go_first_when_over_the_cap(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, max_bytes=3_000)
    oldest = _aged(cache, b"a" * 1_000, 30)
    middle = _aged(cache, b"b" * 1_000, 20)
    newest = _aged(cache, b"c" * 1_000, 10)
    cache.begin_task()
    # Using the oldest makes it the most recent; adding a fourth evicts the middle one.
    assert cache.fetch(oldest, transport=None) == cache.path(oldest)  # type: ignore[arg-type]
    fourth = cache.put(b"d" * 1_000)
    assert [cache.has(d) for d in (oldest, middle, newest, fourth)] == [True, False, True, True]
    assert cache.usage().size_bytes == 3_000


def test_blobs_the_current_task_uses_are_never_evicted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = BlobCache(tmp_path, max_bytes=1_500)
    cache.begin_task()
    first = cache.put(b"a" * 1_000)
    second = cache.put(b"b" * 1_000)  # over the cap, but the task needs both
    assert cache.has(first) and cache.has(second)
    assert "over its" in caplog.text
    cache.begin_task()  # the next task: the space comes back
    third = cache.put(b"c" * 1_000)
    assert not cache.has(first) and not cache.has(second) and cache.has(third)


def test_no_cap_keeps_everything(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    digests = [cache.put(bytes([i]) * 10_000) for i in range(5)]
    assert all(cache.has(d) for d in digests)
    assert cache.evict() == 0


def test_clear_removes_blobs_and_partial_downloads_only(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "blobs")
    digest = cache.put(b"x" * 500)
    cache.path(digest).with_suffix(".part").write_bytes(b"y" * 100)
    (tmp_path / "blobs" / "README").write_text("not ours")
    assert cache.clear() == 600
    assert not cache.has(digest)
    assert (tmp_path / "blobs" / "README").exists()
    assert cache.usage() == CacheUsage(0, 0, 0)
