"""`swarm`: the operator's and researcher's command line.

Commands: coordinator, demo, files, jobs, credits, keys, models and bench. The HTTP ones (files,
jobs, credits, keys) take `--url` and `--api-key` (default: $SWARM_URL, $SWARM_API_KEY).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

_PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarm", description="Run and use a swarm.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("coordinator", help="serve workers (gRPC) and the API (HTTP)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port for workers (default 50051)")
    serve.add_argument("--http-port", type=int, help="HTTP port for the API (default 8000)")
    serve.add_argument("--data-dir", type=Path, help="database and blobs (default ./swarm-data)")
    serve.add_argument(
        "--db",
        help="database URL, e.g. postgresql://user@host/db (default: SQLite in the data directory)",
    )
    serve.add_argument(
        "--blob-dir",
        type=Path,
        help="blobs (default DATA_DIR/blobs); coordinators sharing a database share this too",
    )
    serve.add_argument(
        "--coordinator-timeout-s",
        type=float,
        help="another coordinator on the database not seen this long is gone, and its "
        "half-aggregated rounds are taken over (default 30)",
    )
    serve.add_argument(
        "--lease-long-poll-s",
        type=float,
        help="a lease with nothing to hand out waits this long for new work (default 5; 0: "
        "answer at once)",
    )
    serve.add_argument(
        "--no-tls",
        dest="tls",
        action="store_false",
        default=None,
        help="serve gRPC in plaintext (only behind a TLS-terminating proxy or on a trusted "
        "network; clients then join with --insecure)",
    )
    serve.add_argument(
        "--tls-cert",
        type=Path,
        help="PEM certificate for gRPC (default: a self-signed one made in DATA_DIR/tls, whose "
        "fingerprint workers pin on first join)",
    )
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument(
        "--http-tls",
        action="store_true",
        default=None,
        help="serve the HTTP API over TLS too, with the same certificate",
    )
    serve.add_argument("--log-level", help="DEBUG, INFO (default), WARNING")
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text (default), or one JSON object per line with job, round, task and worker ids",
    )

    demo = commands.add_parser(
        "demo", help="fine-tune SmolLM2 (SFT, then DPO) with local clients, end to end"
    )
    demo.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    demo.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="base model (default smollm2-135m-instruct; tiny-llama for a quick look)",
    )
    demo.add_argument("--rounds", type=int, help="outer rounds of each job")
    demo.add_argument("--inner-steps", type=int, help="inner steps per task")
    demo.add_argument("--db", help="database URL for the demo's coordinator")
    demo.add_argument("--work-dir", type=Path, help="keep logs and data here")
    demo.add_argument("--json", action="store_true", help="print only the summary, as JSON")

    bench = commands.add_parser("bench", help="measure the system (prints a table, or JSON)")
    benches = bench.add_subparsers(dest="bench_command", required=True)
    compression = _bench_parser(
        benches,
        "compression",
        "codec ratios, speed and error; loss against bytes per codec chain",
        quick="a tiny model and two rounds (a smoke test, seconds)",
    )
    compression.add_argument("--rounds", type=int, help="outer rounds per run (default 5)")
    compression.add_argument("--inner-steps", type=int, help="inner steps per task (default 100)")
    compression.add_argument(
        "--chains", help="comma-separated chains for the convergence runs (default: the presets)"
    )
    compression.add_argument("--processes", type=int, help="runs in parallel (default 2)")
    compression.add_argument("--plot", type=Path, help="write a PNG of loss against bytes here")

    churn = _bench_parser(
        benches,
        "churn",
        "a job under client churn and a coordinator crash, against a calm run",
        quick="3 clients and a shorter job, about two minutes",
    )
    churn.add_argument("--clients", type=int, help="client processes (default 6)")
    churn.add_argument("--db", help="database URL for the coordinators (default SQLite)")
    churn.add_argument("--seed", type=int, help="seeds who is killed when (default 0)")
    churn.add_argument(
        "--coordinators",
        type=int,
        help="coordinators sharing the --db PostgreSQL database (default 1); with more, the "
        "one killed mid-job stays dead and clients fail over to the others",
    )
    churn.add_argument("--work-dir", type=Path, help="keep both runs' logs and data here")

    load = _bench_parser(
        benches,
        "coordinator",
        "task cycles per second and RPC latency under simulated workers",
        quick="40 workers on SQLite for a few seconds (a smoke test)",
    )
    load.add_argument("--workers", help="comma-separated swarm sizes (default 100,1000,5000)")
    load.add_argument("--db", help="sqlite, postgresql or both comma-separated (default both)")
    load.add_argument("--duration", type=float, help="measured seconds per run (default 30)")
    load.add_argument(
        "--postgres-admin-url", help=f"where runs create their database (default {_PG_ADMIN})"
    )
    load.add_argument("--work-dir", type=Path, help="keep each run's coordinator log and data")

    models = commands.add_parser("models", help="the models a coordinator serves")
    models.add_argument("--data-dir", type=Path, help="the coordinator's data directory")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    model_commands.add_parser("list", help="pulled, pullable and preset models")
    pull = model_commands.add_parser(
        "pull", help="prepare a model (name, HF folder, .gguf file or hf:ORG/NAME) for jobs"
    )
    pull.add_argument("name")
    pull.add_argument("--as", dest="alias", help="store it under this name")

    peers = _bench_parser(
        benches,
        "peers",
        "the swarm against hivemind.Optimizer on the same job: bytes, wall time, loss",
        quick="two short rounds on each side (a smoke test, about a minute)",
    )
    peers.add_argument("--peers", type=int, help="processes on each side (default 2)")
    peers.add_argument("--rounds", type=int, help="the swarm's DiLoCo rounds (default 6)")
    peers.add_argument("--inner-steps", type=int, help="the swarm's steps per round (default 50)")
    peers.add_argument(
        "--steps-per-epoch", type=int, help="hivemind's local steps between averages (default 5)"
    )
    peers.add_argument("--codec", help="the swarm's pseudo-gradient chain (default int4)")
    peers.add_argument("--broadcast-codec", help="the swarm's delta chain (default int4+zstd)")
    peers.add_argument("--work-dir", type=Path, help="keep both sides' logs and data here")

    bandwidth = _bench_parser(
        benches,
        "bandwidth",
        "compute utilization of clients behind a capped link, against an uncapped run",
        quick="2 clients, a small model and three short rounds, capped only (about a minute)",
    )
    bandwidth.add_argument("--clients", type=int, help="client processes (default 4)")
    bandwidth.add_argument(
        "--rate-mbps", type=float, help="upload and download cap of each client (default 20)"
    )
    bandwidth.add_argument("--rounds", type=int, help="outer rounds (default 4)")
    bandwidth.add_argument("--inner-steps", type=int, help="inner steps per task (default 50)")
    bandwidth.add_argument("--codec", help="the job's pseudo-gradient chain (default int4)")
    bandwidth.add_argument(
        "--broadcast-codec", help="the job's chain for version deltas (default int4+zstd)"
    )
    bandwidth.add_argument(
        "--no-uncapped", action="store_true", help="skip the uncapped run it is compared with"
    )
    bandwidth.add_argument("--work-dir", type=Path, help="keep the runs' logs and data here")

    finetune = _bench_parser(
        benches,
        "finetune",
        "SFT then DPO through the swarm, against single-process references",
        quick="tiny-llama and two short rounds (a smoke test)",
    )
    finetune.add_argument("--model", help="base model (default smollm2-135m-instruct)")

    credits = _http_parser(
        commands, "credits", "your balance and history (alone), or other accounts' and grants"
    )
    credit_commands = credits.add_subparsers(dest="credits_command")
    show = credit_commands.add_parser("show", help="an account's balance, pending and history")
    show.add_argument(
        "account", nargs="?", help="user:NAME, worker:ID or pool:research (default: yours)"
    )
    credit_commands.add_parser("leaderboard", help="accounts by granted credits")
    credit_commands.add_parser("ledger", help="check that all balances add up to what was minted")
    for name, what in (
        ("issue", "give an account credits (they are minted; operators)"),
        ("donate", "move credits from an account to the research pool"),
    ):
        move = credit_commands.add_parser(name, help=what)
        move.add_argument("account")
        move.add_argument("amount", type=float, help="credits (1 credit = 10^15 FLOPs)")

    files = _http_parser(commands, "files", "upload and manage datasets over HTTP")
    file_commands = files.add_subparsers(dest="files_command", required=True)
    upload = file_commands.add_parser(
        "upload", help="check a JSONL dataset here, then upload it (prints its file id)"
    )
    upload.add_argument("path", type=Path)
    upload.add_argument("--purpose", default="fine-tune")
    file_commands.add_parser("list", help="uploaded files, newest first")
    for name, what in (
        ("get", "one file's details"),
        ("delete", "delete a file (jobs created from it keep their data)"),
    ):
        file_commands.add_parser(name, help=what).add_argument("file_id")

    jobs = _http_parser(commands, "jobs", "create, list, watch and control jobs over HTTP")
    job_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    job_commands.add_parser("list", help="list jobs, newest first")
    get = job_commands.add_parser("get", help="show one job and its rounds")
    get.add_argument("job_id")
    create = job_commands.add_parser("create", help="create a job")
    create.add_argument("--model", default="tiny-llama")
    create.add_argument("--method", choices=["lm", "sft", "dpo"], default="lm")
    create.add_argument("--training-file", default="", help="default: the method's built-in")
    create.add_argument("--validation-file", default=None)
    create.add_argument(
        "--owner",
        help="the account that pays (default: yours; operators: any, pool:research for research)",
    )
    create.add_argument("--priority", type=int, help="-100 to 100; higher starts first")
    create.add_argument("--suffix", help="added to the fine-tuned model's name")
    create.add_argument("--seed", type=int, help="seeds model init, data order and every task")
    for name, what in (
        ("cancel", "stop a job for good (accepted work is still paid)"),
        ("pause", "stop handing out a job's tasks; running ones are revoked"),
        ("resume", "run a paused job again"),
        ("checkpoints", "a job's kept versions, newest first"),
        ("events", "a job's events, newest first"),
    ):
        job_commands.add_parser(name, help=what).add_argument("job_id")
    watch = job_commands.add_parser(
        "watch", help="follow a job live (rounds, loss, ETA, events) until it ends"
    )
    watch.add_argument("job_id")
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    job_commands.add_parser("queue", help="queued jobs in the order they will start, and why")
    download = job_commands.add_parser("download", help="download a job's result files")
    download.add_argument("job_id")
    download.add_argument("--kind", choices=["adapter", "merged"], default="merged")
    download.add_argument("--output", type=Path, help="folder (default ./<job_id>-<kind>)")
    create.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a hyperparameter, e.g. --set num_rounds=5 (repeatable)",
    )

    keys = _http_parser(commands, "keys", "API keys for researchers and operators")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    make = key_commands.add_parser(
        "create", help="make a key (operators; the first one from the coordinator's machine)"
    )
    make.add_argument("user", help="whose key: NAME, their credits account user:NAME")
    make.add_argument("--role", choices=["researcher", "operator"], default="researcher")
    make.add_argument("--name", default="", help="a label, e.g. the laptop it is for")
    make.add_argument(
        "--data-dir",
        type=Path,
        help="write the key straight into this coordinator data directory's database "
        "(no HTTP; to recover a lost operator key)",
    )
    make.add_argument("--db", help="like --data-dir, for a database URL")
    key_commands.add_parser("list", help="your keys (an operator's: everyone's)")
    key_commands.add_parser("revoke", help="revoke a key at once").add_argument("key_id")
    for group in (credit_commands, file_commands, job_commands, key_commands):
        for command in group.choices.values():  # `swarm jobs list --api-key K` works too
            _add_http_options(command, default=argparse.SUPPRESS)
    return parser


def _http_parser(commands: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """A command group that talks to a coordinator's HTTP API."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
    _add_http_options(parser)
    return parser


def _add_http_options(parser: argparse.ArgumentParser, default: Any = None) -> None:
    """--url and --api-key; `default` SUPPRESS leaves the group's value when not given."""
    parser.add_argument(
        "--url",
        default=os.environ.get("SWARM_URL", "http://127.0.0.1:8000")
        if default is None
        else default,
        help="coordinator HTTP URL (default: $SWARM_URL or http://127.0.0.1:8000)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SWARM_API_KEY") if default is None else default,
        help="your API key (default: $SWARM_API_KEY; none needed before the first key exists)",
    )


def _bench_parser(
    benches: Any, name: str, help_text: str, *, quick: str
) -> argparse.ArgumentParser:
    """A bench command with the options every bench shares: --json, --quick and --output."""
    parser: argparse.ArgumentParser = benches.add_parser(name, help=help_text)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--output", type=Path, help="also write the JSON report here")
    return parser


def _coordinator(args: argparse.Namespace) -> int:
    from swarm.coordinator.settings import CoordinatorSettings

    given = {
        k: v
        for k, v in {
            "host": args.host,
            "grpc_port": args.grpc_port,
            "http_port": args.http_port,
            "data_dir": args.data_dir,
            "db": args.db,
            "blob_dir": args.blob_dir,
            "coordinator_timeout_s": args.coordinator_timeout_s,
            "lease_long_poll_s": args.lease_long_poll_s,
            "tls": args.tls,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
            "http_tls": args.http_tls,
            "log_level": args.log_level,
            "log_format": args.log_format,
        }.items()
        if v is not None
    }
    try:
        settings = CoordinatorSettings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        print(
            f"swarm coordinator: invalid {'.'.join(map(str, first['loc']))}: {first['msg']}",
            file=sys.stderr,
        )
        return 2
    from swarm.coordinator.logs import configure

    configure(settings.log_level, settings.log_format)
    from swarm.coordinator.server import run
    from swarm.protocol.errors import ConfigError

    try:
        run(settings)
    except ConfigError as exc:
        print(f"swarm coordinator: {exc}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    from swarm.coordinator.demo import DemoConfig, run_demo
    from swarm.protocol.errors import SwarmError

    hyperparameters: dict[str, Any] = {}
    if args.rounds is not None:
        hyperparameters["num_rounds"] = args.rounds
    if args.inner_steps is not None:
        hyperparameters["inner_steps"] = args.inner_steps
    try:
        summary = run_demo(
            DemoConfig(
                num_clients=args.clients,
                model=args.model,
                hyperparameters=hyperparameters,
                work_dir=args.work_dir,
                db=args.db,
            ),
            quiet=args.json,
        )
    except (RuntimeError, ValueError, SwarmError) as exc:
        print(f"swarm demo failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary))
    return 0 if summary["status"] == "succeeded" else 1


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _models(args: argparse.Namespace) -> int:
    from swarm.coordinator.blobs import BlobStore
    from swarm.coordinator.catalog import ModelCatalog
    from swarm.coordinator.settings import CoordinatorSettings
    from swarm.protocol.errors import SwarmError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = CoordinatorSettings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    catalog = ModelCatalog(settings.data_dir / "models", BlobStore(settings.blobs_dir()))
    try:
        if args.models_command == "pull":
            manifest = catalog.pull(args.name, alias=args.alias)
            print(
                f"{manifest['name']}: {manifest['model_type']}, "
                f"{manifest['num_parameters']:,} parameters from {manifest['source']}; "
                f"jobs can now use --model {manifest['name']}"
            )
            return 0
    except SwarmError as exc:
        print(f"swarm models pull: {exc}", file=sys.stderr)
        return 1
    rows = catalog.list()
    width = max(len(row["name"]) for row in rows)
    print(f"{'name':<{width}}  {'status':<16} {'family':<9} {'parameters':>13}  source")
    for row in rows:
        params = f"{row['num_parameters']:,}" if row["num_parameters"] else "-"
        print(
            f"{row['name']:<{width}}  {row['status']:<16} {row['family'] or '-':<9} "
            f"{params:>13}  {row['source']}"
        )
    return 0


def _download(http: Any, job_id: str, kind: str, output: Path | None) -> int:
    from swarm.coordinator.demo import download_artifact

    folder = output or Path(f"{job_id}-{kind}")
    try:
        files = download_artifact(http, job_id, kind, folder)
    except RuntimeError as exc:
        print(f"swarm jobs download: {exc}", file=sys.stderr)
        return 1
    for entry in files:
        print(f"{folder / entry['path']} ({entry['bytes']:,} bytes)")
    return 0


def _api(command: str, args: argparse.Namespace, request: Callable[[Any], Any]) -> int:
    """Run `request(http)` for `swarm <command>`; print its JSON answer, or the error."""
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with httpx.Client(base_url=args.url, timeout=60.0, headers=headers) as http:
        try:
            response = request(http)
            if isinstance(response, int):  # the request printed its own outcome
                return response
            body = response.json()
        except httpx.HTTPError as exc:
            print(f"swarm {command}: cannot reach {args.url}: {exc}", file=sys.stderr)
            return 1
    if response.status_code != 200:
        print(f"swarm {command}: {body.get('error', {}).get('message', body)}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    def request(http: Any) -> Any:
        command = args.jobs_command
        if command == "download":
            return _download(http, args.job_id, args.kind, args.output)
        if command == "watch":
            return _watch(http, args.job_id, args.interval)
        if command == "list":
            return http.get("/v1/fine_tuning/jobs")
        if command in ("cancel", "pause", "resume"):
            return http.post(f"/v1/fine_tuning/jobs/{args.job_id}/{command}")
        if command in ("checkpoints", "events"):
            return http.get(f"/v1/fine_tuning/jobs/{args.job_id}/{command}")
        if command == "queue":
            return http.get("/v1/swarm/queue")
        if command == "get":
            response = http.get(f"/v1/fine_tuning/jobs/{args.job_id}")
            if response.status_code == 200:
                job = response.json()
                job["rounds"] = http.get(f"/v1/swarm/jobs/{args.job_id}/rounds").json()["data"]
                print(json.dumps(job, indent=2))
                return 0
            return response
        pairs = [item.split("=", 1) for item in args.set]
        if any(len(p) != 2 for p in pairs):
            print("swarm jobs create: --set takes KEY=VALUE", file=sys.stderr)
            return 2
        hyperparameters = {"method": args.method, **{k: _parse_value(v) for k, v in pairs}}
        if args.priority is not None:
            hyperparameters["priority"] = args.priority
        optional = {"owner": args.owner, "suffix": args.suffix, "seed": args.seed}
        return http.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": args.model,
                "training_file": args.training_file,
                "validation_file": args.validation_file,
                "hyperparameters": hyperparameters,
                **{k: v for k, v in optional.items() if v is not None},
            },
        )

    return _api("jobs", args, request)


def _watch(http: Any, job_id: str, interval_s: float) -> int:
    from swarm.coordinator.watch import WatchError, watch_job

    try:
        return watch_job(http, job_id, interval_s=interval_s)
    except WatchError as exc:
        print(f"swarm jobs watch: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"\nstopped watching; {job_id} goes on (`swarm jobs cancel {job_id}` stops it)",
            file=sys.stderr,
        )
        return 130


def _files(args: argparse.Namespace) -> int:
    if args.files_command == "upload":
        try:
            data = args.path.read_bytes()
        except OSError as exc:
            print(f"swarm files upload: cannot read {args.path}: {exc}", file=sys.stderr)
            return 1
        from swarm.coordinator.files import check_dataset
        from swarm.protocol.errors import ConfigError

        try:  # the coordinator checks it again; this saves uploading a file it would refuse
            kind, count = check_dataset(data)
        except ConfigError as exc:
            print(
                f"swarm files upload: {args.path} is not a usable dataset:\n{exc}", file=sys.stderr
            )
            return 1
        print(f"{args.path}: {count:,} {kind} examples; uploading...", file=sys.stderr)

    def request(http: Any) -> Any:
        command = args.files_command
        if command == "upload":
            return http.post(
                "/v1/files",
                files={"file": (args.path.name, data, "application/jsonl")},
                data={"purpose": args.purpose},
            )
        if command == "list":
            return http.get("/v1/files")
        if command == "delete":
            return http.delete(f"/v1/files/{args.file_id}")
        return http.get(f"/v1/files/{args.file_id}")

    return _api("files", args, request)


def _credits(args: argparse.Namespace) -> int:
    def request(http: Any) -> Any:
        command = args.credits_command or "show"
        if command == "show":
            account = getattr(args, "account", None)
            return http.get("/v1/swarm/credits", params={"account": account} if account else {})
        if command == "leaderboard":
            return http.get("/v1/swarm/credits/leaderboard")
        if command == "ledger":
            return http.get("/v1/swarm/ledger")
        return http.post(
            f"/v1/swarm/credits/{command}", json={"account": args.account, "amount": args.amount}
        )

    return _api("credits", args, request)


def _keys(args: argparse.Namespace) -> int:
    if args.keys_command == "create" and (args.data_dir or args.db):
        return _create_key_offline(args)

    def request(http: Any) -> Any:
        command = args.keys_command
        if command == "list":
            return http.get("/v1/swarm/keys")
        if command == "revoke":
            return http.delete(f"/v1/swarm/keys/{args.key_id}")
        response = http.post(
            "/v1/swarm/keys", json={"user": args.user, "role": args.role, "name": args.name}
        )
        if response.status_code == 200:
            _print_new_key(response.json())
            return 0
        return response

    return _api("keys", args, request)


def _print_new_key(key: dict[str, Any]) -> None:
    print(json.dumps(key, indent=2))
    print(
        f"this is the only time the key is shown; give it to {key['user']}, who sets\n"
        f"  export SWARM_API_KEY={key['key']}",
        file=sys.stderr,
    )


def _create_key_offline(args: argparse.Namespace) -> int:
    from swarm.coordinator.http import key_object
    from swarm.coordinator.keys import KeyService
    from swarm.coordinator.settings import CoordinatorSettings
    from swarm.coordinator.storage import Database
    from swarm.protocol.errors import SwarmError

    if args.db is None and not (args.data_dir / "swarm.db").is_file():
        print(f"swarm keys create: no coordinator database in {args.data_dir}", file=sys.stderr)
        return 1
    given = {"data_dir": args.data_dir, "db": args.db}
    settings = CoordinatorSettings(**{k: v for k, v in given.items() if v is not None})
    try:
        db = Database(settings.database_url())
        db.migrate()
        key, secret = KeyService(db).create(args.user, args.role, args.name)
    except SwarmError as exc:
        print(f"swarm keys create: {exc}", file=sys.stderr)
        return 1
    _print_new_key(key_object(key, secret))
    db.dispose()
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.bench_command == "finetune":
        return _bench_finetune(args)
    if args.bench_command == "churn":
        return _bench_churn(args)
    if args.bench_command == "coordinator":
        return _bench_coordinator(args)
    if args.bench_command == "peers":
        return _bench_peers(args)
    if args.bench_command == "bandwidth":
        return _bench_bandwidth(args)
    from dataclasses import replace

    from swarm.coordinator.bench import compression as bench

    config = bench.QUICK if args.quick else bench.BenchConfig()
    spec_changes: dict[str, Any] = {}
    if args.rounds is not None:
        spec_changes["num_rounds"] = args.rounds
    if args.inner_steps is not None:
        spec_changes["inner_steps"] = args.inner_steps
    report = _run_bench(
        args,
        "compression",
        bench,
        lambda: replace(
            config,
            spec=replace(config.spec, **spec_changes),
            **({"processes": args.processes} if args.processes else {}),
            **({"convergence_chains": tuple(args.chains.split(","))} if args.chains else {}),
        ),
    )
    if report is None:
        return 2
    if args.plot:
        bench.plot(report, str(args.plot))
    return 0


def _run_bench(
    args: argparse.Namespace, name: str, bench: Any, configure: Callable[[], Any]
) -> dict[str, Any] | None:
    """Configure and run one bench, print its tables (or JSON with --json) and write --output;
    None, having said why on stderr, if it could not run."""
    from swarm.protocol.errors import SwarmError

    try:
        config = configure()
        progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
        report: dict[str, Any] = bench.run_bench(config, progress)
    except (SwarmError, RuntimeError, ValueError, OSError) as exc:
        print(f"swarm bench {name}: {exc}", file=sys.stderr)
        return None
    text = json.dumps(report, indent=None if args.json else 2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text if args.json else bench.render_tables(report))
    return report


def _bench_finetune(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from swarm.coordinator.bench import finetune as bench

    config = bench.QUICK if args.quick else bench.FinetuneBenchConfig()
    configured = replace(config, model=args.model) if args.model else config
    return 0 if _run_bench(args, "finetune", bench, lambda: configured) is not None else 2


def _bench_churn(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from swarm.coordinator.bench import churn as bench

    config = bench.QUICK if args.quick else bench.ChurnBenchConfig()
    report = _run_bench(
        args,
        "churn",
        bench,
        lambda: replace(
            config,
            **({"num_clients": args.clients} if args.clients else {}),
            **({"db": args.db} if args.db else {}),
            **({"seed": args.seed} if args.seed is not None else {}),
            **({"coordinators": args.coordinators} if args.coordinators else {}),
            **({"work_dir": args.work_dir} if args.work_dir else {}),
        ),
    )
    return 0 if report is not None else 2


def _bench_peers(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from swarm.coordinator.bench import peers as bench

    config = bench.QUICK if args.quick else bench.PeersBenchConfig()
    report = _run_bench(
        args,
        "peers",
        bench,
        lambda: replace(
            config,
            **({"peers": args.peers} if args.peers else {}),
            **({"rounds": args.rounds} if args.rounds else {}),
            **({"inner_steps": args.inner_steps} if args.inner_steps else {}),
            **({"steps_per_epoch": args.steps_per_epoch} if args.steps_per_epoch else {}),
            **({"codec": args.codec} if args.codec else {}),
            **({"broadcast_codec": args.broadcast_codec} if args.broadcast_codec else {}),
            **({"work_dir": args.work_dir} if args.work_dir else {}),
        ),
    )
    return 0 if report is not None else 2


def _bench_bandwidth(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from swarm.coordinator.bench import bandwidth as bench

    config = bench.QUICK if args.quick else bench.BandwidthBenchConfig()
    job = {
        **({"num_rounds": args.rounds} if args.rounds is not None else {}),
        **({"inner_steps": args.inner_steps} if args.inner_steps is not None else {}),
        **({"codec": args.codec} if args.codec else {}),
        **({"broadcast_codec": args.broadcast_codec} if args.broadcast_codec else {}),
    }
    report = _run_bench(
        args,
        "bandwidth",
        bench,
        lambda: replace(
            config,
            **({"num_clients": args.clients} if args.clients is not None else {}),
            **({"rate_mbps": args.rate_mbps} if args.rate_mbps is not None else {}),
            **({"compare_uncapped": False} if args.no_uncapped else {}),
            **({"hyperparameters": {**config.hyperparameters, **job}} if job else {}),
            **({"work_dir": args.work_dir} if args.work_dir else {}),
        ),
    )
    return 0 if report is not None else 2


def _bench_coordinator(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from swarm.coordinator.bench import load as bench

    config = bench.QUICK if args.quick else bench.LoadBenchConfig()
    report = _run_bench(
        args,
        "coordinator",
        bench,
        lambda: replace(
            config,
            **({"workers": _ints(args.workers)} if args.workers else {}),
            **({"databases": tuple(args.db.split(","))} if args.db else {}),
            **({"duration_s": args.duration} if args.duration else {}),
            **({"postgres_admin_url": args.postgres_admin_url} if args.postgres_admin_url else {}),
            **({"work_dir": args.work_dir} if args.work_dir else {}),
        ),
    )
    return 0 if report is not None else 2


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "coordinator": _coordinator,
        "demo": _demo,
        "jobs": _jobs,
        "files": _files,
        "credits": _credits,
        "keys": _keys,
        "models": _models,
        "bench": _bench,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
