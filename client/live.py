"""The volunteer's view of a running client: a panel that `swarmclient join` keeps live in a
terminal, and that `swarmclient status` prints once."""

from __future__ import annotations

import time

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from swarm.client.status import WorkerStatus


def _bytes(count: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def render(status: WorkerStatus, *, now: float | None = None) -> RenderableType:
    """The status as a panel: what the worker does, how fast, what it earned, the link."""
    now = time.time() if now is None else now
    rows = Table.grid(padding=(0, 2))
    rows.add_column(style="bold cyan", no_wrap=True)
    rows.add_column()
    doing = Text(status.state, style="bold green" if status.state == "training" else "bold")
    if status.task_id:
        doing.append(f"  task {status.task_id} (job {status.job_id})", style="default")
    if status.detail:
        doing.append(f"  {status.detail}", style="yellow")
    rows.add_row("state", doing)
    if status.steps:
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=status.steps, completed=status.step, width=30),
            Text(f"{status.step}/{status.steps} steps"),
            Text("" if status.loss is None else f"loss {status.loss:.4f}"),
        )
        rows.add_row("progress", bar)
    rows.add_row(
        "speed",
        f"{status.tokens_per_s:,.0f} tokens/s" if status.tokens_per_s else "measured after a task",
    )
    rows.add_row(
        "credits",
        f"{status.credits_granted:,.4f} granted · {status.credits_pending:,.4f} pending",
    )
    caps = [
        f"{arrow} {rate:g} Mbit/s"
        for arrow, rate in (("↑", status.max_upload_mbps), ("↓", status.max_download_mbps))
        if rate
    ]
    network = f"↑ {_bytes(status.bytes_up)}  ↓ {_bytes(status.bytes_down)}"
    rows.add_row("network", network + (f"  (caps {', '.join(caps)})" if caps else ""))
    latency = "—" if status.latency_ms is None else f"{status.latency_ms:.0f} ms"
    rows.add_row("coordinator", f"{status.coordinator}  latency {latency}")
    rows.add_row(
        "tasks",
        f"{status.tasks_done} done · {status.tasks_handed_back} handed back · "
        f"up {_duration(now - status.started_at)}",
    )
    who = status.name + (f" ({status.worker_id})" if status.worker_id else "")
    title = f"swarmclient · {who}" + (f" · {status.device}" if status.device else "")
    return Panel(Group(rows), title=title, title_align="left", border_style="blue")
