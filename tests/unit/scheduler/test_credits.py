"""Credits: pricing work in micro-credits, the balanced postings, and account names."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.protocol.errors import ConfigError
from swarm.scheduler import (
    CONSUMED,
    MICRO_PER_CREDIT,
    MINT,
    RESEARCH_POOL,
    ResearchShare,
    account_kind,
    check_account,
    format_credits,
    micro_credits,
    pending_account,
    user_account,
    worker_account,
)
from swarm.scheduler.credits import (
    FLOPS_PER_CREDIT,
    MAX_ACCOUNT_CHARS,
    Entries,
    accrual,
    donation,
    grant,
    issue,
    reversal,
)

WORKER = worker_account("w1")
OWNER = user_account("alice")


# --- pricing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flops", "micro"),
    [
        (0.0, 0),
        (-1e12, 0),
        (1.0, 1),  # any work at all earns something
        (1e9, 1),
        (1.4e9, 1),
        (1.6e9, 2),
        (FLOPS_PER_CREDIT, MICRO_PER_CREDIT),
        (2.5 * FLOPS_PER_CREDIT, 2_500_000),
    ],
    ids=str,
)
def test_micro_credits(flops: float, micro: int) -> None:
    assert micro_credits(flops) == micro


@settings(max_examples=100, deadline=None)
@given(low=st.floats(1e-3, 1e24), extra=st.floats(0.0, 1e24))
def test_more_work_never_earns_less(low: float, extra: float) -> None:
    assert 1 <= micro_credits(low) <= micro_credits(low + extra)


def test_format_credits() -> None:
    assert format_credits(1_500_000) == "1.500000"
    assert format_credits(1) == "0.000001"
    assert format_credits(1_234_567_890_123) == "1,234,567.890123"
    assert format_credits(-2_000_000) == "-2.000000"


# --- postings ----------------------------------------------------------------------------------


def balances(entries: Entries) -> Counter[str]:
    totals: Counter[str] = Counter()
    for account, amount in entries:
        totals[account] += amount
    return totals


def test_accrual_mints_into_the_workers_pending_account() -> None:
    assert balances(accrual(WORKER, 70)) == {MINT: -70, "pending:worker:w1": 70}


def test_reversal_returns_the_pending_credit_to_the_mint() -> None:
    assert balances(reversal(WORKER, 70)) == {MINT: 70, "pending:worker:w1": -70}


def test_a_grant_pays_the_worker_and_charges_the_owner_less_the_research_share() -> None:
    entries = grant(WORKER, OWNER, 1000, ResearchShare(ppm=100_000))
    assert balances(entries) == {
        "pending:worker:w1": -1000,
        WORKER: 1000,
        OWNER: -1000,
        CONSUMED: 900,
        RESEARCH_POOL: 100,
    }


def test_research_jobs_pay_no_research_share_to_themselves() -> None:
    entries = grant(WORKER, RESEARCH_POOL, 1000, ResearchShare(ppm=100_000))
    assert balances(entries) == {
        "pending:worker:w1": -1000,
        WORKER: 1000,
        RESEARCH_POOL: -1000,
        CONSUMED: 1000,
    }


def test_a_zero_share_posts_nothing_to_the_pool() -> None:
    entries = grant(WORKER, OWNER, 1000, ResearchShare(ppm=0))
    assert RESEARCH_POOL not in dict(entries)
    assert balances(entries)[CONSUMED] == 1000


def test_a_full_share_sends_everything_to_the_pool() -> None:
    entries = balances(grant(WORKER, OWNER, 1000, ResearchShare(ppm=1_000_000)))
    assert entries[RESEARCH_POOL] == 1000
    assert entries[CONSUMED] == 0


def test_issue_and_donation() -> None:
    assert balances(issue(OWNER, 5)) == {MINT: -5, OWNER: 5}
    assert balances(donation(OWNER, 5)) == {OWNER: -5, RESEARCH_POOL: 5}
    assert balances(donation(OWNER, 5, to="pool:art")) == {OWNER: -5, "pool:art": 5}


@settings(max_examples=100, deadline=None)
@given(amount=st.integers(0, 10**15), ppm=st.integers(0, 1_000_000), pool_owner=st.booleans())
def test_every_posting_balances(amount: int, ppm: int, pool_owner: bool) -> None:
    owner = RESEARCH_POOL if pool_owner else OWNER
    for entries in (
        accrual(WORKER, amount),
        grant(WORKER, owner, amount, ResearchShare(ppm=ppm)),
        reversal(WORKER, amount),
        issue(OWNER, amount),
        donation(OWNER, amount),
    ):
        assert sum(a for _, a in entries) == 0, entries


# --- the research share ------------------------------------------------------------------------


@pytest.mark.parametrize("ppm", [-1, 1_000_001])
def test_a_research_share_outside_a_million_parts_is_refused(ppm: int) -> None:
    with pytest.raises(ConfigError, match=r"research share must be in \[0, 1000000\] ppm"):
        ResearchShare(ppm=ppm)


def test_the_research_share_rounds_down() -> None:
    assert ResearchShare().of(1000) == 100
    assert ResearchShare(ppm=333_333).of(10) == 3
    assert ResearchShare(ppm=999_999).of(1) == 0
    assert ResearchShare(ppm=1_000_000).of(7) == 7


@settings(max_examples=100, deadline=None)
@given(amount=st.integers(0, 10**15), ppm=st.integers(0, 1_000_000))
def test_the_research_share_is_a_whole_part_of_the_amount(amount: int, ppm: int) -> None:
    share = ResearchShare(ppm=ppm).of(amount)
    assert isinstance(share, int)
    assert 0 <= share <= amount
    assert share * 1_000_000 <= amount * ppm < (share + 1) * 1_000_000


# --- account names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "account",
    [
        "user:alice",
        "user:alice@example.com",
        "worker:3f2a-b_c.d",
        "pool:research",
        "pool:art",
        "user:" + "a" * (MAX_ACCOUNT_CHARS - 5),
    ],
)
def test_user_worker_and_pool_accounts_are_accepted(account: str) -> None:
    assert check_account(account) == account


@pytest.mark.parametrize(
    "account",
    [
        "",
        "alice",
        "mint",
        "consumed",
        "user:",
        "user: alice",
        "user:alice\n",
        "user:a/b",
        "user:a:b",
        "user:" + "a" * (MAX_ACCOUNT_CHARS - 4),
        "pending:user:alice",
        "pending:worker:w1",
        "admin:root",
        "User:alice",
    ],
    ids=repr,
)
def test_other_account_names_are_refused(account: str) -> None:
    with pytest.raises(ConfigError, match="must be user:NAME, worker:ID or pool:NAME"):
        check_account(account)


def test_a_refused_name_is_cut_short_in_the_message() -> None:
    with pytest.raises(ConfigError) as caught:
        check_account("user:" + "x" * 10_000)
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize(
    ("account", "kind"),
    [
        (MINT, "system"),
        (CONSUMED, "system"),
        (WORKER, "worker"),
        (OWNER, "user"),
        (RESEARCH_POOL, "pool"),
        (pending_account(WORKER), "pending"),
    ],
)
def test_account_kind(account: str, kind: str) -> None:
    assert account_kind(account) == kind


# --- a whole ledger ----------------------------------------------------------------------------

WORKERS = [worker_account(f"w{i}") for i in range(3)]
OWNERS = [user_account("alice"), user_account("bob"), RESEARCH_POOL]


@settings(max_examples=150, deadline=None)
@given(data=st.data(), ppm=st.integers(0, 1_000_000))
def test_any_history_of_postings_keeps_the_books_balanced(data: st.DataObject, ppm: int) -> None:
    share = ResearchShare(ppm=ppm)
    books: Counter[str] = Counter()
    open_tasks: list[tuple[str, int]] = []  # accrued, neither granted nor reversed
    granted: Counter[str] = Counter()
    minted = 0
    for _ in range(data.draw(st.integers(0, 30), label="steps")):
        amount = data.draw(st.integers(1, 10**12), label="amount")
        choices = ["accrue", "issue", "donate"] + (["grant", "reverse"] if open_tasks else [])
        action = data.draw(st.sampled_from(choices), label="action")
        if action == "accrue":
            worker = data.draw(st.sampled_from(WORKERS), label="worker")
            entries = accrual(worker, amount)
            open_tasks.append((worker, amount))
            minted += amount
        elif action in ("grant", "reverse"):
            index = data.draw(st.integers(0, len(open_tasks) - 1), label="task")
            worker, amount = open_tasks.pop(index)
            if action == "grant":
                owner = data.draw(st.sampled_from(OWNERS), label="owner")
                entries = grant(worker, owner, amount, share)
                granted[worker] += amount
            else:
                entries = reversal(worker, amount)
                minted -= amount
        elif action == "issue":
            entries = issue(data.draw(st.sampled_from(OWNERS), label="to"), amount)
            minted += amount
        else:
            entries = donation(data.draw(st.sampled_from(OWNERS[:2]), label="from"), amount)
        books.update(dict(balances(entries)))

        assert sum(books.values()) == 0
        assert sum(v for k, v in books.items() if k != MINT) == -books[MINT]
        assert books[MINT] == -minted
        for w in WORKERS:
            assert books[pending_account(w)] == sum(a for o, a in open_tasks if o == w)
            assert books[w] == granted[w]
