"""The worker's blob cache: content-addressed files it never downloads twice.

Downloads go to `<sha256>.part` and resume from its size after a dropped connection; a blob
enters the cache only after its SHA-256 is verified.

The cache keeps to a size cap (`--cache-max-gb`) by evicting the least recently used blobs: a
file's modification time is its last use, refreshed on every hit. Blobs the current task has
used are never evicted under it, so a task whose inputs exceed the cap still runs (with a
warning) and the next task's eviction reclaims the space.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from swarm.client.transport import Transport
from swarm.protocol.errors import IntegrityError, ProtocolError, TransportError

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_RESUMES = 20


@dataclass(frozen=True)
class CacheUsage:
    num_blobs: int
    size_bytes: int
    partial_bytes: int


class BlobCache:
    def __init__(self, root: Path, max_bytes: int = 0) -> None:
        """`max_bytes`: the size cap (0: none)."""
        self.root = root
        self.max_bytes = max_bytes
        self._in_use: set[str] = set()
        root.mkdir(parents=True, exist_ok=True)

    def begin_task(self) -> None:
        """Blobs used from now on are the new task's: only those are safe from eviction."""
        self._in_use.clear()

    def _used(self, sha256: str, path: Path) -> None:
        self._in_use.add(sha256)
        with contextlib.suppress(FileNotFoundError):  # evicted by another process meanwhile
            os.utime(path)

    def usage(self) -> CacheUsage:
        blobs = self._entries()
        partial = sum(p.stat().st_size for p in self.root.glob("*.part") if p.is_file())
        return CacheUsage(len(blobs), sum(size for _, size, _ in blobs), partial)

    def _entries(self) -> list[tuple[float, int, str]]:
        """(last use, size, digest) of every cached blob."""
        entries = []
        for path in self.root.iterdir():
            if _SHA256.fullmatch(path.name):
                try:
                    stat = path.stat()
                except FileNotFoundError:  # evicted meanwhile
                    continue
                entries.append((stat.st_mtime, stat.st_size, path.name))
        return entries

    def evict(self) -> int:
        """Delete least recently used blobs until the cache fits its cap; returns bytes freed."""
        if not self.max_bytes:
            return 0
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        freed = 0
        for _, size, name in entries:
            if total <= self.max_bytes:
                break
            if name in self._in_use:
                continue
            (self.root / name).unlink(missing_ok=True)
            total -= size
            freed += size
        if total > self.max_bytes:
            logger.warning(
                "the blob cache holds %.1f GB, over its %.1f GB cap: the current task needs it "
                "all (raise --cache-max-gb to keep more)",
                total / 1e9,
                self.max_bytes / 1e9,
            )
        return freed

    def clear(self) -> int:
        """Delete every cached blob and partial download; returns bytes freed."""
        freed = 0
        for path in self.root.iterdir():
            if _SHA256.fullmatch(path.name) or path.suffix in (".part", ".new"):
                freed += path.stat().st_size
                path.unlink(missing_ok=True)
        self._in_use.clear()
        return freed

    def path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise ProtocolError(f"coordinator named a blob {sha256[:80]!r} that is not a SHA-256")
        return self.root / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def put(self, data: bytes) -> str:
        """Add bytes this worker built itself (a rebuilt version); returns their SHA-256."""
        sha256 = hashlib.sha256(data).hexdigest()
        final = self.path(sha256)
        if not final.exists():
            partial = final.with_suffix(".new")
            partial.write_bytes(data)
            os.replace(partial, final)
        self._used(sha256, final)
        self.evict()
        return sha256

    def largest(self, limit: int = 256) -> list[str]:
        """Digests of the cached blobs, largest first (what is worth telling the coordinator)."""
        entries = [(size, name) for _, size, name in self._entries()]
        return [name for _, name in sorted(entries, reverse=True)[:limit]]

    def discard(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def get(self, sha256: str, transport: Transport, timeout_s: float = 600.0) -> bytes:
        """The blob's bytes, from the cache or downloaded (resuming) and verified."""
        return self.fetch(sha256, transport, timeout_s).read_bytes()

    def fetch(self, sha256: str, transport: Transport, timeout_s: float = 600.0) -> Path:
        """The blob's path in the cache, downloading (resuming) and verifying it if needed."""
        final = self.path(sha256)
        if final.exists():
            self._used(sha256, final)
            return final
        partial = final.with_suffix(".part")
        for attempt in range(MAX_RESUMES):
            offset = partial.stat().st_size if partial.exists() else 0
            try:
                with partial.open("ab") as out:
                    for chunk in transport.fetch_blob(sha256, offset, timeout_s):
                        if chunk.offset != offset:
                            raise ProtocolError(
                                f"blob {sha256}: chunk at {chunk.offset}, expected {offset}"
                            )
                        out.write(chunk.data)
                        offset += len(chunk.data)
                break
            except TransportError as exc:
                logger.warning(
                    "download of blob %s interrupted at byte %d (%s); resuming",
                    sha256[:12],
                    offset,
                    exc,
                )
                transport.pause(attempt)
        else:
            raise TransportError(f"could not download blob {sha256} after {MAX_RESUMES} tries")
        digest = hashlib.sha256()
        with partial.open("rb") as source:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise IntegrityError(f"blob {sha256} arrived corrupted (SHA-256 mismatch); discarded")
        os.replace(partial, final)
        self._used(sha256, final)
        self.evict()
        return final
