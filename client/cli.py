"""`swarmclient`: the volunteer's command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from swarm.client.settings import ClientSettings
from swarm.protocol.errors import (
    CertificateMismatchError,
    ConfigError,
    SwarmError,
    VersionMismatchError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarmclient", description="Give your machine's idle compute to a swarm."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    join = commands.add_parser("join", help="join a coordinator and work until stopped")
    join.add_argument(
        "--coordinator",
        help="HOST:PORT of the coordinator's gRPC endpoint; several that share one database, "
        "separated by commas, are tried in turn (A:50051,B:50051)",
    )
    join.add_argument("--name", help="name shown on the coordinator (default: host name)")
    join.add_argument("--data-dir", type=Path, help="identity, benchmark and blob cache")
    join.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: all)")
    join.add_argument(
        "--max-upload-mbps", type=float, help="cap on what the client sends (default: none)"
    )
    join.add_argument(
        "--max-download-mbps", type=float, help="cap on what the client receives (default: none)"
    )
    join.add_argument(
        "--cache-max-gb", type=float, help="cap on the blob cache (default 20; 0: none)"
    )
    join.add_argument(
        "--max-memory-gb", type=float, help="memory offered to jobs (default: all of it)"
    )
    join.add_argument(
        "--idle-only",
        action="store_true",
        default=None,
        help="take work only while other programs leave the CPU mostly idle",
    )
    join.add_argument("--schedule", help="work only in this daily local-time window: 22:00-07:00")
    join.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    join.add_argument(
        "--coordinator-fingerprint",
        help="trust only this certificate (SHA256:..., as the coordinator logs it; several "
        "separated by commas) instead of the first one the coordinator presents",
    )
    join.add_argument(
        "--tls-ca", type=Path, help="verify the coordinator's certificate against this CA bundle"
    )
    join.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="no TLS: for a coordinator run with --no-tls",
    )
    join.add_argument(
        "--no-peer-averaging",
        dest="peer_averaging",
        action="store_false",
        default=None,
        help="submit every update directly, even for jobs whose workers average among "
        "themselves (hivemind)",
    )
    join.add_argument(
        "--peer-listen",
        help="multiaddr for peer averaging to listen on (default /ip4/0.0.0.0/tcp/0)",
    )
    join.add_argument(
        "--peer-announce",
        help="multiaddrs other workers should dial, comma-separated (a port forwarded to "
        "--peer-listen's)",
    )
    join.add_argument(
        "--no-live", action="store_true", help="plain log lines even in a terminal (no panel)"
    )
    for name, text in (
        ("status", "what a client running with this data directory is doing"),
        ("credits", "the credits a client running with this data directory has earned"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--data-dir", type=Path, help="the client's data directory")
    login = commands.add_parser("login", help="link this machine's work to your account")
    login.add_argument("--token", required=True, help="your account's API key (sk-swarm-...)")
    login.add_argument("--config-dir", type=Path, help="where the token is kept")
    logout = commands.add_parser("logout", help="forget the account token")
    logout.add_argument("--config-dir", type=Path, help="where the token is kept")
    cache = commands.add_parser("cache", help="show or clear the blob cache")
    cache.add_argument("action", choices=("show", "clear"))
    cache.add_argument("--data-dir", type=Path, help="the client's data directory")
    return parser


def _settings(args: argparse.Namespace) -> ClientSettings:
    flags = (
        "coordinator",
        "name",
        "data_dir",
        "config_dir",
        "threads",
        "max_upload_mbps",
        "max_download_mbps",
        "cache_max_gb",
        "max_memory_gb",
        "idle_only",
        "schedule",
        "log_level",
        "coordinator_fingerprint",
        "tls_ca",
        "insecure",
        "peer_averaging",
        "peer_listen",
        "peer_announce",
    )
    given: dict[str, Any] = {
        flag: getattr(args, flag) for flag in flags if getattr(args, flag, None) is not None
    }
    return ClientSettings(**given)


def _cache_command(args: argparse.Namespace, settings: ClientSettings) -> int:
    from swarm.client.cache import BlobCache

    root = settings.data_dir / "blobs"
    if not root.is_dir():
        print(f"no blob cache at {root}")
        return 0
    cache = BlobCache(root, max_bytes=int(settings.cache_max_gb * 1e9))
    if args.action == "clear":
        freed = cache.clear()
        print(f"cleared the blob cache at {root}: {freed / 1e6:,.1f} MB freed")
        return 0
    usage = cache.usage()
    cap = f"{settings.cache_max_gb:g} GB cap" if settings.cache_max_gb else "no cap"
    print(
        f"{root}: {usage.num_blobs} blobs, {usage.size_bytes / 1e6:,.1f} MB "
        f"({cap}), {usage.partial_bytes / 1e6:,.1f} MB in partial downloads"
    )
    return 0


def _status_command(args: argparse.Namespace, settings: ClientSettings) -> int:
    from rich.console import Console

    from swarm.client.live import render
    from swarm.client.status import is_running, read_status

    status = read_status(settings.data_dir)
    if status is None:
        print(
            f"no swarmclient has run with the data directory {settings.data_dir}; start one "
            "with `swarmclient join --coordinator HOST:PORT`"
        )
        return 1
    running = is_running(status)
    seen = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.updated_at))
    if args.command == "credits":
        print(
            f"{status.credits_granted:,.6f} credits granted, {status.credits_pending:,.6f} "
            f"pending (worker {status.worker_id or '?'}, as of {seen})"
        )
        return 0
    if not running:
        print(f"swarmclient is not running (last seen {seen}, {status.state})")
    Console().print(render(status))
    return 0 if running else 3


def _account_command(args: argparse.Namespace, settings: ClientSettings) -> int:
    from swarm.client.account import forget_token, save_token

    if args.command == "logout":
        had = forget_token(settings.config_dir)
        print("logged out" if had else "this machine was not logged in")
        return 0
    try:
        path = save_token(settings.config_dir, args.token)
    except ValueError as exc:
        print(f"swarmclient: {exc}", file=sys.stderr)
        return 2
    print(
        f"saved to {path} (readable by you only). From the next `swarmclient join`, this "
        "machine's credits go to the key's account; the coordinator checks the key then."
    )
    return 0


def _run_worker(settings: ClientSettings, live: bool) -> None:
    from swarm.client.worker import Worker  # torch is slow to import; parse flags first

    stop = threading.Event()
    worker = Worker(settings, stop)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        logging.getLogger("swarm.client").info(
            "%s received: finishing up and handing back the current task (again to force)",
            signal.Signals(signum).name,
        )
        worker.status.update(state="stopping", detail="handing back the current task")
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    if not live:
        worker.run()
        return
    from rich.live import Live

    from swarm.client.live import render

    with Live(render(worker.status.snapshot()), refresh_per_second=2, transient=False) as view:

        def refresh() -> None:
            while not stop.wait(0.5):
                view.update(render(worker.status.snapshot()))

        threading.Thread(target=refresh, name="live-view", daemon=True).start()
        try:
            worker.run()
        finally:
            view.update(render(worker.status.snapshot()))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        print(
            f"swarmclient: invalid {'.'.join(map(str, first['loc']))}: {first['msg']}",
            file=sys.stderr,
        )
        return 2
    if args.command == "cache":
        return _cache_command(args, settings)
    if args.command in ("login", "logout"):
        return _account_command(args, settings)
    if args.command in ("status", "credits"):
        return _status_command(args, settings)
    live = sys.stdout.isatty() and not args.no_live
    if live:  # log lines scroll above the panel, which stays at the bottom of the terminal
        from rich.logging import RichHandler

        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(name)s: %(message)s",
            handlers=[RichHandler(show_path=False, rich_tracebacks=True)],
        )
    else:
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    try:
        _run_worker(settings, live)
    except (VersionMismatchError, CertificateMismatchError, ConfigError) as exc:
        print(f"swarmclient: {exc}", file=sys.stderr)  # each says what to do
        return 2
    except SwarmError as exc:  # a refusal that retrying cannot fix
        print(f"swarmclient: the coordinator refused this client: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
