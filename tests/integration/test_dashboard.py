"""The dashboard in a real headless Chromium, against a coordinator with two clients training.

Every page must render live numbers, the charts must draw, an operator's pause and resume
must work from the page, and the browser console must stay free of errors. Screenshots go to
the test's folder, and to `$SWARM_SCREENSHOTS` when set (how `docs/dashboard-*.png` are made).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_swarm

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
JOB = {
    "model": "micro-llama",
    "hyperparameters": {
        "num_rounds": 400,
        "inner_steps": 2,
        "warmup_steps": 1,
        "batch_size": 2,
        "seq_len": 32,
        "min_clients": 2,
        "num_shards": 4,
        "eval_examples": 8,
    },
}


@dataclass
class Live:
    url: str
    http: httpx.Client
    key: str
    job_id: str
    logs: Path


def wait_for(check: Any, what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing; `apt-get install -y chromium` (.ci/run does)")
        pytest.skip(f"{CHROMIUM} is not installed")
    root = tmp_path_factory.mktemp("dashboard")
    with ExitStack() as stack:
        url = run_swarm(stack, root, ["volunteer-0", "volunteer-1"])
        http = stack.enter_context(httpx.Client(base_url=url, timeout=30.0))
        key = http.post("/v1/swarm/keys", json={"user": "ops", "role": "operator"}).json()["key"]
        http.headers["Authorization"] = f"Bearer {key}"
        job_id = http.post("/v1/fine_tuning/jobs", json=JOB).json()["id"]
        wait_for(
            lambda: (
                http.get(f"/v1/fine_tuning/jobs/{job_id}").json()["swarm"]["rounds_completed"] >= 3
            ),
            "three rounds",
            timeout_s=120,
        )
        yield Live(url, http, key, job_id, root)


@pytest.fixture(scope="module")
def browser(live: Live) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, live: Live, tmp_path: Path) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 850})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{live.url}/dashboard")
    page.fill("#key", live.key)
    page.click("#login-form button")
    page.wait_for_selector("body[data-loaded=overview]")
    yield page
    context.close()
    assert errors == [], errors  # the console stayed clean


def show(page: Any, name: str, live: Live) -> None:
    """Open a page of the dashboard, wait for its live data, and photograph it."""
    page.evaluate("document.body.dataset.loaded = ''")
    page.goto(f"{live.url}/dashboard#{name}")
    page.wait_for_selector(f"body[data-loaded={name}]")
    shot = live.logs / f"dashboard-{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    if target := os.environ.get("SWARM_SCREENSHOTS"):
        shutil.copy(shot, Path(target) / shot.name)


def card(page: Any, label: str) -> str:
    return str(page.text_content(f'.card[data-label="{label}"] .value')).strip()


def drawn_pixels(page: Any, container: str) -> int:
    """Pixels a chart's canvas has painted (0: nothing drawn)."""
    return int(
        page.evaluate(
            """(selector) => {
                const canvas = document.querySelector(`${selector} canvas`);
                const ctx = canvas.getContext("2d");
                const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
                let painted = 0;
                for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
                return painted;
            }""",
            container,
        )
    )


def test_a_wrong_key_is_refused_on_the_page(browser: Any, live: Live) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{live.url}/dashboard")
    page.fill("#key", "sk-swarm-wrong")
    page.click("#login-form button")
    page.wait_for_selector("#login-error:not(:empty)")
    assert "incorrect API key" in str(page.text_content("#login-error"))
    context.close()


def test_the_overview_shows_the_workers_and_draws_the_throughput(page: Any, live: Live) -> None:
    show(page, "overview", live)
    assert card(page, "workers online") == "2"
    assert card(page, "jobs running") == "1"
    assert page.text_content("#devices tbody").strip().startswith("cpu")
    assert drawn_pixels(page, "#throughput-chart") > 500
    assert page.is_hidden("#drain-banner")
    page.click('#drain[data-action="drain"]')
    page.wait_for_selector("#drain-banner:not([hidden])")
    assert "No new tasks are handed out" in str(page.text_content("#drain-banner"))
    assert live.http.get("/v1/swarm/status").json()["draining"] is not None
    page.click('#drain[data-action="undrain"]')
    page.wait_for_selector("#drain-banner", state="hidden")
    assert live.http.get("/v1/swarm/status").json()["draining"] is None


def test_the_jobs_page_shows_progress_and_loss_and_pauses_a_job(page: Any, live: Live) -> None:
    show(page, "jobs", live)
    row = f'#jobs tr[data-job="{live.job_id}"]'
    assert "running" in str(page.text_content(row))
    assert "/400" in str(page.text_content(row))
    page.wait_for_function("() => document.querySelector('#loss-chart canvas') !== null")
    assert drawn_pixels(page, "#loss-chart") > 500
    page.click(f'{row} button[data-action="pause"]')
    page.wait_for_selector(f"{row} .status.paused")
    assert live.http.get(f"/v1/fine_tuning/jobs/{live.job_id}").json()["status"] == "paused"
    page.click(f'{row} button[data-action="resume"]')
    page.wait_for_selector(f"{row} .status.running")
    assert live.http.get(f"/v1/fine_tuning/jobs/{live.job_id}").json()["status"] == "running"


def test_the_workers_page_lists_both_volunteers(page: Any, live: Live) -> None:
    show(page, "workers", live)
    rows = page.locator("#workers tbody tr")
    assert rows.count() == 2
    listed = str(page.text_content("#workers tbody"))
    assert "volunteer-0" in listed and "volunteer-1" in listed and "online" in listed
    worker = live.http.get("/v1/swarm/workers").json()["data"][0]["id"]
    row = f'#workers tr[data-worker="{worker}"]'
    accepted = int(str(page.text_content(f"{row} td:nth-child(4)")).replace(",", ""))
    trust = int(str(page.text_content(f"{row} td:nth-child(6)")).replace(",", ""))
    assert 0 < trust <= accepted  # none rejected here: every accepted result counts
    page.click(f'{row} button[data-action="ban"]')
    page.wait_for_selector(f"{row}.banned")
    assert "banned: banned from the dashboard" in str(page.text_content(row))
    workers = {w["id"]: w for w in live.http.get("/v1/swarm/workers").json()["data"]}
    assert workers[worker]["banned"] is True
    page.click(f'{row} button[data-action="unban"]')
    page.wait_for_selector(f'{row}:not(.banned) button[data-action="ban"]')
    workers = {w["id"]: w for w in live.http.get("/v1/swarm/workers").json()["data"]}
    assert workers[worker]["banned"] is False


def test_the_credits_page_shows_the_leaderboard_and_the_pool(page: Any, live: Live) -> None:
    live.http.post("/v1/swarm/credits/issue", json={"account": "user:ops", "amount": 5})
    live.http.post("/v1/swarm/credits/donate", json={"account": "user:ops", "amount": 1.5})
    show(page, "credits", live)
    assert card(page, "research pool") == "1.500000"
    board = str(page.text_content("#leaderboard tbody"))
    assert "user:ops" in board and "worker:" in board  # the payer, and the volunteers


def test_the_health_page_shows_queue_depths_and_latency(page: Any, live: Live) -> None:
    show(page, "health", live)
    assert card(page, "database latency").endswith("ms")
    assert card(page, "results rejected") == "0"
    assert "no result has been rejected" in str(page.text_content("#rejections tbody"))
    assert "no worker is banned" in str(page.text_content("#banned tbody"))  # unbanned again
    assert "accepted" in str(page.text_content("#tasks tbody"))
    assert card(page, "round time (median)") != "\N{EN DASH}"  # the dash of "none yet"
