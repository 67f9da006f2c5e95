"""The worker's persistent Ed25519 identity."""

from __future__ import annotations

import stat
from pathlib import Path

from swarm.client.identity import load_or_create_key, public_key_bytes


def test_key_is_created_once_and_loaded_after(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "identity.key"
    created = load_or_create_key(path)
    assert path.is_file()
    loaded = load_or_create_key(path)
    assert public_key_bytes(loaded) == public_key_bytes(created)
    # The reloaded key signs as the same worker.
    signature = loaded.sign(b"result")
    created.public_key().verify(signature, b"result")


def test_key_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_key_file_is_not_rewritten_on_load(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    load_or_create_key(path)
    before = path.read_bytes()
    load_or_create_key(path)
    assert path.read_bytes() == before


def test_distinct_paths_give_distinct_identities(tmp_path: Path) -> None:
    first = load_or_create_key(tmp_path / "a.key")
    second = load_or_create_key(tmp_path / "b.key")
    assert public_key_bytes(first) != public_key_bytes(second)
    assert len(public_key_bytes(first)) == 32
