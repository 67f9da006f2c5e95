"""The coordinator's content-addressed blob store on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from swarm.coordinator.blobs import BlobStore, check_sha256
from swarm.protocol.errors import (
    CompressionError,
    IntegrityError,
    MessageTooLargeError,
    NotFoundError,
    ProtocolError,
)


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def stored_files(store: BlobStore) -> list[Path]:
    return sorted(p for p in store.root.rglob("*") if p.is_file())


def test_put_bytes_returns_sha256_and_reads_back(store: BlobStore) -> None:
    data = b"hello swarm" * 100
    sha = store.put_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.exists(sha)
    assert store.size(sha) == len(data)
    assert store.read(sha) == data
    assert store.path(sha) == store.root / sha[:2] / sha[2:4] / sha


def test_put_bytes_twice_keeps_one_copy(store: BlobStore) -> None:
    first = store.put_bytes(b"same")
    second = store.put_bytes(b"same")
    assert first == second
    assert stored_files(store) == [store.path(first)]


def test_unknown_blob_is_not_found(store: BlobStore) -> None:
    sha = hashlib.sha256(b"never stored").hexdigest()
    assert not store.exists(sha)
    with pytest.raises(NotFoundError):
        store.read(sha)
    with pytest.raises(NotFoundError):
        store.size(sha)
    with pytest.raises(NotFoundError):
        list(store.iter_chunks(sha))


@pytest.mark.parametrize("offset", [0, 1, 5, 9, 10, 24, 25])
def test_iter_chunks_from_offset_reassembles_the_tail(store: BlobStore, offset: int) -> None:
    data = bytes(range(25))
    sha = store.put_bytes(data)
    chunks = list(store.iter_chunks(sha, offset, chunk_bytes=10))
    assert b"".join(c[1] for c in chunks) == data[offset:]
    assert all(total == len(data) for _, _, total in chunks)
    assert all(0 < len(chunk) <= 10 for _, chunk, _ in chunks)
    expected_offset = offset
    for chunk_offset, chunk, _ in chunks:
        assert chunk_offset == expected_offset
        expected_offset += len(chunk)


def test_iter_chunks_at_end_of_blob_yields_nothing(store: BlobStore) -> None:
    sha = store.put_bytes(b"0123456789")
    assert list(store.iter_chunks(sha, 10)) == []


def test_iter_chunks_of_empty_blob_yields_one_empty_chunk(store: BlobStore) -> None:
    sha = store.put_bytes(b"")
    assert list(store.iter_chunks(sha)) == [(0, b"", 0)]


@pytest.mark.parametrize("offset", [11, 1000, -1])
def test_iter_chunks_outside_blob_is_a_protocol_error(store: BlobStore, offset: int) -> None:
    sha = store.put_bytes(b"0123456789")
    with pytest.raises(ProtocolError, match="outside"):
        list(store.iter_chunks(sha, offset))


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "../" + "a" * 61,
        "A" * 64,
        hashlib.sha256(b"x").hexdigest().upper(),
        "a" * 63,
        "a" * 65,
        "g" * 64,
        "",
        "/" + "a" * 63,
        "a" * 64 + "\n",
    ],
)
def test_names_that_are_not_sha256_are_rejected(store: BlobStore, name: str) -> None:
    with pytest.raises(ProtocolError):
        check_sha256(name)
    with pytest.raises(ProtocolError):
        store.path(name)
    with pytest.raises(ProtocolError):
        store.read(name)
    with pytest.raises(ProtocolError):
        store.exists(name)
    with pytest.raises(ProtocolError):
        list(store.iter_chunks(name))


def test_put_stream_joins_chunks(store: BlobStore) -> None:
    chunks = [b"abc", b"", b"defgh", b"i"]
    data = b"".join(chunks)
    sha = store.put_stream(
        iter(chunks),
        max_bytes=len(data),
        expected_sha256=hashlib.sha256(data).hexdigest(),
        expected_size=len(data),
    )
    assert store.read(sha) == data


def test_put_stream_over_limit_raises_and_leaves_nothing(store: BlobStore) -> None:
    consumed = []

    def chunks():
        for i in range(100):
            consumed.append(i)
            yield b"x" * 10

    with pytest.raises(MessageTooLargeError):
        store.put_stream(chunks(), max_bytes=25)
    # It stops reading as soon as the limit is passed, not after the whole stream.
    assert len(consumed) == 3
    assert stored_files(store) == []


def test_put_stream_exactly_at_limit_is_accepted(store: BlobStore) -> None:
    sha = store.put_stream([b"x" * 10, b"y" * 15], max_bytes=25)
    assert store.size(sha) == 25


def test_put_stream_with_wrong_sha_raises_and_leaves_nothing(store: BlobStore) -> None:
    data = b"payload"
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(IntegrityError, match="SHA-256"):
        store.put_stream([data], max_bytes=100, expected_sha256=wrong)
    assert stored_files(store) == []
    assert not store.exists(hashlib.sha256(data).hexdigest())
    assert not store.exists(wrong)


def test_put_stream_with_wrong_size_raises_and_leaves_nothing(store: BlobStore) -> None:
    data = b"payload"
    with pytest.raises(IntegrityError, match="announced"):
        store.put_stream(
            [data],
            max_bytes=100,
            expected_sha256=hashlib.sha256(data).hexdigest(),
            expected_size=len(data) + 1,
        )
    assert stored_files(store) == []
    assert list((store.root / "incoming").iterdir()) == []


def test_put_stream_check_sees_the_bytes_before_they_are_stored(store: BlobStore) -> None:
    seen: list[bytes] = []

    def check(path: Path) -> None:
        seen.append(path.read_bytes())
        assert not store.exists(hashlib.sha256(b"abcdef").hexdigest())

    sha = store.put_stream([b"abc", b"def"], max_bytes=6, check=check)
    assert seen == [b"abcdef"]
    assert store.read(sha) == b"abcdef"


def test_put_stream_check_failure_leaves_nothing(store: BlobStore) -> None:
    def reject(path: Path) -> None:
        raise CompressionError("not a payload")

    with pytest.raises(CompressionError):
        store.put_stream([b"garbage"], max_bytes=100, check=reject)
    assert stored_files(store) == []
    assert not store.exists(hashlib.sha256(b"garbage").hexdigest())


def test_a_failed_put_does_not_disturb_an_existing_blob(store: BlobStore) -> None:
    data = b"keep me"
    sha = store.put_bytes(data)
    with pytest.raises(IntegrityError):
        store.put_stream([data], max_bytes=100, expected_size=1)
    assert store.read(sha) == data
    assert stored_files(store) == [store.path(sha)]
