"""Credits: what accepted work is worth, and the balanced postings that move it.

One credit is 10^15 FLOPs of accepted work (see `swarm.scheduler.work` for how FLOPs are
counted). Amounts are whole micro-credits (10^9 FLOPs each), so sums are exact.

The ledger is double-entry: every transaction's entries sum to zero. The `mint` account issues
credits, so its balance is minus everything ever minted, and the balances of all other accounts
add up to exactly that. The life of one task's credit:

    accrue   (result accepted)      mint -> pending:<worker account>
    grant    (result verified)      pending:<worker account> -> <worker account>
                                    owner -> consumed, less the research share
                                    owner -> pool:research, the research share
    reverse  (result rejected)      pending:<worker account> -> mint

A task is accrued, granted and reversed at most once each (the storage enforces it), and
never both granted and reversed. Operators `issue` credits to an account (minted too), and
anyone may `donate` from their account to the research pool.
"""

from __future__ import annotations

from dataclasses import dataclass

from swarm.protocol.errors import ConfigError

MICRO_PER_CREDIT = 1_000_000
FLOPS_PER_CREDIT = 1e15
FLOPS_PER_MICRO = FLOPS_PER_CREDIT / MICRO_PER_CREDIT

MINT = "mint"
CONSUMED = "consumed"
RESEARCH_POOL = "pool:research"
SYSTEM_ACCOUNTS = (MINT, CONSUMED)
ACCOUNT_PREFIXES = ("worker:", "user:", "pool:", "pending:")
MAX_ACCOUNT_CHARS = 80

Entries = list[tuple[str, int]]


def micro_credits(flops: float) -> int:
    """Whole micro-credits for `flops` of work (at least 1 for any work at all)."""
    if flops <= 0:
        return 0
    return max(1, round(flops / FLOPS_PER_MICRO))


def format_credits(micro: int) -> str:
    return f"{micro / MICRO_PER_CREDIT:,.6f}"


def worker_account(worker_id: str) -> str:
    return f"worker:{worker_id}"


def user_account(name: str) -> str:
    return f"user:{name}"


def pending_account(account: str) -> str:
    return f"pending:{account}"


def account_kind(account: str) -> str:
    """`system`, `worker`, `user`, `pool` or `pending`."""
    if account in SYSTEM_ACCOUNTS:
        return "system"
    return account.split(":", 1)[0]


def check_account(account: str) -> str:
    """Raise `ConfigError` unless `account` names a user, worker or pool account."""
    prefix, _, name = account.partition(":")
    if (
        f"{prefix}:" not in ("worker:", "user:", "pool:")
        or not name
        or len(account) > MAX_ACCOUNT_CHARS
        or not all(c.isascii() and (c.isalnum() or c in "._-@") for c in name)
    ):
        raise ConfigError(
            f"account {account!r:.100} must be user:NAME, worker:ID or pool:NAME (letters, digits "
            f"and . _ - @, at most {MAX_ACCOUNT_CHARS} characters)"
        )
    return account


@dataclass(frozen=True, kw_only=True)
class ResearchShare:
    """The share of each job's spending that goes to the research pool, in parts per million."""

    ppm: int = 100_000

    def __post_init__(self) -> None:
        if not 0 <= self.ppm <= 1_000_000:
            raise ConfigError(f"research share must be in [0, 1000000] ppm, got {self.ppm}")

    def of(self, amount: int) -> int:
        return amount * self.ppm // 1_000_000


def accrual(worker: str, amount: int) -> Entries:
    return [(MINT, -amount), (pending_account(worker), amount)]


def grant(worker: str, owner: str, amount: int, share: ResearchShare) -> Entries:
    entries: Entries = [(pending_account(worker), -amount), (worker, amount), (owner, -amount)]
    to_pool = 0 if owner == RESEARCH_POOL else share.of(amount)
    entries.append((CONSUMED, amount - to_pool))
    if to_pool:
        entries.append((RESEARCH_POOL, to_pool))
    return entries


def reversal(worker: str, amount: int) -> Entries:
    return [(pending_account(worker), -amount), (MINT, amount)]


def issue(account: str, amount: int) -> Entries:
    return [(MINT, -amount), (account, amount)]


def donation(account: str, amount: int, to: str = RESEARCH_POOL) -> Entries:
    return [(account, -amount), (to, amount)]


def check_balanced(entries: Entries) -> None:
    assert sum(amount for _, amount in entries) == 0, entries
