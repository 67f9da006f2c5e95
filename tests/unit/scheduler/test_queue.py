"""The job queue: its order, and which queued jobs start given the running jobs and workers."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.scheduler import QueuedJob, RunningJob, admit, queue_order


def queued(
    id: str,
    *,
    priority: int = 0,
    research: bool = False,
    balance: int = 0,
    queued_at: float = 0.0,
    min_workers: int = 1,
    estimated_credits: int = 0,
) -> QueuedJob:
    return QueuedJob(
        id=id,
        priority=priority,
        research=research,
        owner_balance=balance,
        queued_at=queued_at,
        min_workers=min_workers,
        estimated_credits=estimated_credits,
    )


def running(id: str, min_workers: int, *, research: bool = False) -> RunningJob:
    return RunningJob(id=id, min_workers=min_workers, research=research)


def ids(jobs: list[QueuedJob]) -> list[str]:
    return [j.id for j in jobs]


# --- order -------------------------------------------------------------------------------------


def test_research_jobs_go_last_whatever_their_priority() -> None:
    jobs = [queued("research", research=True, priority=100), queued("user", priority=-100)]
    assert ids(queue_order(jobs)) == ["user", "research"]


def test_higher_priority_goes_first() -> None:
    jobs = [queued("low", priority=1, balance=10**9), queued("high", priority=2)]
    assert ids(queue_order(jobs)) == ["high", "low"]


def test_at_equal_priority_the_larger_balance_goes_first() -> None:
    jobs = [queued("poor", balance=-5, queued_at=0.0), queued("rich", balance=5, queued_at=9.0)]
    assert ids(queue_order(jobs)) == ["rich", "poor"]


def test_then_the_older_job_goes_first_then_the_lower_id() -> None:
    jobs = [queued("b", queued_at=2.0), queued("c", queued_at=1.0), queued("a", queued_at=2.0)]
    assert ids(queue_order(jobs)) == ["c", "a", "b"]


queued_jobs = st.lists(
    st.builds(
        queued,
        id=st.text("abcdef", min_size=1, max_size=3),
        priority=st.integers(-2, 2),
        research=st.booleans(),
        balance=st.integers(-3, 3),
        queued_at=st.sampled_from([0.0, 1.0, 2.0]),
        min_workers=st.integers(0, 4),
        estimated_credits=st.integers(0, 3),
    ),
    max_size=8,
    unique_by=lambda j: j.id,
)


@settings(max_examples=100, deadline=None)
@given(jobs=queued_jobs, seed=st.integers(0, 2**32))
def test_queue_order_does_not_depend_on_the_order_jobs_are_listed_in(
    jobs: list[QueuedJob], seed: int
) -> None:
    shuffled = list(jobs)
    random.Random(seed).shuffle(shuffled)
    order = queue_order(jobs)
    assert order == queue_order(shuffled)
    assert sorted(ids(order)) == sorted(ids(jobs))
    for ahead, behind in itertools.pairwise(order):
        assert (ahead.research, -ahead.priority) <= (behind.research, -behind.priority)


# --- admission ---------------------------------------------------------------------------------


def test_an_idle_swarm_starts_the_head_of_the_queue_even_without_workers() -> None:
    decision = admit([queued("a", min_workers=4), queued("b", min_workers=4)], [], 0)
    assert decision.start == ["a"]
    assert decision.waiting == {"b": "waiting for workers: 4 needed, 0 free of 0 online"}


def test_a_job_starts_when_workers_cover_the_running_minimums_and_its_own() -> None:
    assert admit([queued("a", min_workers=3)], [running("x", 2)], 5).start == ["a"]
    decision = admit([queued("a", min_workers=4)], [running("x", 2)], 5)
    assert decision.start == []
    assert decision.waiting == {"a": "waiting for workers: 4 needed, 3 free of 5 online"}


def test_jobs_started_together_count_against_each_other() -> None:
    jobs = [queued("a", min_workers=2), queued("b", min_workers=3), queued("c", min_workers=2)]
    decision = admit(jobs, [running("x", 1)], 6)
    assert decision.start == ["a", "b"]
    assert decision.waiting == {"c": "waiting for workers: 2 needed, 0 free of 6 online"}


def test_free_workers_are_never_reported_negative() -> None:
    decision = admit([queued("a", min_workers=1)], [running("x", 5)], 2)
    assert decision.waiting == {"a": "waiting for workers: 1 needed, 0 free of 2 online"}


def test_a_blocked_job_blocks_the_jobs_behind_it() -> None:
    jobs = [queued("big", priority=1, min_workers=5), queued("small", min_workers=1)]
    decision = admit(jobs, [running("x", 1)], 3)
    assert decision.start == []
    assert decision.waiting["small"] == "waiting for the jobs ahead of it"


def test_a_job_short_of_credits_is_skipped_not_blocking() -> None:
    jobs = [
        queued("broke", priority=1, balance=5, estimated_credits=10),
        queued("paid", balance=10, estimated_credits=10),
    ]
    decision = admit(jobs, [], 0, require_credits=True)
    assert decision.start == ["paid"]
    assert decision.waiting == {
        "broke": "waiting for credits: the owner's balance is below the estimate"
    }


def test_credits_are_not_checked_unless_required() -> None:
    jobs = [queued("broke", balance=-5, estimated_credits=10)]
    assert admit(jobs, [], 0).start == ["broke"]


def test_a_research_job_starts_only_on_idle_workers() -> None:
    assert admit([queued("r", research=True)], [running("x", 2)], 3).start == ["r"]
    decision = admit([queued("r", research=True, min_workers=2)], [running("x", 2)], 3)
    assert decision.start == []
    assert decision.waiting == {"r": "research job: waits for idle workers"}


def test_running_research_jobs_hold_no_workers_against_other_jobs() -> None:
    decision = admit([queued("a", min_workers=3)], [running("r", 3, research=True)], 3)
    assert decision.start == ["a"]


def test_running_research_jobs_do_hold_workers_against_research_jobs() -> None:
    decision = admit(
        [queued("r2", research=True, min_workers=2)], [running("r1", 2, research=True)], 3
    )
    assert decision.start == []


def test_a_research_job_waits_behind_a_blocked_job() -> None:
    jobs = [queued("r", research=True, priority=100), queued("big", min_workers=9)]
    decision = admit(jobs, [running("x", 1)], 3)
    assert decision.start == []
    assert decision.waiting["r"] == "waiting for the jobs ahead of it"


def test_a_research_job_started_with_others_counts_against_later_research_only() -> None:
    jobs = [
        queued("r1", research=True, min_workers=2),
        queued("r2", research=True, min_workers=2, queued_at=1.0),
        queued("a", min_workers=2),
    ]
    decision = admit(jobs, [running("x", 1)], 5)
    assert decision.start == ["a", "r1"]
    assert decision.waiting == {"r2": "research job: waits for idle workers"}


def test_a_swarm_running_only_research_is_idle_for_the_head_of_the_queue() -> None:
    job = queued("a", min_workers=3)
    assert admit([job], [], 2).start == ["a"]
    assert admit([job], [running("r", 1, research=True)], 2).start == ["a"]


running_jobs = st.lists(
    st.builds(running, id=st.just("run"), min_workers=st.integers(0, 4), research=st.booleans()),
    max_size=3,
)


@settings(max_examples=200, deadline=None)
@given(
    queue=queued_jobs,
    active=running_jobs,
    num_workers=st.integers(0, 10),
    require_credits=st.booleans(),
)
def test_admission_starts_a_prefix_of_the_queue_within_the_workers(
    queue: list[QueuedJob], active: list[RunningJob], num_workers: int, require_credits: bool
) -> None:
    decision = admit(queue, active, num_workers, require_credits=require_credits)
    # Every queued job either starts or has a reason to wait.
    assert set(decision.start).isdisjoint(decision.waiting)
    assert set(decision.start) | set(decision.waiting) == set(ids(queue))
    # Strict order: the started jobs are the head of the queue, less the credit-blocked ones.
    eligible = [
        j
        for j in queue_order(queue)
        if not (require_credits and j.owner_balance < j.estimated_credits)
    ]
    assert decision.start == ids(eligible[: len(decision.start)])
    # Past the head of an idle swarm, the minimums fit the online workers.
    by_id = {j.id: j for j in queue}
    started = [by_id[i] for i in decision.start]
    if all(r.research for r in active) and started:
        head, started = started[0], started[1:]
        active = [running(head.id, head.min_workers, research=head.research)]
    for i, job in enumerate(started):
        others = [j.min_workers for j in [*active, *started[:i]] if job.research or not j.research]
        assert sum(others) + job.min_workers <= num_workers, job


def test_a_job_no_online_worker_can_hold_waits_without_holding_back_the_rest() -> None:
    big = replace(queued("big", queued_at=0.0), memory_bytes=40 * 2**30)
    small = replace(queued("small", queued_at=1.0), memory_bytes=2**30)
    decision = admit([big, small], [], 4, largest_memory_bytes=16 * 2**30)
    assert decision.start == ["small"]
    assert decision.waiting["big"] == (
        "waiting for a worker with 40.0 GiB of memory: the largest online has 16.0 GiB"
    )
    # When some worker does not report its memory, it might hold anything.
    assert admit([big, small], [], 4, largest_memory_bytes=None).start == ["big", "small"]
