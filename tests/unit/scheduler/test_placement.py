"""Placement: which running job each online worker trains for."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.scheduler import JobDemand, WorkerInfo, assign_workers
from swarm.scheduler.placement import affinity, fits

GiB = 2**30


def worker(
    id: str,
    memory_gib: int = 0,
    *,
    speed: float | None = None,
    cached: frozenset[str] = frozenset(),
    assigned: str | None = None,
) -> WorkerInfo:
    return WorkerInfo(
        id=id, memory_bytes=memory_gib * GiB, speed=speed, cached=cached, assigned=assigned
    )


def job(
    id: str,
    *,
    min_workers: int = 0,
    max_workers: int = 10,
    memory_gib: int = 1,
    blobs: frozenset[str] = frozenset(),
    yields: bool = False,
) -> JobDemand:
    return JobDemand(
        id=id,
        memory_bytes=memory_gib * GiB,
        min_workers=min_workers,
        max_workers=max_workers,
        blobs=blobs,
        yields=yields,
    )


def members(assignment: dict[str, str | None], job_id: str) -> set[str]:
    return {w for w, j in assignment.items() if j == job_id}


# --- examples ----------------------------------------------------------------------------------


def test_fits_and_affinity() -> None:
    big = job("a", memory_gib=8, blobs=frozenset({"x", "y"}))
    assert fits(worker("w", 8), big)
    assert not fits(worker("w", 4), big)
    assert fits(worker("w", 0), big)  # unknown memory: assumed to fit
    assert affinity(worker("w", cached=frozenset({"x", "z"})), big) == 0.5
    assert affinity(worker("w", cached=frozenset({"x"})), job("b")) == 0.0


def test_a_worker_too_small_for_every_job_gets_none() -> None:
    assignment = assign_workers([worker("small", 2), worker("big", 16)], [job("a", memory_gib=8)])
    assert assignment == {"small": None, "big": "a"}


def test_no_running_jobs_leaves_every_worker_idle() -> None:
    assert assign_workers([worker("w1"), worker("w2", assigned="gone")], []) == {
        "w1": None,
        "w2": None,
    }


def test_a_worker_stays_on_its_job_rather_than_balancing() -> None:
    workers = [worker("w1", assigned="b"), worker("w2", assigned="b")]
    assert assign_workers(workers, [job("a"), job("b")]) == {"w1": "b", "w2": "b"}


def test_a_worker_whose_job_stopped_is_placed_again() -> None:
    assert assign_workers([worker("w1", assigned="gone")], [job("a")]) == {"w1": "a"}


def test_a_worker_that_no_longer_fits_its_job_moves() -> None:
    workers = [worker("w1", 4, assigned="a")]
    jobs = [job("a", memory_gib=8), job("b", memory_gib=2)]
    assert assign_workers(workers, jobs) == {"w1": "b"}


def test_the_fastest_stay_when_a_job_has_more_workers_than_it_wants() -> None:
    workers = [worker(f"w{s}", speed=float(s), assigned="a") for s in (1, 2, 3)]
    assignment = assign_workers(workers, [job("a", max_workers=2), job("b")])
    assert members(assignment, "a") == {"w2", "w3"}
    assert assignment["w1"] == "b"


def test_minimums_are_filled_in_queue_order() -> None:
    workers = [worker(f"w{i}") for i in range(3)]
    assignment = assign_workers(
        workers, [job("a", min_workers=2, max_workers=2), job("b", min_workers=2)]
    )
    assert len(members(assignment, "a")) == 2
    assert len(members(assignment, "b")) == 1


def test_a_minimum_takes_the_worker_holding_the_jobs_blobs_before_a_faster_one() -> None:
    blobs = frozenset({"weights", "shard-0"})
    workers = [worker("fast", speed=100.0), worker("cached", speed=1.0, cached=blobs)]
    jobs = [job("a", min_workers=1, max_workers=1, blobs=blobs), job("b")]
    assert assign_workers(workers, jobs) == {"cached": "a", "fast": "b"}


def test_a_minimum_takes_the_fastest_among_equally_cached() -> None:
    workers = [worker("slow", speed=1.0), worker("fast", speed=100.0), worker("none")]
    jobs = [job("a", min_workers=1, max_workers=1), job("b")]
    assert assign_workers(workers, jobs)["fast"] == "a"


def test_a_short_job_takes_a_worker_from_a_later_job_with_more_than_its_minimum() -> None:
    workers = [worker("w1", assigned="b"), worker("w2", assigned="b")]
    assignment = assign_workers(workers, [job("a", min_workers=1), job("b", min_workers=1)])
    assert len(members(assignment, "a")) == 1
    assert len(members(assignment, "b")) == 1


def test_a_short_job_leaves_a_later_job_at_its_minimum_alone() -> None:
    workers = [worker("w1", assigned="b")]
    assignment = assign_workers(workers, [job("a", min_workers=1), job("b", min_workers=1)])
    assert assignment == {"w1": "b"}


def test_a_short_job_takes_nothing_from_an_earlier_job() -> None:
    workers = [worker("w1", assigned="a"), worker("w2", assigned="a")]
    assignment = assign_workers(workers, [job("a", min_workers=1), job("b", min_workers=1)])
    assert assignment == {"w1": "a", "w2": "a"}


@pytest.mark.parametrize("research_first", [True, False])
def test_a_research_job_gives_up_workers_even_below_its_minimum(research_first: bool) -> None:
    workers = [worker(f"w{i}", assigned="research") for i in range(2)]
    research = job("research", min_workers=2, yields=True)
    user = job("user", min_workers=1)
    jobs = [research, user] if research_first else [user, research]
    assignment = assign_workers(workers, jobs)
    assert len(members(assignment, "user")) == 1
    assert len(members(assignment, "research")) == 1


def test_a_research_job_takes_nothing_from_another_research_job_ahead_of_it() -> None:
    workers = [worker("w1", assigned="r1")]
    jobs = [job("r1", min_workers=1, yields=True), job("r2", min_workers=1, yields=True)]
    assert assign_workers(workers, jobs) == {"w1": "r1"}


def test_the_rest_go_to_the_job_with_fewest_workers() -> None:
    workers = [worker("w1", assigned="a"), worker("w2", assigned="a"), worker("new")]
    assert assign_workers(workers, [job("a"), job("b")])["new"] == "b"


def test_among_equally_staffed_jobs_a_new_worker_goes_where_its_blobs_are() -> None:
    blobs = frozenset({"weights-b"})
    workers = [worker("new", cached=blobs)]
    jobs = [job("a", blobs=frozenset({"weights-a"})), job("b", blobs=blobs)]
    assert assign_workers(workers, jobs) == {"new": "b"}


def test_a_worker_with_every_fitting_job_full_gets_none() -> None:
    workers = [worker("w1", assigned="a"), worker("w2")]
    assert assign_workers(workers, [job("a", max_workers=1)]) == {"w1": "a", "w2": None}


def test_a_short_job_gets_the_worker_a_later_job_can_spare_once_the_rest_are_placed() -> None:
    workers = [worker("big", 16, assigned="later"), worker("small", 2)]
    jobs = [
        job("first", memory_gib=8, min_workers=1),
        job("later", memory_gib=1, min_workers=1),
    ]
    # {"big": "first", "small": "later"} meets both minimums.
    assert assign_workers(workers, jobs) == {"big": "first", "small": "later"}


# --- properties --------------------------------------------------------------------------------

BLOBS = ["weights-0", "weights-1", "shard-0", "shard-1"]


@st.composite
def scenarios(
    draw: st.DrawFn, *, all_fit: bool = False, research_last: bool = True
) -> tuple[list[WorkerInfo], list[JobDemand]]:
    """Workers and jobs; `research_last` puts the jobs in an order the queue can give (research
    jobs after every other)."""
    num_jobs = draw(st.integers(0, 4))
    jobs = []
    for i in range(num_jobs):
        low = draw(st.integers(0, 3))
        jobs.append(
            JobDemand(
                id=f"job{i}",
                memory_bytes=draw(st.sampled_from([1, 4, 8, 16])) * GiB,
                min_workers=low,
                max_workers=draw(st.integers(max(low, 1), 5)),
                blobs=draw(st.frozensets(st.sampled_from(BLOBS), max_size=3)),
                yields=draw(st.booleans()),
            )
        )
    if research_last:
        jobs.sort(key=lambda j: j.yields)
    job_ids = [j.id for j in jobs]
    num_workers = draw(st.integers(0, 10))
    workers = [
        WorkerInfo(
            id=f"w{i}",
            memory_bytes=0 if all_fit else draw(st.sampled_from([0, 2, 8, 16])) * GiB,
            speed=draw(st.none() | st.floats(1.0, 1e3)),
            cached=draw(st.frozensets(st.sampled_from(BLOBS), max_size=4)),
            assigned=draw(st.sampled_from([None, "stopped", *job_ids])),
        )
        for i in range(num_workers)
    ]
    return workers, jobs


def could_give(donor: JobDemand, short: JobDemand, jobs: Sequence[JobDemand], count: int) -> bool:
    """Whether the rules let `short` take a worker from `donor` holding `count` workers."""
    if donor.id == short.id:
        return False
    if donor.yields and not short.yields:
        return True
    return jobs.index(donor) > jobs.index(short) and count > donor.min_workers


@settings(max_examples=150, deadline=None)
@given(scenarios(research_last=False))
def test_placement_respects_memory_maximums_and_places_everyone_it_can(
    scenario: tuple[list[WorkerInfo], list[JobDemand]],
) -> None:
    workers, jobs = scenario
    by_id = {j.id: j for j in jobs}
    assignment = assign_workers(workers, jobs)
    assert set(assignment) == {w.id for w in workers}
    counts = Counter(assignment.values())
    for w in workers:
        placed = assignment[w.id]
        if placed is None:
            # Idle only when every job that it fits is full.
            assert all(counts[j.id] >= j.max_workers for j in jobs if fits(w, j)), w
        else:
            assert fits(w, by_id[placed]), w
    for j in jobs:
        assert counts[j.id] <= j.max_workers, j


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_a_short_job_has_no_fitting_worker_left_idle_or_on_a_research_job(
    scenario: tuple[list[WorkerInfo], list[JobDemand]],
) -> None:
    workers, jobs = scenario
    by_id = {j.id: j for j in jobs}
    assignment = assign_workers(workers, jobs)
    counts = Counter(assignment.values())
    for short in jobs:
        if counts[short.id] >= short.min_workers:
            continue
        for w in workers:
            if not fits(w, short):
                continue
            placed = assignment[w.id]
            assert placed is not None, (short, w)
            assert short.yields or not by_id[placed].yields, (short, w)


@settings(max_examples=150, deadline=None)
@given(scenarios(all_fit=True))
def test_a_short_job_could_take_no_worker_under_the_rules(
    scenario: tuple[list[WorkerInfo], list[JobDemand]],
) -> None:
    """Below its minimum only if every worker is on an earlier job (or a research job, for a
    research job) or on a later job that has no more than its own minimum."""
    workers, jobs = scenario
    by_id = {j.id: j for j in jobs}
    assignment = assign_workers(workers, jobs)
    counts = Counter(assignment.values())
    for short in jobs:
        if counts[short.id] >= short.min_workers:
            continue
        for w in workers:
            placed = assignment[w.id]
            assert placed is not None, (short, w)
            donor = by_id[placed]
            assert not could_give(donor, short, jobs, counts[donor.id]), (short, donor, w)


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_a_worker_keeps_its_job_unless_a_job_ahead_is_short(
    scenario: tuple[list[WorkerInfo], list[JobDemand]],
) -> None:
    """A worker on a job that fits it and has room for all its workers stays there, unless
    the job is a research job or a job ahead of it in the queue lacks its minimum even with
    the workers already on it."""
    workers, jobs = scenario
    by_id = {j.id: j for j in jobs}
    staying = {j.id: [w for w in workers if w.assigned == j.id and fits(w, j)] for j in jobs}
    assignment = assign_workers(workers, jobs)
    for j in jobs:
        if len(staying[j.id]) > j.max_workers or j.yields:
            continue
        ahead = jobs[: jobs.index(j)]
        if any(min(len(staying[a.id]), a.max_workers) < a.min_workers for a in ahead):
            continue
        for w in staying[j.id]:
            assert assignment[w.id] == j.id, (w, by_id[j.id])


def test_between_equally_fast_workers_the_faster_link_fills_a_minimum() -> None:
    job = JobDemand(id="j", memory_bytes=0, min_workers=1, max_workers=1)
    slow_link = WorkerInfo(id="a", memory_bytes=0, speed=1e9, download_bytes_per_s=1e6)
    fast_link = WorkerInfo(id="b", memory_bytes=0, speed=1e9, download_bytes_per_s=1e8)
    assert assign_workers([slow_link, fast_link], [job]) == {"a": None, "b": "j"}
