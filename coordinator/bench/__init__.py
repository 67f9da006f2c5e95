"""Benchmarks behind `swarm bench ...`: each prints JSON and a table of what it measured."""

from typing import Any


def targets_table(targets: list[dict[str, Any]]) -> list[str]:
    """The markdown rows every bench ends with: each target, its measured value, met or not."""
    return ["| target | value | met |", "|---|---:|:---:|"] + [
        f"| {t['target']} | {t['value']} | {'yes' if t['met'] else 'no'} |" for t in targets
    ]
