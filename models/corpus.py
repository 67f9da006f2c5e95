"""Text datasets that ship inside the package, so jobs can run with no network at all."""

from __future__ import annotations

from importlib import resources

from swarm.protocol.errors import ConfigError

BUILTIN_PREFIX = "builtin:"
BUILTIN_DATASETS = {"tiny_corpus": "tiny_corpus.txt"}


def load_builtin_text(dataset: str) -> str:
    """The text of `builtin:<name>`."""
    name = dataset.removeprefix(BUILTIN_PREFIX)
    if not dataset.startswith(BUILTIN_PREFIX) or name not in BUILTIN_DATASETS:
        known = ", ".join(BUILTIN_PREFIX + n for n in sorted(BUILTIN_DATASETS))
        raise ConfigError(f"unknown dataset {dataset!r}; known: {known}")
    return (resources.files("swarm.models") / "data" / BUILTIN_DATASETS[name]).read_text("utf-8")
