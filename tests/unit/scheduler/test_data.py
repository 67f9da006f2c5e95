"""Data spans: epoch orders, cutting from a shard cursor, reusing returned spans, and coverage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.scheduler.data import (
    Span,
    covers_exactly,
    cut_from_cursor,
    epoch_order,
    pick_free,
    span_indices,
    spans_between,
    split_span,
)


def span(epoch: int, shard: int, start: int, stop: int) -> Span:
    return Span(epoch=epoch, shard=shard, start=start, stop=stop)


# --- epoch orders ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**63 - 1),
    epoch=st.integers(0, 1000),
    shard=st.integers(0, 1000),
    num_samples=st.integers(0, 300),
)
def test_an_epoch_visits_every_sample_of_its_shard_once(
    seed: int, epoch: int, shard: int, num_samples: int
) -> None:
    order = epoch_order(seed, epoch, shard, num_samples)
    assert sorted(order.tolist()) == list(range(num_samples))
    assert order.tolist() == epoch_order(seed, epoch, shard, num_samples).tolist()


def test_the_order_is_pinned_so_coordinators_on_any_numpy_agree() -> None:
    # Coordinators sharing a database must cut the same spans whatever NumPy they run.
    assert epoch_order(0, 0, 0, 10).tolist() == [3, 7, 9, 2, 6, 8, 4, 5, 1, 0]
    assert epoch_order(7, 2, 3, 12).tolist() == [0, 3, 8, 9, 4, 2, 10, 11, 6, 7, 5, 1]


def test_epochs_shards_and_seeds_each_get_their_own_order() -> None:
    base = epoch_order(1, 0, 0, 100).tolist()
    assert epoch_order(1, 1, 0, 100).tolist() != base
    assert epoch_order(1, 0, 1, 100).tolist() != base
    assert epoch_order(2, 0, 0, 100).tolist() != base
    assert base != list(range(100))


def test_span_indices_are_the_slice_of_the_epoch_order() -> None:
    order = epoch_order(5, 2, 1, 20).tolist()
    assert span_indices(5, span(2, 1, 3, 9), 20) == order[3:9]
    pieces = [span(2, 1, 0, 7), span(2, 1, 7, 8), span(2, 1, 8, 20)]
    assert [i for p in pieces for i in span_indices(5, p, 20)] == order


# --- cutting from the cursor -------------------------------------------------------------------


def test_cut_takes_from_the_least_read_shard_lowest_index_first() -> None:
    assert cut_from_cursor([5, 2, 2], [10, 10, 10], 3) == (1, [span(0, 1, 2, 5)])


def test_least_read_is_the_share_of_the_shard_not_the_count() -> None:
    # 6 of 100 read is less than 5 of 10.
    assert cut_from_cursor([5, 6], [10, 100], 4) == (1, [span(0, 1, 6, 10)])


def test_a_preferred_shard_in_the_lowest_epoch_goes_first() -> None:
    shard, spans = cut_from_cursor([0, 5], [10, 10], 2, prefer=frozenset({1}))
    assert (shard, spans) == (1, [span(0, 1, 5, 7)])


def test_a_preferred_shard_ahead_by_an_epoch_is_passed_over() -> None:
    shard, _ = cut_from_cursor([0, 12], [10, 10], 2, prefer=frozenset({1}))
    assert shard == 0


def test_among_preferred_shards_the_least_read_goes_first() -> None:
    shard, _ = cut_from_cursor([0, 6, 3], [10, 10, 10], 1, prefer=frozenset({1, 2}))
    assert shard == 2


def test_a_cut_larger_than_the_epoch_runs_into_the_next_ones() -> None:
    shard, spans = cut_from_cursor([8], [10], 15)
    assert shard == 0
    assert spans == [span(0, 0, 8, 10), span(1, 0, 0, 10), span(2, 0, 0, 3)]


def test_max_epochs_caps_the_cut() -> None:
    _, spans = cut_from_cursor([8], [10], 15, max_epochs=2)
    assert spans == [span(0, 0, 8, 10), span(1, 0, 0, 10)]


def test_without_max_epochs_reading_never_ends() -> None:
    assert cut_from_cursor([1000], [10], 3) == (0, [span(100, 0, 0, 3)])


def test_a_fully_read_shard_is_skipped() -> None:
    assert cut_from_cursor([20, 15], [10, 10], 3, max_epochs=2) == (1, [span(1, 1, 5, 8)])


def test_empty_shards_are_never_chosen() -> None:
    assert cut_from_cursor([0, 3], [0, 10], 2) == (1, [span(0, 1, 3, 5)])


@pytest.mark.parametrize(
    ("cursor", "sizes"), [([20, 20], [10, 10]), ([0, 0], [0, 0]), ([], [])], ids=str
)
def test_nothing_left_to_read_gives_no_shard(cursor: list[int], sizes: list[int]) -> None:
    assert cut_from_cursor(cursor, sizes, 5, max_epochs=2) == (-1, [])


# --- spans -------------------------------------------------------------------------------------


def test_spans_between_splits_at_epoch_boundaries() -> None:
    assert spans_between(3, 7, 23, 10) == [span(0, 3, 7, 10), span(1, 3, 0, 10), span(2, 3, 0, 3)]
    assert spans_between(3, 10, 20, 10) == [span(1, 3, 0, 10)]
    assert spans_between(3, 5, 5, 10) == []


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, 100), length=st.integers(0, 100), num_samples=st.integers(1, 30))
def test_spans_between_cover_the_positions_in_order(
    start: int, length: int, num_samples: int
) -> None:
    spans = spans_between(0, start, start + length, num_samples)
    positions = [s.epoch * num_samples + p for s in spans for p in range(s.start, s.stop)]
    assert positions == list(range(start, start + length))
    assert all(s.stop <= num_samples for s in spans)


def test_split_span_takes_the_front() -> None:
    assert split_span(span(1, 2, 3, 10), 4) == (span(1, 2, 3, 7), span(1, 2, 7, 10))


@pytest.mark.parametrize("want", [7, 8, 100])
def test_split_span_wanting_all_of_it_leaves_nothing(want: int) -> None:
    assert split_span(span(1, 2, 3, 10), want) == (span(1, 2, 3, 10), None)


def test_pick_free_of_nothing_is_none() -> None:
    assert pick_free([]) is None


def test_pick_free_prefers_the_oldest_epoch_over_a_held_shard() -> None:
    free = [span(1, 0, 0, 9), span(0, 1, 0, 2)]
    assert pick_free(free, frozenset({0})) == 1


def test_pick_free_prefers_a_held_shard_over_a_longer_span() -> None:
    free = [span(0, 0, 0, 9), span(0, 1, 0, 2)]
    assert pick_free(free, frozenset({1})) == 1
    assert pick_free(free) == 0


def test_pick_free_prefers_the_longest_then_the_earliest_start() -> None:
    assert pick_free([span(0, 0, 0, 2), span(0, 1, 4, 9), span(0, 2, 0, 3)]) == 1
    assert pick_free([span(0, 0, 5, 7), span(0, 1, 1, 3)]) == 1


# --- coverage ----------------------------------------------------------------------------------


def test_covers_exactly_accepts_a_tiling_in_any_order() -> None:
    spans = [span(0, 1, 4, 6), span(0, 0, 0, 3), span(0, 1, 0, 4), span(1, 0, 0, 1)]
    assert covers_exactly(spans, [3, 6], 0)


@pytest.mark.parametrize(
    "spans",
    [
        [span(0, 0, 0, 2), span(0, 1, 0, 4)],  # gap at the end of shard 0
        [span(0, 0, 1, 3), span(0, 1, 0, 4)],  # gap at the start
        [span(0, 0, 0, 1), span(0, 0, 2, 3), span(0, 1, 0, 4)],  # gap inside
        [span(0, 0, 0, 2), span(0, 0, 1, 3), span(0, 1, 0, 4)],  # overlap
        [span(0, 0, 0, 3), span(0, 0, 0, 3), span(0, 1, 0, 4)],  # read twice
        [span(0, 0, 0, 3), span(0, 1, 0, 5)],  # past the shard's end
        [span(0, 0, 0, 3)],  # shard 1 unread
        [span(0, 0, 0, 3), span(0, 1, 0, 4), span(0, 2, 0, 1)],  # a shard that does not exist
        [span(0, 0, 0, 3), span(1, 1, 0, 4)],  # shard 1 read in another epoch only
    ],
    ids=[
        "gap-end",
        "gap-start",
        "gap-inside",
        "overlap",
        "twice",
        "too-long",
        "unread",
        "foreign",
        "other-epoch",
    ],
)
def test_covers_exactly_detects_gaps_overlaps_and_strays(spans: list[Span]) -> None:
    assert not covers_exactly(spans, [3, 4], 0)


def test_covers_exactly_needs_nothing_of_an_empty_shard() -> None:
    assert covers_exactly([span(0, 1, 0, 2)], [0, 2], 0)
    assert not covers_exactly([span(0, 0, 0, 1), span(0, 1, 0, 2)], [0, 2], 0)


# --- whole jobs: cutting until done, with tasks that never finish ------------------------------


def run_job(
    data: st.DataObject, sizes: list[int], max_epochs: int, num_returns: int
) -> tuple[list[Span], list[int]]:
    """Lease tasks the way the coordinator does until no data is left: reuse a free span if
    there is one, else cut fresh positions. Up to `num_returns` tasks never finish, and their
    spans go to the free list. Returns the spans of finished tasks and the final cursor."""
    cursor = [0] * len(sizes)
    free: list[Span] = []
    consumed: list[Span] = []
    for _ in range(10_000):
        want = data.draw(st.integers(1, 25), label="want")
        prefer = data.draw(st.frozensets(st.integers(0, len(sizes) - 1)), label="prefer")
        chosen = pick_free(free, prefer)
        if chosen is not None:
            taken, rest = split_span(free.pop(chosen), want)
            assert len(taken) <= want
            if rest is not None:
                free.append(rest)
            spans = [taken]
        else:
            shard, spans = cut_from_cursor(
                cursor, sizes, want, max_epochs=max_epochs, prefer=prefer
            )
            if not spans:
                assert shard == -1
                break
            assert {s.shard for s in spans} == {shard}
            assert sum(len(s) for s in spans) <= want
            cursor[shard] += sum(len(s) for s in spans)
        if num_returns and data.draw(st.booleans(), label="never finishes"):
            num_returns -= 1
            free.extend(spans)
        else:
            consumed.extend(spans)
    else:
        raise AssertionError("the job never ran out of data")
    assert free == []
    return consumed, cursor


shard_sizes = st.lists(st.integers(0, 12), min_size=1, max_size=4)


@settings(max_examples=80, deadline=None)
@given(sizes=shard_sizes, max_epochs=st.integers(1, 3), data=st.data())
def test_cutting_until_done_reads_every_shard_exactly_once_per_epoch(
    sizes: list[int], max_epochs: int, data: st.DataObject
) -> None:
    consumed, cursor = run_job(data, sizes, max_epochs, num_returns=0)
    assert cursor == [max_epochs * n for n in sizes]
    assert all(s.epoch < max_epochs for s in consumed)
    for epoch in range(max_epochs):
        assert covers_exactly(consumed, sizes, epoch), epoch


@settings(max_examples=80, deadline=None)
@given(
    sizes=shard_sizes,
    max_epochs=st.integers(1, 3),
    num_returns=st.integers(1, 6),
    data=st.data(),
)
def test_returned_spans_are_recut_so_every_sample_is_still_read_once_per_epoch(
    sizes: list[int], max_epochs: int, num_returns: int, data: st.DataObject
) -> None:
    consumed, _ = run_job(data, sizes, max_epochs, num_returns)
    assert all(s.epoch < max_epochs for s in consumed)
    for epoch in range(max_epochs):
        assert covers_exactly(consumed, sizes, epoch), epoch
