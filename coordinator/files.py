"""Uploaded datasets: OpenAI's `/v1/files` for `purpose=fine-tune`.

A file is checked line by line when it is uploaded (the same parser the jobs use, so an
accepted file trains), its bytes go to the blob store, and a row records what it holds. Jobs
name it as `training_file` or `validation_file`. Deleting a file hides it; jobs already
created from it keep their data.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import time
import unicodedata
from typing import Literal, get_args

from sqlalchemy import select

from swarm.coordinator.blobs import BlobStore
from swarm.coordinator.storage import Database, File, page_by_creation
from swarm.models import DatasetKind, detect_format, parse_dataset
from swarm.protocol.errors import ConfigError, NotFoundError

logger = logging.getLogger(__name__)

Purpose = Literal["fine-tune"]
"""The purposes this coordinator stores files for (OpenAI has more: batch, assistants, ...)."""
PURPOSES: tuple[str, ...] = get_args(Purpose)

MAX_LIST = 10_000

_CHAT_FORMATS = ("openai_chat", "trl_prompt_completion")


def is_file_id(source: str) -> bool:
    return source.startswith("file-")


def guess_kind(data: bytes) -> DatasetKind:
    """What a dataset holds, told by its first readable record (chat when none is)."""
    for raw in io.BytesIO(data.removeprefix(b"\xef\xbb\xbf")):  # line by line, no copy
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            fmt = detect_format(record) if isinstance(record, dict) else ""
        except (ValueError, ConfigError):
            continue
        return "chat" if fmt in _CHAT_FORMATS else "preference"
    return "chat"


def check_dataset(data: bytes) -> tuple[DatasetKind, int]:
    """Parse a whole dataset; its kind and number of examples, or a ConfigError naming lines
    (or saying it is over `MAX_DATASET_BYTES`)."""
    kind = guess_kind(data)
    return kind, len(parse_dataset(data, kind))


def clean_filename(name: str) -> str:
    """The last part of a client's file name, printable and at most 255 characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    printable = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip()
    return printable[:255] or "upload.jsonl"


class FileService:
    def __init__(self, db: Database, blobs: BlobStore) -> None:
        self._db = db
        self._blobs = blobs

    def upload(self, data: bytes, *, filename: str, purpose: str, owner: str) -> File:
        """Check and store an uploaded dataset; nothing is stored if any line is bad."""
        if purpose not in PURPOSES:
            raise ConfigError(
                f"purpose {purpose!r:.40} is not supported here; use one of {', '.join(PURPOSES)}"
            )
        kind, num_examples = check_dataset(data)
        file = File(
            id=f"file-{secrets.token_hex(12)}",
            owner=owner,
            purpose=purpose,
            filename=clean_filename(filename),
            bytes=len(data),
            sha256=self._blobs.put_bytes(data),
            kind=kind,
            num_examples=num_examples,
            created_at=time.time(),
        )
        with self._db.transaction() as session:
            session.add(file)
        logger.info(
            "file %s uploaded by %s: %s, %d %s examples, %d bytes",
            file.id,
            owner,
            file.filename,
            num_examples,
            kind,
            len(data),
        )
        return file

    def get(self, file_id: str, *, owner: str | None = None) -> File:
        """A file that is not deleted (and is `owner`'s, unless None), or NotFoundError."""
        with self._db.transaction() as session:
            return self._visible(session.get(File, file_id), file_id, owner)

    @staticmethod
    def _visible(file: File | None, file_id: str, owner: str | None) -> File:
        if file is None or file.deleted_at is not None or owner not in (None, file.owner):
            raise NotFoundError(f"no file {file_id!r:.80}")
        return file

    def list(
        self,
        *,
        owner: str | None = None,
        purpose: str | None = None,
        after: str | None = None,
        limit: int = MAX_LIST,
        order: Literal["asc", "desc"] = "desc",
    ) -> tuple[list[File], bool]:
        """Files (`owner`'s, unless None) newest first (or oldest first), `limit` after the
        file `after`; and whether more follow."""
        if not 1 <= limit <= MAX_LIST:
            raise ConfigError(f"limit must be between 1 and {MAX_LIST}, got {limit}")
        query = select(File).where(File.deleted_at.is_(None))
        if owner is not None:
            query = query.where(File.owner == owner)
        if purpose is not None:
            query = query.where(File.purpose == purpose)
        with self._db.transaction() as session:
            return page_by_creation(
                session,
                File,
                query,
                after=after,
                limit=limit,
                what="file",
                ascending=order == "asc",
            )

    def content(self, file_id: str, *, owner: str | None = None) -> bytes:
        return self._blobs.read(self.get(file_id, owner=owner).sha256)

    def delete(self, file_id: str, *, owner: str | None = None) -> File:
        with self._db.transaction() as session:
            file = self._visible(session.get(File, file_id, with_for_update=True), file_id, owner)
            file.deleted_at = time.time()
        logger.info("file %s deleted", file_id)
        return file

    def dataset(
        self, file_id: str, kind: DatasetKind, field: str, *, deleted_ok: bool = True
    ) -> bytes:
        """A job's data from a file. Deleted files are read too unless not `deleted_ok`: a job
        keeps what it was created with, but a deleted file starts no new job.

        `field` names the job's setting in errors: "training_file" or "validation_file".
        """
        with self._db.transaction() as session:
            file = session.get(File, file_id)
        if file is None or (file.deleted_at is not None and not deleted_ok):
            raise ConfigError(f"{field}: no file {file_id!r:.80}; upload one with POST /v1/files")
        if file.kind != kind:
            needs = "chat examples" if kind == "chat" else "preference pairs"
            method = "supervised fine-tuning" if kind == "chat" else "DPO"
            holds = "chat examples" if file.kind == "chat" else "preference pairs"
            raise ConfigError(
                f"{field}: {file_id} holds {holds}, but {method} needs {needs} "
                f"(method.type is 'supervised' for chat examples, 'dpo' for preference pairs)"
            )
        return self._blobs.read(file.sha256)
