"""The worker's blob cache: content-addressed files it never downloads twice.

Downloads go to `<sha256>.part` and resume from its size after a dropped connection; a blob
enters the cache only after its SHA-256 is verified.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from swarm.client.transport import Transport
from swarm.protocol.errors import IntegrityError, ProtocolError, TransportError

logger = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_RESUMES = 20


class BlobCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

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
        return sha256

    def largest(self, limit: int = 256) -> list[str]:
        """Digests of the cached blobs, largest first (what is worth telling the coordinator)."""
        entries = []
        for path in self.root.iterdir():
            if _SHA256.fullmatch(path.name):
                try:
                    entries.append((path.stat().st_size, path.name))
                except FileNotFoundError:  # evicted meanwhile
                    continue
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
        return final
