"""Which samples a train task consumes: epochs, shard orders and spans.

Each shard is read epoch after epoch, every epoch in its own seeded order of the shard's
samples. A shard's cursor counts the positions handed out so far across epochs (position p is
sample `order[p % n]` of epoch `p // n`), so cutting is just advancing a counter. A task takes
its samples from one shard (the blob it downloads), cut when it is first leased and sized for
the worker that took it; a task larger than what is left of the shard's epoch runs on into the
next one, so its samples are one or more *spans*, each a run of positions within one epoch.

Spans of tasks that will never finish (their round closed without them, or their job stopped)
return to a free list and are given to later tasks first, so within an epoch of a shard each
sample is consumed by exactly one accepted task, whatever workers come and go.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Span:
    epoch: int
    shard: int
    start: int
    stop: int

    def __post_init__(self) -> None:
        assert 0 <= self.start < self.stop, self

    def __len__(self) -> int:
        return self.stop - self.start


def epoch_order(seed: int, epoch: int, shard: int, num_samples: int) -> np.ndarray:
    """The order epoch `epoch` visits shard `shard`'s samples in (a seeded permutation).

    Sorting PCG64's raw output, whose stream NumPy keeps stable across releases (unlike the
    algorithms of `Generator.permutation`), so coordinators on different NumPy versions that
    share one database agree on every span.
    """
    digest = hashlib.sha256(f"{seed}/{epoch}/{shard}".encode()).digest()
    keys = np.random.PCG64(int.from_bytes(digest[:8], "little")).random_raw(num_samples)
    return np.argsort(keys, kind="stable")


def span_indices(seed: int, span: Span, num_samples: int) -> list[int]:
    """The shard's sample indices a span covers, in training order."""
    return epoch_order(seed, span.epoch, span.shard, num_samples)[span.start : span.stop].tolist()


def cut_from_cursor(
    cursor: Sequence[int],
    shard_samples: Sequence[int],
    want: int,
    *,
    max_epochs: int = 0,
    prefer: frozenset[int] = frozenset(),
) -> tuple[int, list[Span]]:
    """Cut up to `want` fresh positions from one shard: (the shard, its spans).

    The spans are empty once every shard has been read `max_epochs` times (0: no limit).
    Takes from the least-read shard, the lowest-numbered of equals, except that a shard in
    `prefer` (one the worker already holds) that is in the least-read shards' epoch goes
    first: workers keep their shard when that costs no balance between shards.
    """
    open_ = [
        s
        for s, (c, n) in enumerate(zip(cursor, shard_samples, strict=True))
        if n > 0 and (not max_epochs or c < max_epochs * n)
    ]
    if not open_:
        return -1, []
    epoch_of = {s: cursor[s] // shard_samples[s] for s in open_}
    lowest = min(epoch_of.values())
    preferred = [s for s in open_ if s in prefer and epoch_of[s] == lowest]
    shard = min(preferred or open_, key=lambda s: (cursor[s] / shard_samples[s], s))
    start, stop = cursor[shard], cursor[shard] + want
    if max_epochs:
        stop = min(stop, max_epochs * shard_samples[shard])
    return shard, spans_between(shard, start, stop, shard_samples[shard])


def spans_between(shard: int, start: int, stop: int, num_samples: int) -> list[Span]:
    """The cursor positions [start, stop) of a shard, as one span per epoch they touch."""
    spans = []
    while start < stop:
        epoch, offset = divmod(start, num_samples)
        end = min(stop, (epoch + 1) * num_samples)
        spans.append(Span(epoch=epoch, shard=shard, start=offset, stop=offset + end - start))
        start = end
    return spans


def pick_free(free: Sequence[Span], prefer: frozenset[int] = frozenset()) -> int | None:
    """Which free span to reuse first: the oldest epoch, then a preferred shard, then the
    longest; None when there is none."""
    if not free:
        return None
    return min(
        range(len(free)),
        key=lambda i: (free[i].epoch, free[i].shard not in prefer, -len(free[i]), free[i].start),
    )


def split_span(span: Span, want: int) -> tuple[Span, Span | None]:
    """The first `want` positions of `span`, and what is left of it (or None)."""
    if want >= len(span):
        return span, None
    cut = span.start + want
    return (
        Span(epoch=span.epoch, shard=span.shard, start=span.start, stop=cut),
        Span(epoch=span.epoch, shard=span.shard, start=cut, stop=span.stop),
    )


def covers_exactly(spans: Sequence[Span], shard_samples: Sequence[int], epoch: int) -> bool:
    """Whether the spans of `epoch` tile every shard's order once: no gap, no overlap."""
    by_shard: dict[int, list[Span]] = {}
    for span in spans:
        if span.epoch == epoch:
            by_shard.setdefault(span.shard, []).append(span)
    if not set(by_shard) <= set(range(len(shard_samples))):
        return False
    for shard, num_samples in enumerate(shard_samples):
        position = 0
        for span in sorted(by_shard.get(shard, []), key=lambda s: s.start):
            if span.start != position:
                return False
            position = span.stop
        if position != num_samples:
            return False
    return True
