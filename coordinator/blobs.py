"""A content-addressed blob store on disk: `<root>/<aa>/<bb>/<sha256>`.

Writers stream into a temporary file while hashing and rename it into place, so a reader never
sees a partial blob and a crash leaves at most a stray temporary file. A blob's name is checked
to be 64 lowercase hex digits before it touches the file system, so no request can name a path
outside the store.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from swarm.protocol.errors import (
    IntegrityError,
    MessageTooLargeError,
    NotFoundError,
    ProtocolError,
)
from swarm.protocol.limits import CHUNK_BYTES

_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_sha256(sha256: str) -> str:
    """Return `sha256` if it is 64 lowercase hex digits, else raise `ProtocolError`."""
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ProtocolError(f"{sha256[:80]!r} is not a SHA-256 digest (64 lowercase hex digits)")
    return sha256


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._incoming = root / "incoming"
        self._incoming.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        path = self.path(sha256)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"blob {sha256} is not in this coordinator's store") from None

    def put_bytes(self, data: bytes) -> str:
        """Store `data` and return its SHA-256."""
        return self.put_stream([data], max_bytes=len(data))

    def put_stream(
        self,
        chunks: Iterable[bytes],
        *,
        max_bytes: int,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        check: Callable[[Path], None] | None = None,
    ) -> str:
        """Store streamed bytes; check the size limit and, if given, the expected digest and size.

        Raises:
            MessageTooLargeError: more than `max_bytes` arrived.
            IntegrityError: the bytes do not match `expected_sha256` or `expected_size`.
        """
        digest = hashlib.sha256()
        size = 0
        fd, temp_name = tempfile.mkstemp(dir=self._incoming)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise MessageTooLargeError(
                            f"payload exceeds its limit of {max_bytes} bytes"
                        )
                    digest.update(chunk)
                    out.write(chunk)
            sha256 = digest.hexdigest()
            if expected_size is not None and size != expected_size:
                raise IntegrityError(
                    f"received {size} bytes, but the header announced {expected_size}"
                )
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise IntegrityError(
                    f"payload SHA-256 is {sha256}, but the header announced {expected_sha256}"
                )
            if check is not None:  # validate before the blob becomes visible to anyone
                check(Path(temp_name))
            target = self.path(sha256)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp_name, target)
            return sha256
        finally:
            if os.path.exists(temp_name):
                os.unlink(temp_name)

    def put_file(self, path: Path) -> str:
        """Store a copy of the file at `path` and return its SHA-256."""
        with path.open("rb") as source:
            return self.put_stream(
                iter(lambda: source.read(CHUNK_BYTES), b""), max_bytes=path.stat().st_size
            )

    def put_folder(self, folder: Path, *, link: bool = False) -> dict[str, str]:
        """Store every file under `folder`; returns relative path -> SHA-256. With `link`, each
        file is then replaced by a link to its blob, so the folder still reads as before."""
        files = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            sha256 = self.put_file(path)
            if link:
                path.unlink()
                path.symlink_to(self.path(sha256).resolve())
            files[path.relative_to(folder).as_posix()] = sha256
        return files

    def read(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"blob {sha256} is not in this coordinator's store") from None

    def open(self, sha256: str) -> BinaryIO:
        """The blob as a binary file object, for decoders that read it piece by piece."""
        try:
            return self.path(sha256).open("rb")
        except FileNotFoundError:
            raise NotFoundError(f"blob {sha256} is not in this coordinator's store") from None

    def iter_chunks(
        self, sha256: str, offset: int = 0, chunk_bytes: int = CHUNK_BYTES
    ) -> Iterator[tuple[int, bytes, int]]:
        """Yield (offset, data, total_size) from `offset` to the end of the blob."""
        total = self.size(sha256)
        if not 0 <= offset <= total:
            raise ProtocolError(f"offset {offset} is outside blob {sha256} of {total} bytes")
        with self.path(sha256).open("rb") as source:
            source.seek(offset)
            while offset < total or total == 0:
                data = source.read(chunk_bytes)
                yield offset, data, total
                offset += len(data)
                if not data:
                    break
