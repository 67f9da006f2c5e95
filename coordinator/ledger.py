"""The credits ledger in SQL: accounts, balanced transactions, and the reports read from them.

Every posting runs inside the caller's transaction, so credit moves together with the state
change that earns it (a task accepted, a round closed) or not at all. The rules of what moves
where live in `swarm.scheduler.credits`; this module stores them and enforces, with a unique
constraint on (kind, task_id), that a task's credit is accrued, granted and reversed at most
once each, whichever coordinator gets there first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from swarm.coordinator.storage import Account, LedgerEntry, LedgerTransaction, Task
from swarm.protocol.errors import ConfigError, NotFoundError
from swarm.scheduler import MINT, RESEARCH_POOL, ResearchShare, account_kind, pending_account
from swarm.scheduler import credits as rules

logger = logging.getLogger(__name__)

MAX_MINTED = 10**18
"""The most micro-credits (a trillion credits) that may ever be minted; an int64 holds 9.2e18."""


@dataclass(frozen=True, kw_only=True)
class Totals:
    """What the invariant compares: minted credit against the sum of all other balances."""

    minted: int
    balances: int
    entries: int
    """The sum of every entry ever posted: zero when every transaction balanced."""
    accounts: int

    @property
    def balanced(self) -> bool:
        return self.minted == self.balances and self.entries == 0


class Ledger:
    def __init__(self, share: ResearchShare | None = None) -> None:
        self.share = share or ResearchShare()

    # -- postings --------------------------------------------------------------------------

    def post(
        self,
        session: Session,
        kind: str,
        entries: rules.Entries,
        *,
        task_id: str | None = None,
        job_id: str | None = None,
        memo: str = "",
    ) -> bool:
        """Record one balanced transaction; False if this task's `kind` was already posted."""
        rules.check_balanced(entries)
        if task_id is not None and self.posted(session, kind, task_id):
            return False
        now = time.time()
        transaction = LedgerTransaction(
            kind=kind, task_id=task_id, job_id=job_id, memo=memo[:500], created_at=now
        )
        session.add(transaction)
        session.flush()  # the unique constraint fires here if another coordinator won the race
        for account, amount in entries:
            if amount == 0:
                continue
            self._ensure_account(session, account, now)
            session.add(
                LedgerEntry(transaction_id=transaction.id, account_id=account, amount=amount)
            )
            session.execute(
                update(Account)
                .where(Account.id == account)
                .values(balance=Account.balance + amount)
            )
        return True

    def posted(self, session: Session, kind: str, task_id: str) -> bool:
        return (
            session.scalar(
                select(LedgerTransaction.id).where(
                    LedgerTransaction.kind == kind, LedgerTransaction.task_id == task_id
                )
            )
            is not None
        )

    def accrue(self, session: Session, task: Task, worker_account: str, amount: int) -> None:
        """A result was accepted: its credit is pending for the worker."""
        if amount < 0:
            raise ValueError(f"task {task.id} cannot earn {amount} micro-credits")
        self.post(
            session,
            "accrue",
            rules.accrual(worker_account, amount),
            task_id=task.id,
            job_id=task.job_id,
            memo=f"{task.kind} task of round {task.round_index}",
        )

    def grant(self, session: Session, task: Task, worker_account: str, owner: str) -> bool:
        """The result was verified: pending becomes granted, and the job's owner pays."""
        amount = task.credits or 0
        if not amount or self.posted(session, "reverse", task.id):
            return False
        if not self.posted(session, "accrue", task.id):
            return False
        return self.post(
            session,
            "grant",
            rules.grant(worker_account, owner, amount, self.share),
            task_id=task.id,
            job_id=task.job_id,
            memo=f"{task.kind} task of round {task.round_index}",
        )

    def reverse(self, session: Session, task: Task, worker_account: str, reason: str) -> bool:
        """The result was rejected after it was accepted: its pending credit is withdrawn."""
        amount = task.credits or 0
        if not amount or self.posted(session, "grant", task.id):
            return False
        if not self.posted(session, "accrue", task.id):
            return False
        return self.post(
            session,
            "reverse",
            rules.reversal(worker_account, amount),
            task_id=task.id,
            job_id=task.job_id,
            memo=reason,
        )

    def issue(self, session: Session, account: str, amount: int, memo: str = "") -> None:
        """An operator gives `amount` micro-credits to `account` (they are minted)."""
        rules.check_account(account)
        if amount <= 0:
            raise ConfigError(f"amount must be positive, got {amount}")
        # Balances are 64-bit integers of micro-credits: keep everything ever minted well inside.
        minted = -self.balance(session, MINT)
        if minted + amount > MAX_MINTED:
            raise ConfigError(
                f"issuing {rules.format_credits(amount)} credits would take all credits ever "
                f"minted past {rules.format_credits(MAX_MINTED)}"
            )
        self.post(session, "issue", rules.issue(account, amount), memo=memo or "issued")

    def donate(self, session: Session, account: str, amount: int) -> None:
        """Move `amount` micro-credits from `account` to the research pool."""
        rules.check_account(account)
        if account == RESEARCH_POOL:
            raise ConfigError("the research pool cannot donate to itself")
        if amount <= 0:
            raise ConfigError(f"amount must be positive, got {amount}")
        # Lock the account's row for the check, or two concurrent donations could both pass it.
        balance = int(
            session.scalar(select(Account.balance).where(Account.id == account).with_for_update())
            or 0
        )
        if balance < amount:
            raise ConfigError(
                f"{account} has {rules.format_credits(balance)} credits, fewer than the "
                f"{rules.format_credits(amount)} to donate"
            )
        self.post(session, "donate", rules.donation(account, amount), memo="donated to research")

    # -- reading ---------------------------------------------------------------------------

    def balance(self, session: Session, account: str) -> int:
        return int(session.scalar(select(Account.balance).where(Account.id == account)) or 0)

    def statement(self, session: Session, account: str) -> dict[str, Any]:
        """An account's granted and pending balance."""
        rules.check_account(account)
        return {
            "account": account,
            "balance": self.balance(session, account),
            "pending": self.balance(session, pending_account(account)),
        }

    def history(
        self, session: Session, account: str, *, limit: int = 50, before: int | None = None
    ) -> list[dict[str, Any]]:
        """An account's entries (and those of its pending account), newest first."""
        rules.check_account(account)
        query = (
            select(LedgerEntry, LedgerTransaction)
            .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
            .where(LedgerEntry.account_id.in_([account, pending_account(account)]))
            .order_by(LedgerEntry.id.desc())
            .limit(limit)
        )
        if before is not None:
            query = query.where(LedgerEntry.id < before)
        return [
            {
                "id": entry.id,
                "account": entry.account_id,
                "amount": entry.amount,
                "kind": transaction.kind,
                "task_id": transaction.task_id,
                "job_id": transaction.job_id,
                "memo": transaction.memo,
                "created_at": transaction.created_at,
            }
            for entry, transaction in session.execute(query)
        ]

    def leaderboard(self, session: Session, *, limit: int = 20) -> list[dict[str, Any]]:
        """Worker and user accounts by granted balance, highest first."""
        rows = session.execute(
            select(Account.id, Account.kind, Account.balance)
            .where(Account.kind.in_(["worker", "user"]))
            .order_by(Account.balance.desc(), Account.id)
            .limit(limit)
        )
        return [{"account": a, "kind": k, "balance": b} for a, k, b in rows]

    def job_spending(self, session: Session, job_id: str) -> dict[str, int]:
        """Micro-credits a job's owner has paid (granted work) and owes (pending work)."""
        granted = session.scalar(
            select(func.coalesce(func.sum(Task.credits), 0))
            .join(LedgerTransaction, LedgerTransaction.task_id == Task.id)
            .where(Task.job_id == job_id, LedgerTransaction.kind == "grant")
        )
        accrued = session.scalar(
            select(func.coalesce(func.sum(Task.credits), 0))
            .join(LedgerTransaction, LedgerTransaction.task_id == Task.id)
            .where(Task.job_id == job_id, LedgerTransaction.kind == "accrue")
        )
        reversed_ = session.scalar(
            select(func.coalesce(func.sum(Task.credits), 0))
            .join(LedgerTransaction, LedgerTransaction.task_id == Task.id)
            .where(Task.job_id == job_id, LedgerTransaction.kind == "reverse")
        )
        return {
            "consumed": int(granted or 0),
            "pending": int(accrued or 0) - int(granted or 0) - int(reversed_ or 0),
        }

    def totals(self, session: Session) -> Totals:
        minted = -self.balance(session, MINT)
        balances = session.scalar(
            select(func.coalesce(func.sum(Account.balance), 0)).where(Account.id != MINT)
        )
        entries = session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0)))
        accounts = session.scalar(select(func.count()).select_from(Account))
        return Totals(
            minted=minted,
            balances=int(balances or 0),
            entries=int(entries or 0),
            accounts=int(accounts or 0),
        )

    def check_balances(self, session: Session) -> list[str]:
        """Accounts whose stored balance differs from the sum of their entries (should be none)."""
        sums: dict[str, int] = dict(
            session.execute(
                select(LedgerEntry.account_id, func.sum(LedgerEntry.amount)).group_by(
                    LedgerEntry.account_id
                )
            ).all()
        )
        return [
            account.id
            for account in session.scalars(select(Account))
            if int(sums.get(account.id, 0)) != account.balance
        ]

    def require_account(self, session: Session, account: str) -> None:
        if session.get(Account, account) is None:
            raise NotFoundError(f"no account {account!r}: it has never earned or been given credit")

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _ensure_account(session: Session, account: str, now: float) -> None:
        """Create the account if it does not exist, safely against a concurrent creator."""
        values = {"id": account, "kind": account_kind(account), "balance": 0, "created_at": now}
        dialect = session.get_bind().dialect.name
        insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
        session.execute(
            insert(Account).values(**values).on_conflict_do_nothing(index_elements=["id"])
        )
