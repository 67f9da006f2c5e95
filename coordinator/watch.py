"""`swarm jobs watch`: a job's progress live in the terminal until it ends.

The bar counts outer rounds (an epoch-based job shows its epoch instead), with the latest train
and held-out loss and an ETA from the rounds done so far; each new event of the job is printed
above it as it happens.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
_RETRIES = 30


class WatchError(RuntimeError):
    """The job cannot be watched (unknown, not the caller's, or the coordinator is gone)."""


def _get(http: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    """GET a JSON object, riding out a coordinator that is briefly unreachable (or a proxy in
    front of it answering 502, 503 or 504 while it restarts)."""
    for attempt in range(_RETRIES):
        try:
            response = http.get(path, params=params)
            if response.status_code not in (502, 503, 504):
                break
            problem = f"HTTP {response.status_code}"
        except httpx.TransportError as exc:
            problem = str(exc)
        if attempt == _RETRIES - 1:
            raise WatchError(f"lost the coordinator at {http.base_url}: {problem}")
        time.sleep(min(2.0, 0.2 * 2**attempt))
    try:
        body = response.json()
    except ValueError:
        raise WatchError(f"HTTP {response.status_code}: {response.text[:200]}") from None
    if response.status_code != 200:
        raise WatchError(body.get("error", {}).get("message", str(body)))
    return body  # type: ignore[no-any-return]


def _event_number(event: dict[str, Any]) -> int:
    return int(str(event["id"]).removeprefix("ftevent-"))


def describe_loss(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return ""
    parts = []
    if metrics.get("train_loss") is not None:
        parts.append(f"loss {metrics['train_loss']:.4f}")
    if metrics.get("valid_loss") is not None:
        parts.append(f"held-out {metrics['valid_loss']:.4f}")
    return " · ".join(parts)


def estimate_eta(job: dict[str, Any], now: float) -> str:
    """Time left at the pace of the rounds done so far ("-" until one is done)."""
    swarm = job["swarm"]
    done, total, started = swarm["rounds_completed"], swarm["total_rounds"], swarm["started_at"]
    if job["status"] in TERMINAL:
        return "0:00:00"
    if not started or not done or not total:
        return "-"
    left = (now - started) / done * max(0, total - done)
    return time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86_400 else f"{left / 3600:.0f} h"


def _description(job: dict[str, Any]) -> str:
    swarm = job["swarm"]
    text = f"[cyan]{job['status']}[/]"
    epochs = swarm["spec"].get("num_epochs") or 0
    if epochs:
        text += f" epoch {min(swarm['data_epoch'] + 1, epochs)}/{epochs}"
    return text


def watch_job(
    http: httpx.Client, job_id: str, *, interval_s: float = 2.0, console: Console | None = None
) -> int:
    """Follow a job until it ends; 0 if it succeeded, 1 if it failed or was cancelled."""
    console = console or Console()
    job = _get(http, f"/v1/fine_tuning/jobs/{job_id}")
    seen = -1
    latest: dict[str, Any] | None = None
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("rounds  {task.fields[loss]}"),
        TextColumn("ETA {task.fields[eta]}"),
    )
    spec = job["swarm"]["spec"]
    console.print(
        f"watching {job_id}: {job['model']}, {spec['method']} ({spec['adapter']}), "
        f"{job['swarm']['owner']}; Ctrl-C stops watching, not the job",
        highlight=False,
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(
            _description(job), total=job["swarm"]["total_rounds"], loss="", eta="-"
        )
        while True:
            events = _get(http, f"/v1/fine_tuning/jobs/{job_id}/events", limit=100)["data"]
            for event in reversed(events):
                if _event_number(event) <= seen:
                    continue
                seen = _event_number(event)
                if event["type"] == "metrics":
                    latest = event["data"]
                stamp = datetime.fromtimestamp(event["created_at"]).strftime("%H:%M:%S")
                style = "red" if event["level"] == "error" else "dim"
                progress.console.print(
                    f"[{style}]{stamp}[/] {escape(event['message'])}", highlight=False
                )
            progress.update(
                bar,
                description=_description(job),
                completed=job["swarm"]["rounds_completed"],
                total=job["swarm"]["total_rounds"],
                loss=describe_loss(latest),
                eta=estimate_eta(job, time.time()),
            )
            if job["status"] in TERMINAL:
                break
            time.sleep(interval_s)
            job = _get(http, f"/v1/fine_tuning/jobs/{job_id}")
    if job["status"] == "succeeded":
        console.print(
            f"[green]succeeded[/]: {job['fine_tuned_model']} "
            f"(download it with `swarm jobs download {job_id}`)",
            highlight=False,
        )
        return 0
    reason = escape((job.get("error") or {}).get("message", ""))
    console.print(f"[red]{job['status']}[/]{': ' + reason if reason else ''}", highlight=False)
    return 1
