"""The SQL credits ledger: postings, once-only task credit, validation, reports, invariants.

Every test runs against a real, migrated database: SQLite in a temporary directory (or in
memory for the property test), PostgreSQL at 127.0.0.1:5432 for the `postgres` tests.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from swarm.coordinator.ledger import MAX_MINTED, Ledger
from swarm.coordinator.storage import (
    Account,
    Database,
    Job,
    LedgerEntry,
    LedgerTransaction,
    Round,
    Task,
    sqlite_url,
)
from swarm.protocol.errors import ConfigError, NotFoundError
from swarm.scheduler import MINT, RESEARCH_POOL, ResearchShare, pending_account

CONSUMED = "consumed"
WORKER = "worker:wk-1"
OWNER = "user:alice"


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(sqlite_url(tmp_path))
    database.migrate()
    try:
        yield database
    finally:
        database.dispose()


def add_task(
    session: Session, task_id: str, credits: int | None, *, job_id: str = "ftjob-1"
) -> Task:
    """A task row (and the job and round rows its foreign keys need) worth `credits`."""
    if session.get(Job, job_id) is None:
        session.add(
            Job(
                id=job_id,
                status="running",
                model="micro-llama",
                spec={},
                created_at=1.0,
                model_config_sha256="0" * 64,
                heldout_sha256="0" * 64,
                shard_sha256s=[],
                param_shapes={},
                num_trainable_params=0,
                owner=OWNER,
            )
        )
        session.flush()
    round_id = session.scalar(select(Round.id).where(Round.job_id == job_id, Round.index == 0))
    if round_id is None:
        round_ = Round(
            job_id=job_id,
            index=0,
            status="open",
            params_sha256="0" * 64,
            worker_params_sha256="0" * 64,
            num_tasks=1,
            opened_at=1.0,
        )
        session.add(round_)
        session.flush()
        round_id = round_.id
    task = Task(
        id=task_id,
        job_id=job_id,
        round_id=round_id,
        round_index=0,
        index=0,
        kind="train",
        shard_index=0,
        seed=0,
        status="accepted",
        available_since=1.0,
        credits=credits,
    )
    session.add(task)
    session.flush()
    return task


def create_task(db: Database, task_id: str, credits: int | None, **kwargs: Any) -> Task:
    with db.transaction() as session:
        return add_task(session, task_id, credits, **kwargs)


def balances(db: Database) -> dict[str, int]:
    """Every account's stored balance."""
    with db.transaction() as session:
        return {a.id: a.balance for a in session.scalars(select(Account))}


def entry_sums(session: Session) -> dict[str, int]:
    """Every account's balance recomputed from its entries, with plain SQL."""
    rows = session.execute(
        text("SELECT account_id, SUM(amount) FROM ledger_entries GROUP BY account_id")
    )
    return {account: int(total) for account, total in rows}


def num_rows(db: Database) -> tuple[int, int]:
    """(transactions, entries) stored."""
    with db.transaction() as session:
        return (
            int(session.scalar(select(func.count()).select_from(LedgerTransaction)) or 0),
            int(session.scalar(select(func.count()).select_from(LedgerEntry)) or 0),
        )


def snapshot_in(session: Session) -> tuple[dict[str, int], tuple[int, int]]:
    return (
        {a.id: a.balance for a in session.execute(select(Account.id, Account.balance))},
        (
            int(session.scalar(select(func.count()).select_from(LedgerTransaction)) or 0),
            int(session.scalar(select(func.count()).select_from(LedgerEntry)) or 0),
        ),
    )


def snapshot(db: Database) -> tuple[dict[str, int], tuple[int, int]]:
    return balances(db), num_rows(db)


def assert_invariants(db: Database, ledger: Ledger) -> dict[str, int]:
    """The ledger balances, and every stored balance is the sum of the account's entries;
    returns the stored balances."""
    with db.transaction() as session:
        totals = ledger.totals(session)
        assert totals.balanced, totals
        assert totals.entries == 0
        assert ledger.check_balances(session) == []
        stored = {a: b for a, b in session.execute(select(Account.id, Account.balance))}
        assert nonzero(stored) == nonzero(entry_sums(session))
    return stored


def nonzero(mapping: dict[str, int]) -> dict[str, int]:
    return {key: value for key, value in mapping.items() if value}


# -- accrue and grant ------------------------------------------------------------------------


def test_accrue_mints_the_credit_into_the_workers_pending_account(db: Database) -> None:
    ledger = Ledger()
    task = create_task(db, "task-1", 1_000)
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, 1_000)
    with db.transaction() as session:
        assert ledger.statement(session, WORKER) == {
            "account": WORKER,
            "balance": 0,
            "pending": 1_000,
        }
        assert ledger.balance(session, pending_account(WORKER)) == 1_000
        assert ledger.balance(session, MINT) == -1_000
        assert ledger.totals(session).minted == 1_000
        assert session.get_one(Account, pending_account(WORKER)).kind == "pending"
        assert session.get_one(Account, MINT).kind == "system"
    assert_invariants(db, ledger)


def test_grant_pays_the_worker_and_splits_the_owners_payment(db: Database) -> None:
    # 25% of 999 is 249.75: the pool gets the floor, `consumed` the rest, nothing is lost.
    ledger = Ledger(ResearchShare(ppm=250_000))
    task = create_task(db, "task-1", 999)
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, 999)
    with db.transaction() as session:
        assert ledger.grant(session, task, WORKER, OWNER) is True
    assert nonzero(balances(db)) == {
        MINT: -999,
        WORKER: 999,
        OWNER: -999,
        RESEARCH_POOL: 249,
        CONSUMED: 750,
    }
    with db.transaction() as session:
        assert ledger.statement(session, WORKER)["pending"] == 0
        assert session.get_one(Account, pending_account(WORKER)).balance == 0
    assert_invariants(db, ledger)


def test_the_default_research_share_is_ten_percent(db: Database) -> None:
    ledger = Ledger()
    task = create_task(db, "task-1", 1_000)
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, 1_000)
        ledger.grant(session, task, WORKER, OWNER)
    assert balances(db)[RESEARCH_POOL] == 100
    assert balances(db)[CONSUMED] == 900


def test_a_research_job_pays_no_share_to_itself(db: Database) -> None:
    ledger = Ledger(ResearchShare(ppm=250_000))
    task = create_task(db, "task-1", 1_000)
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, 1_000)
        assert ledger.grant(session, task, WORKER, RESEARCH_POOL) is True
    assert nonzero(balances(db)) == {
        MINT: -1_000,
        WORKER: 1_000,
        RESEARCH_POOL: -1_000,
        CONSUMED: 1_000,
    }
    assert_invariants(db, ledger)


def test_a_zero_research_share_sends_everything_to_consumed(db: Database) -> None:
    ledger = Ledger(ResearchShare(ppm=0))
    task = create_task(db, "task-1", 1_000)
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, 1_000)
        ledger.grant(session, task, WORKER, OWNER)
    assert nonzero(balances(db)) == {MINT: -1_000, WORKER: 1_000, OWNER: -1_000, CONSUMED: 1_000}


def test_reverse_returns_the_pending_credit_to_the_mint(db: Database) -> None:
    ledger = Ledger()
    task = create_task(db, "task-1", 1_000)
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, 1_000)
    with db.transaction() as session:
        assert ledger.reverse(session, task, WORKER, "failed verification") is True
    assert nonzero(balances(db)) == {}
    with db.transaction() as session:
        assert ledger.totals(session).minted == 0
        memos = session.scalars(
            select(LedgerTransaction.memo).where(LedgerTransaction.kind == "reverse")
        ).all()
        assert memos == ["failed verification"]
    assert_invariants(db, ledger)


# -- once-only task credit -------------------------------------------------------------------


def test_accruing_a_task_twice_credits_it_once(db: Database) -> None:
    ledger = Ledger()
    task = create_task(db, "task-1", 1_000)
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, 1_000)
    before = snapshot(db)
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, 1_000)
        ledger.accrue(session, task, "worker:someone-else", 1_000)
    assert snapshot(db) == before


def test_granting_a_task_twice_pays_it_once(db: Database) -> None:
    ledger = Ledger()
    task = create_task(db, "task-1", 1_000)
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, 1_000)
        assert ledger.grant(session, task, WORKER, OWNER) is True
    before = snapshot(db)
    with db.transaction() as session:
        assert ledger.grant(session, task, WORKER, OWNER) is False
        assert ledger.grant(session, task, WORKER, "user:bob") is False
    assert snapshot(db) == before


def test_reversing_a_task_twice_withdraws_it_once(db: Database) -> None:
    ledger = Ledger()
    task = create_task(db, "task-1", 1_000)
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, 1_000)
        assert ledger.reverse(session, task, WORKER, "bad") is True
    before = snapshot(db)
    with db.transaction() as session:
        assert ledger.reverse(session, task, WORKER, "bad again") is False
    assert snapshot(db) == before


def test_a_reversed_task_is_never_granted(db: Database) -> None:
    ledger = Ledger()
    task = create_task(db, "task-1", 1_000)
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, 1_000)
        ledger.reverse(session, task, WORKER, "bad")
    before = snapshot(db)
    with db.transaction() as session:
        assert ledger.grant(session, task, WORKER, OWNER) is False
    assert snapshot(db) == before
    with db.transaction() as session:
        assert ledger.statement(session, WORKER) == {"account": WORKER, "balance": 0, "pending": 0}


def test_a_granted_task_is_never_reversed(db: Database) -> None:
    ledger = Ledger()
    task = create_task(db, "task-1", 1_000)
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, 1_000)
        ledger.grant(session, task, WORKER, OWNER)
    before = snapshot(db)
    with db.transaction() as session:
        assert ledger.reverse(session, task, WORKER, "too late") is False
    assert snapshot(db) == before
    assert balances(db)[WORKER] == 1_000


@pytest.mark.parametrize("posting", ["grant", "reverse"])
def test_a_task_that_was_never_accrued_is_neither_granted_nor_reversed(
    db: Database, posting: str
) -> None:
    ledger = Ledger()
    task = create_task(db, "task-1", 1_000)
    with db.transaction() as session:
        if posting == "grant":
            assert ledger.grant(session, task, WORKER, OWNER) is False
        else:
            assert ledger.reverse(session, task, WORKER, "bad") is False
    assert snapshot(db) == ({}, (0, 0))


@pytest.mark.parametrize("credits", [None, 0])
def test_a_task_worth_nothing_moves_nothing(db: Database, credits: int | None) -> None:
    ledger = Ledger()
    task = create_task(db, "task-1", credits)
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, credits or 0)
        assert ledger.grant(session, task, WORKER, OWNER) is False
        assert ledger.reverse(session, task, WORKER, "bad") is False
    assert nonzero(balances(db)) == {}
    assert_invariants(db, ledger)


def test_the_database_refuses_a_second_accrual_even_without_the_check(db: Database) -> None:
    # If two coordinators both pass `posted()`, the unique (kind, task_id) constraint decides.
    ledger = Ledger()
    task = create_task(db, "task-1", 1_000)
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, 1_000)
    before = snapshot(db)
    with pytest.raises(IntegrityError), db.transaction() as session:
        session.add(LedgerTransaction(kind="accrue", task_id=task.id, created_at=2.0))
        session.flush()
    assert snapshot(db) == before


def test_transactions_without_a_task_are_not_unique(db: Database) -> None:
    # The constraint must not stop an operator from issuing to the same account twice.
    ledger = Ledger()
    with db.transaction() as session:
        ledger.issue(session, OWNER, 5)
    with db.transaction() as session:
        ledger.issue(session, OWNER, 5)
        assert ledger.balance(session, OWNER) == 10
    assert num_rows(db)[0] == 2


# -- issue and donate ------------------------------------------------------------------------


def test_issue_mints_credit_into_an_account(db: Database) -> None:
    ledger = Ledger()
    with db.transaction() as session:
        ledger.issue(session, OWNER, 2_500_000, "welcome")
    assert nonzero(balances(db)) == {MINT: -2_500_000, OWNER: 2_500_000}
    with db.transaction() as session:
        assert [e["memo"] for e in ledger.history(session, OWNER)] == ["welcome"]
        assert session.get_one(Account, OWNER).kind == "user"
    assert_invariants(db, ledger)


@pytest.mark.parametrize("amount", [0, -1, -1_000_000])
def test_issue_refuses_a_non_positive_amount(db: Database, amount: int) -> None:
    with pytest.raises(ConfigError, match="positive"), db.transaction() as session:
        Ledger().issue(session, OWNER, amount)
    assert snapshot(db) == ({}, (0, 0))


def test_issue_keeps_everything_ever_minted_inside_a_64_bit_balance(db: Database) -> None:
    ledger = Ledger()
    with db.transaction() as session:
        ledger.issue(session, OWNER, MAX_MINTED - 1)
    before = snapshot(db)
    with pytest.raises(ConfigError, match="past 1,000,000,000,000"), db.transaction() as session:
        ledger.issue(session, "user:other", 2)
    assert snapshot(db) == before
    with db.transaction() as session:
        ledger.issue(session, "user:other", 1)  # exactly the cap
    assert assert_invariants(db, ledger)[MINT] == -MAX_MINTED


BAD_ACCOUNTS = [
    "alice",
    "user:",
    "mint",
    CONSUMED,
    "pending:user:alice",
    "admin:root",
    "user:al ice",
    "user:alice;drop",
    "worker:" + "x" * 80,
]


@pytest.mark.parametrize("account", BAD_ACCOUNTS)
def test_issue_refuses_a_bad_account_name(db: Database, account: str) -> None:
    with pytest.raises(ConfigError, match="must be user:NAME"), db.transaction() as session:
        Ledger().issue(session, account, 1_000)
    assert snapshot(db) == ({}, (0, 0))


def test_donate_moves_credit_to_the_research_pool(db: Database) -> None:
    ledger = Ledger()
    with db.transaction() as session:
        ledger.issue(session, OWNER, 1_000)
    with db.transaction() as session:
        ledger.donate(session, OWNER, 300)
    assert nonzero(balances(db)) == {MINT: -1_000, OWNER: 700, RESEARCH_POOL: 300}
    with db.transaction() as session:
        ledger.donate(session, OWNER, 700)  # all of it
    assert nonzero(balances(db)) == {MINT: -1_000, RESEARCH_POOL: 1_000}
    assert_invariants(db, ledger)


def test_donate_refuses_more_than_the_balance(db: Database) -> None:
    ledger = Ledger()
    with db.transaction() as session:
        ledger.issue(session, OWNER, 1_000)
    before = snapshot(db)
    with pytest.raises(ConfigError, match="fewer than"), db.transaction() as session:
        ledger.donate(session, OWNER, 1_001)
    with pytest.raises(ConfigError, match="fewer than"), db.transaction() as session:
        ledger.donate(session, "user:nobody", 1)
    assert snapshot(db) == before


def test_pending_credit_cannot_be_donated(db: Database) -> None:
    ledger = Ledger()
    task = create_task(db, "task-1", 1_000)
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, 1_000)
    with pytest.raises(ConfigError), db.transaction() as session:
        ledger.donate(session, WORKER, 1)
    with pytest.raises(ConfigError), db.transaction() as session:
        ledger.donate(session, pending_account(WORKER), 1)
    assert balances(db)[pending_account(WORKER)] == 1_000


def test_the_research_pool_cannot_donate_to_itself(db: Database) -> None:
    ledger = Ledger()
    with db.transaction() as session:
        ledger.issue(session, RESEARCH_POOL, 1_000)
    before = snapshot(db)
    with pytest.raises(ConfigError, match="itself"), db.transaction() as session:
        ledger.donate(session, RESEARCH_POOL, 10)
    assert snapshot(db) == before


@pytest.mark.parametrize("amount", [0, -5])
def test_donate_refuses_a_non_positive_amount(db: Database, amount: int) -> None:
    ledger = Ledger()
    with db.transaction() as session:
        ledger.issue(session, OWNER, 1_000)
    before = snapshot(db)
    with pytest.raises(ConfigError, match="positive"), db.transaction() as session:
        ledger.donate(session, OWNER, amount)
    assert snapshot(db) == before


@pytest.mark.parametrize("account", BAD_ACCOUNTS)
def test_donate_refuses_a_bad_account_name(db: Database, account: str) -> None:
    with pytest.raises(ConfigError), db.transaction() as session:
        Ledger().donate(session, account, 1)


# -- reports ---------------------------------------------------------------------------------


def test_statement_of_an_unknown_account_is_zero_and_a_bad_name_is_refused(db: Database) -> None:
    ledger = Ledger()
    with db.transaction() as session:
        assert ledger.statement(session, "user:nobody") == {
            "account": "user:nobody",
            "balance": 0,
            "pending": 0,
        }
        with pytest.raises(ConfigError):
            ledger.statement(session, "nobody")
        with pytest.raises(NotFoundError):
            ledger.require_account(session, "user:nobody")
        ledger.issue(session, "user:somebody", 1)
        ledger.require_account(session, "user:somebody")


def test_history_is_newest_first_and_includes_pending_entries(db: Database) -> None:
    ledger = Ledger()
    task = create_task(db, "task-1", 400)
    with db.transaction() as session:
        ledger.issue(session, WORKER, 5, "bonus")
    with db.transaction() as session:
        ledger.accrue(session, task, WORKER, 400)
    with db.transaction() as session:
        ledger.grant(session, task, WORKER, OWNER)
    with db.transaction() as session:
        ledger.issue(session, "worker:other", 7)  # someone else's: not in the history
        history = ledger.history(session, WORKER)
    assert [(e["account"], e["amount"], e["kind"]) for e in history] == [
        (WORKER, 400, "grant"),
        (pending_account(WORKER), -400, "grant"),
        (pending_account(WORKER), 400, "accrue"),
        (WORKER, 5, "issue"),
    ]
    assert [e["id"] for e in history] == sorted((e["id"] for e in history), reverse=True)
    assert history[0]["task_id"] == "task-1"
    assert history[0]["job_id"] == "ftjob-1"
    assert history[0]["memo"] == "train task of round 0"
    assert history[-1]["task_id"] is None
    assert history[-1]["memo"] == "bonus"
    assert all(isinstance(e["created_at"], float) for e in history)


def test_history_pages_with_before(db: Database) -> None:
    ledger = Ledger()
    with db.transaction() as session:
        for amount in range(1, 8):
            ledger.issue(session, OWNER, amount)
    with db.transaction() as session:
        everything = ledger.history(session, OWNER)
        assert [e["amount"] for e in everything] == [7, 6, 5, 4, 3, 2, 1]
        pages: list[list[dict[str, Any]]] = []
        before: int | None = None
        while page := ledger.history(session, OWNER, limit=3, before=before):
            pages.append(page)
            before = page[-1]["id"]
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [e for page in pages for e in page] == everything


def test_leaderboard_ranks_workers_and_users_by_granted_balance(db: Database) -> None:
    ledger = Ledger()
    task = create_task(db, "task-1", 10_000)
    with db.transaction() as session:
        ledger.issue(session, "user:carol", 300)
        ledger.issue(session, "worker:b", 500)
        ledger.issue(session, "worker:a", 500)
        ledger.issue(session, "user:dave", 100)
        ledger.issue(session, RESEARCH_POOL, 1_000_000)
        ledger.accrue(
            session, task, "worker:pending-only", 10_000
        )  # only its pending account exists
    with db.transaction() as session:
        board = ledger.leaderboard(session)
        top_two = ledger.leaderboard(session, limit=2)
    assert board == [
        {"account": "worker:a", "kind": "worker", "balance": 500},
        {"account": "worker:b", "kind": "worker", "balance": 500},
        {"account": "user:carol", "kind": "user", "balance": 300},
        {"account": "user:dave", "kind": "user", "balance": 100},
    ]
    assert top_two == board[:2]


def test_job_spending_separates_consumed_from_pending_work(db: Database) -> None:
    ledger = Ledger()
    with db.transaction() as session:
        granted = add_task(session, "task-granted", 100)
        pending = add_task(session, "task-pending", 200)
        reversed_ = add_task(session, "task-reversed", 300)
        other = add_task(session, "task-other-job", 400, job_id="ftjob-2")
        never = add_task(session, "task-never-accrued", 800)
        for task in (granted, pending, reversed_, other):
            ledger.accrue(session, task, WORKER, task.credits or 0)
        ledger.grant(session, granted, WORKER, OWNER)
        ledger.reverse(session, reversed_, WORKER, "bad")
        ledger.grant(session, never, WORKER, OWNER)
    with db.transaction() as session:
        assert ledger.job_spending(session, "ftjob-1") == {"consumed": 100, "pending": 200}
        assert ledger.job_spending(session, "ftjob-2") == {"consumed": 0, "pending": 400}
        assert ledger.job_spending(session, "ftjob-none") == {"consumed": 0, "pending": 0}


def test_totals_count_what_was_minted(db: Database) -> None:
    ledger = Ledger()
    with db.transaction() as session:
        empty = ledger.totals(session)
    assert (empty.minted, empty.balances, empty.entries, empty.accounts) == (0, 0, 0, 0)
    assert empty.balanced
    task = create_task(db, "task-1", 1_000)
    with db.transaction() as session:
        ledger.issue(session, OWNER, 5_000)
        ledger.accrue(session, task, WORKER, 1_000)
        ledger.grant(session, task, WORKER, OWNER)
        totals = ledger.totals(session)
    assert (totals.minted, totals.balances, totals.entries) == (6_000, 6_000, 0)
    # mint, user:alice, pending:worker:wk-1, worker:wk-1, consumed, pool:research
    assert totals.accounts == 6
    assert totals.balanced


def test_a_tampered_balance_is_reported(db: Database) -> None:
    ledger = Ledger()
    with db.transaction() as session:
        ledger.issue(session, OWNER, 1_000)
        ledger.issue(session, "user:bob", 1_000)
    with db.transaction() as session:
        session.execute(update(Account).where(Account.id == OWNER).values(balance=1_001))
    with db.transaction() as session:
        assert ledger.check_balances(session) == [OWNER]
        totals = ledger.totals(session)
    assert (totals.minted, totals.balances) == (2_000, 2_001)
    assert not totals.balanced


def test_an_unbalanced_entry_is_reported(db: Database) -> None:
    ledger = Ledger()
    with db.transaction() as session:
        ledger.issue(session, OWNER, 1_000)
    with db.transaction() as session:
        transaction_id = session.scalar(select(LedgerTransaction.id))
        session.add(LedgerEntry(transaction_id=transaction_id, account_id=OWNER, amount=1))
    with db.transaction() as session:
        assert ledger.check_balances(session) == [OWNER]
        assert ledger.totals(session).entries == 1
        assert not ledger.totals(session).balanced


def test_posting_an_unbalanced_transaction_is_a_programming_error(db: Database) -> None:
    with pytest.raises(AssertionError), db.transaction() as session:
        Ledger().post(session, "issue", [(MINT, -1), (OWNER, 2)])
    assert snapshot(db) == ({}, (0, 0))


# -- rollback --------------------------------------------------------------------------------


class Boom(Exception):
    pass


POSTINGS: dict[str, Callable[[Ledger, Session, Task], object]] = {
    "accrue": lambda ledger, session, task: ledger.accrue(session, task, WORKER, 1_000),
    "grant": lambda ledger, session, task: ledger.grant(session, task, WORKER, OWNER),
    "reverse": lambda ledger, session, task: ledger.reverse(session, task, WORKER, "bad"),
    "issue": lambda ledger, session, task: ledger.issue(session, "user:new", 10),
    "donate": lambda ledger, session, task: ledger.donate(session, OWNER, 10),
}


@pytest.mark.parametrize("posting", list(POSTINGS))
def test_a_failed_transaction_leaves_no_trace(db: Database, posting: str) -> None:
    ledger = Ledger()
    task = create_task(db, "task-1", 1_000)
    with db.transaction() as session:
        ledger.issue(session, OWNER, 100)
        if posting != "accrue":
            ledger.accrue(session, task, WORKER, 1_000)
    before = snapshot(db)
    with pytest.raises(Boom), db.transaction() as session:
        assert POSTINGS[posting](ledger, session, task) is not False
        assert snapshot_in(session) != before  # the posting really happened...
        raise Boom
    assert snapshot(db) == before  # ...and was rolled back
    assert_invariants(db, ledger)
    with db.transaction() as session:  # and it can still happen for real
        assert POSTINGS[posting](ledger, session, task) is not False
    assert snapshot(db) != before


# -- property: any sequence of operations keeps the books balanced ---------------------------

NUM_TASKS = 3
TASK_WORKERS = ["worker:w0", "worker:w1", "user:linked"]
"""Who each task's credit goes to (a worker may be linked to a user's account)."""
OWNERS = [OWNER, "user:bob", RESEARCH_POOL]
HOLDERS = [OWNER, "user:bob", "user:linked", "worker:w0", "worker:w1", RESEARCH_POOL]

OPERATION_KINDS = ["accrue"] * 3 + ["grant"] * 3 + ["reverse", "abort"] + ["issue", "donate"] * 2
"""Weighted so that most tasks get accrued and then granted or reversed."""


def operation(kind: str, task: int, owner: str, holder: str, amount: int) -> tuple[Any, ...]:
    if kind in ("accrue", "reverse", "abort"):
        return (kind, task)
    if kind == "grant":
        return (kind, task, owner)
    return (kind, holder, amount if kind == "issue" else amount // 5 + 1)


operations = st.builds(
    operation,
    st.sampled_from(OPERATION_KINDS),
    st.integers(0, NUM_TASKS - 1),
    st.sampled_from(OWNERS),
    st.sampled_from(HOLDERS),
    st.integers(min_value=1, max_value=5_000_000),
)


class Books:
    """What the ledger should hold, computed from the operations without SQL."""

    def __init__(self, share: ResearchShare) -> None:
        self.share = share
        self.balances: Counter[str] = Counter()
        self.posted: set[tuple[str, int]] = set()
        self.accrued = 0
        self.reversed = 0
        self.issued = 0

    def move(self, entries: list[tuple[str, int]]) -> None:
        assert sum(amount for _, amount in entries) == 0
        for account, amount in entries:
            self.balances[account] += amount

    def accrue(self, task: int, credits: int) -> None:
        if ("accrue", task) in self.posted:
            return
        self.posted.add(("accrue", task))
        self.accrued += credits
        self.move([(MINT, -credits), (pending_account(TASK_WORKERS[task]), credits)])

    def awaiting_verdict(self, task: int) -> bool:
        """Accrued, and neither granted nor reversed yet."""
        verdicts = {("grant", task), ("reverse", task)}
        return ("accrue", task) in self.posted and not verdicts & self.posted

    def grant(self, task: int, credits: int, owner: str) -> bool:
        if not self.awaiting_verdict(task):
            return False
        self.posted.add(("grant", task))
        worker = TASK_WORKERS[task]
        to_pool = 0 if owner == RESEARCH_POOL else credits * self.share.ppm // 1_000_000
        self.move(
            [
                (pending_account(worker), -credits),
                (worker, credits),
                (owner, -credits),
                (RESEARCH_POOL, to_pool),
                (CONSUMED, credits - to_pool),
            ]
        )
        return True

    def reverse(self, task: int, credits: int) -> bool:
        if not self.awaiting_verdict(task):
            return False
        self.posted.add(("reverse", task))
        self.reversed += credits
        self.move([(pending_account(TASK_WORKERS[task]), -credits), (MINT, credits)])
        return True

    def can_donate(self, account: str, amount: int) -> bool:
        return account != RESEARCH_POOL and self.balances[account] >= amount


def apply(
    db: Database, ledger: Ledger, books: Books, tasks: list[Task], op: tuple[Any, ...]
) -> None:
    kind = op[0]
    if kind in ("accrue", "grant", "reverse", "abort"):
        index = op[1]
        task = tasks[index]
        credits = task.credits or 0
    if kind == "accrue":
        with db.transaction() as session:
            ledger.accrue(session, task, TASK_WORKERS[index], credits)
        books.accrue(index, credits)
    elif kind == "grant":
        with db.transaction() as session:
            granted = ledger.grant(session, task, TASK_WORKERS[index], op[2])
        assert granted is books.grant(index, credits, op[2])
    elif kind == "reverse":
        with db.transaction() as session:
            reversed_ = ledger.reverse(session, task, TASK_WORKERS[index], "rejected")
        assert reversed_ is books.reverse(index, credits)
    elif kind == "issue":
        with db.transaction() as session:
            ledger.issue(session, op[1], op[2])
        books.issued += op[2]
        books.move([(MINT, -op[2]), (op[1], op[2])])
    elif kind == "donate":
        if books.can_donate(op[1], op[2]):
            with db.transaction() as session:
                ledger.donate(session, op[1], op[2])
            books.move([(op[1], -op[2]), (RESEARCH_POOL, op[2])])
        else:
            with pytest.raises(ConfigError), db.transaction() as session:
                ledger.donate(session, op[1], op[2])
    elif kind == "abort":  # a task accepted and granted in a transaction that then fails
        with pytest.raises(Boom), db.transaction() as session:
            ledger.accrue(session, task, TASK_WORKERS[index], credits)
            ledger.grant(session, task, TASK_WORKERS[index], OWNER)
            raise Boom


def check_books(db: Database, ledger: Ledger, books: Books) -> None:
    stored = assert_invariants(db, ledger)
    assert nonzero(stored) == nonzero(dict(books.balances))
    non_mint = sum(balance for account, balance in stored.items() if account != MINT)
    assert non_mint == books.accrued - books.reversed + books.issued


@settings(max_examples=40, deadline=None)
@given(
    credits=st.lists(
        st.integers(min_value=1, max_value=10_000_000), min_size=NUM_TASKS, max_size=NUM_TASKS
    ),
    ppm=st.sampled_from([0, 1, 100_000, 333_333, 1_000_000]),
    ops=st.lists(operations, min_size=10, max_size=30),
)
def test_any_sequence_of_postings_keeps_the_books_balanced(
    credits: list[int], ppm: int, ops: list[tuple[Any, ...]]
) -> None:
    db = Database("sqlite://")  # in memory: a fresh database for every example
    try:
        db.migrate()
        share = ResearchShare(ppm=ppm)
        ledger, books = Ledger(share), Books(share)
        with db.transaction() as session:
            tasks = [add_task(session, f"task-{i}", c) for i, c in enumerate(credits)]
        for op in ops:
            apply(db, ledger, books, tasks, op)
            check_books(db, ledger, books)
    finally:
        db.dispose()


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Database]:
    database = Database(postgres_url)
    database.migrate()
    try:
        yield database
    finally:
        database.dispose()


FIXED_SEQUENCE: list[tuple[Any, ...]] = [
    ("issue", OWNER, 3_000_000),
    ("accrue", 0),
    ("accrue", 1),
    ("accrue", 0),
    ("grant", 0, OWNER),
    ("grant", 0, OWNER),
    ("reverse", 1),
    ("grant", 1, OWNER),
    ("reverse", 0),
    ("grant", 2, OWNER),
    ("abort", 2),
    ("accrue", 2),
    ("grant", 2, RESEARCH_POOL),
    ("donate", "worker:w0", 500_000),
    ("donate", "worker:w0", 10_000_000),
    ("donate", RESEARCH_POOL, 1),
    ("issue", "worker:w1", 42),
]


@pytest.mark.postgres
def test_a_sequence_of_postings_keeps_the_books_balanced_on_postgresql(pg: Database) -> None:
    share = ResearchShare(ppm=100_000)
    ledger, books = Ledger(share), Books(share)
    with pg.transaction() as session:
        tasks = [
            add_task(session, f"task-{i}", c)
            for i, c in enumerate([1_000_000, 2_000_000, 4_000_001])
        ]
    for op in FIXED_SEQUENCE:
        apply(pg, ledger, books, tasks, op)
        check_books(pg, ledger, books)
    assert nonzero(balances(pg)) == {
        MINT: -(3_000_000 + 1_000_000 + 4_000_001 + 42),
        OWNER: 3_000_000 - 1_000_000,
        "worker:w0": 500_000,
        "worker:w1": 42,
        "user:linked": 4_000_001,
        RESEARCH_POOL: 100_000 - 4_000_001 + 500_000,
        CONSUMED: 900_000 + 4_000_001,
    }


def wait_for_lock_waiter(db: Database, timeout_s: float = 10.0) -> None:
    """Block until some other session of this database waits on a lock."""
    deadline = time.monotonic() + timeout_s
    with db.engine.connect() as connection:
        while True:
            waiting = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
            connection.rollback()
            if waiting:
                return
            assert time.monotonic() < deadline, "the second session never waited on a lock"
            time.sleep(0.01)


def in_thread(work: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


@pytest.mark.postgres
def test_two_sessions_creating_the_same_account_both_land(pg: Database) -> None:
    ledger = Ledger()

    def second() -> None:
        with pg.transaction() as session:
            ledger.issue(session, "user:newcomer", 2)

    with pg.transaction() as first:
        ledger.issue(first, "user:newcomer", 1)  # creates `mint` and the account, uncommitted
        thread, errors = in_thread(second)
        wait_for_lock_waiter(pg)  # the second creator waits for the first...
    thread.join(timeout=30)  # ...which commits, and then the second goes on
    assert not thread.is_alive()
    assert errors == []
    with pg.transaction() as session:
        rows = session.scalar(
            select(func.count()).select_from(Account).where(Account.id == "user:newcomer")
        )
        assert rows == 1
        assert ledger.balance(session, "user:newcomer") == 3
        assert ledger.balance(session, MINT) == -3
    assert num_rows(pg) == (2, 4)
    assert_invariants(pg, ledger)


@pytest.mark.postgres
def test_two_coordinators_accruing_one_task_credit_it_once(pg: Database) -> None:
    ledger = Ledger()
    task = create_task(pg, "task-1", 1_000)

    def second() -> None:
        with pg.transaction() as session:
            ledger.accrue(session, task, WORKER, 1_000)

    with pg.transaction() as first:
        ledger.accrue(first, task, WORKER, 1_000)
        thread, errors = in_thread(second)  # it does not see the first's uncommitted accrual
        wait_for_lock_waiter(pg)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], IntegrityError)
    assert nonzero(balances(pg)) == {MINT: -1_000, pending_account(WORKER): 1_000}
    assert num_rows(pg) == (1, 2)
    assert_invariants(pg, ledger)


@pytest.mark.postgres
def test_concurrent_donations_cannot_overdraw_an_account(pg: Database) -> None:
    ledger = Ledger()
    with pg.transaction() as session:
        ledger.issue(session, OWNER, 100)
        ledger.issue(session, RESEARCH_POOL, 1)  # the pool exists: only the balance row is shared

    def second() -> None:
        with pg.transaction() as session:
            ledger.donate(session, OWNER, 100)

    with pg.transaction() as first:
        ledger.donate(first, OWNER, 100)
        thread, errors = in_thread(second)
        wait_for_lock_waiter(pg)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert all(isinstance(error, ConfigError) for error in errors)
    with pg.transaction() as session:
        assert ledger.balance(session, OWNER) == 0
        assert ledger.balance(session, RESEARCH_POOL) == 101
