"""Datasets that ship inside the package, so jobs can run with no network at all.

`tiny_corpus` is plain text for the language-model jobs; `smol_instruct` (chat) and
`smol_prefs` (preference pairs), each with a held-out file, were written for this project
(CC0-1.0; see `models/data/README.md`) for the SFT and DPO demo.
"""

from __future__ import annotations

from importlib import resources

from swarm.protocol.errors import ConfigError

BUILTIN_PREFIX = "builtin:"
BUILTIN_DATASETS = {
    "tiny_corpus": "tiny_corpus.txt",
    "smol_instruct": "smol_instruct.jsonl",
    "smol_instruct_heldout": "smol_instruct_heldout.jsonl",
    "smol_prefs": "smol_prefs.jsonl",
    "smol_prefs_heldout": "smol_prefs_heldout.jsonl",
}


def is_builtin(dataset: str) -> bool:
    return dataset.startswith(BUILTIN_PREFIX)


def load_builtin_bytes(dataset: str) -> bytes:
    """The content of `builtin:<name>`."""
    name = dataset.removeprefix(BUILTIN_PREFIX)
    if not is_builtin(dataset) or name not in BUILTIN_DATASETS:
        known = ", ".join(BUILTIN_PREFIX + n for n in sorted(BUILTIN_DATASETS))
        raise ConfigError(f"unknown dataset {dataset!r}; known: {known}")
    return (resources.files("swarm.models") / "data" / BUILTIN_DATASETS[name]).read_bytes()


def load_builtin_text(dataset: str) -> str:
    """The text of `builtin:<name>`."""
    return load_builtin_bytes(dataset).decode("utf-8")
