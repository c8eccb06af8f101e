"""`orchestrator` command line: worker, submit, watch, status, cancel, health, certs, vars, schemas."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from orchestrator import client
from orchestrator import constants as k
from orchestrator.config import Settings

EXIT_FAILED = 1
EXIT_CANCELLED = 2
EXIT_UNKNOWN = 3


def _redis(settings: Settings) -> Redis:
    return Redis.from_url(settings.redis_url, socket_connect_timeout=5)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.logs import setup_logging  # noqa: PLC0415 - only the worker needs logging set up
    from orchestrator.worker import Worker  # noqa: PLC0415 - keeps the other commands light

    if args.concurrency:
        settings = settings.model_copy(update={"concurrency": args.concurrency})
    worker = Worker(settings, burst=args.burst)
    settings.scrub_secret_env()
    setup_logging(settings.log_level, worker.redactor)
    return asyncio.run(worker.run())


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as exc:
        print(f"--payload is not JSON: {exc}", file=sys.stderr)
        return 2
    task_id = client.submit(
        _redis(settings),
        args.type,
        payload,
        user_id=args.user,
        resource_id=args.resource,
        priority=args.priority,
        task_id=args.id,
    )
    print(json.dumps({"task_id": task_id}) if args.json else task_id)
    return 0


def _exit_code(final_status: str | None) -> int:
    return {"completed": 0, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}.get(final_status or "", EXIT_UNKNOWN)


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    redis = _redis(settings)
    if not redis.exists(k.task_key(args.task_id)):
        print(f"unknown task {args.task_id}", file=sys.stderr)
        return EXIT_UNKNOWN
    final: dict[str, Any] | None = None
    if args.json:
        for message in client.events(redis, args.task_id, follow=True):
            print(json.dumps(message), flush=True)
            final = message
        return _exit_code(final.get("status") if final else None)

    from rich.console import Console  # noqa: PLC0415
    from rich.markup import escape  # noqa: PLC0415
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    console = Console(stderr=False)
    with Progress(
        TextColumn("[bold]{task.fields[state]:>9}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
    ) as bar:
        row = bar.add_task("waiting", total=100, state="queued")
        for message in client.events(redis, args.task_id, follow=True):
            kind = message.get("type")
            if kind == k.MSG_STARTED:
                bar.update(row, state="running", description=f"started (attempt {message.get('attempt')})")
            elif kind == k.MSG_PROGRESS and isinstance(message.get("agent"), dict):
                # An agent run's stream: each line stays on screen above the bar, as a log would show it.
                bar.console.print(f"[dim]agent[/dim] {escape(str(message.get('message')))}", highlight=False)
                bar.update(row, description=f"agent: {message['agent'].get('type', '?')}")
            elif kind == k.MSG_PROGRESS:
                bar.update(
                    row,
                    completed=message.get("percentage", 0),
                    description=f"[{message.get('step')}/{message.get('total_steps')}] {message.get('message')}",
                )
            elif kind in k.FINAL_MESSAGES.values():
                final = message
                done = 100 if message.get("status") == "completed" else None
                bar.update(
                    row,
                    state=str(message.get("status")),
                    completed=done,
                    description=str(message.get("error") or "done"),
                )
    if final is not None and final.get("metadata"):
        console.print_json(json.dumps(final["metadata"]))
    return _exit_code(final.get("status") if final else None)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    record = client.status(_redis(settings), args.task_id)
    if not record:
        print(f"unknown task {args.task_id}", file=sys.stderr)
        return EXIT_UNKNOWN
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))
    else:
        width = max(len(key) for key in record)
        for key in sorted(record):
            print(f"{key:<{width}}  {record[key]}")
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    ok = client.cancel(_redis(settings), args.task_id)
    if args.json:
        print(json.dumps({"task_id": args.task_id, "cancel_requested": ok}))
    elif ok:
        print(f"cancel requested for {args.task_id}")
    else:
        print(f"task {args.task_id} is unknown or already finished", file=sys.stderr)
    return 0 if ok else EXIT_UNKNOWN


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    report: dict[str, Any] = {"redis": False, "workers": [], "queues": {}}
    try:
        redis = _redis(settings)
        started = time.perf_counter()
        redis.ping()
        report["redis"] = True
        report["redis_ping_ms"] = round((time.perf_counter() - started) * 1000, 3)
        report["workers"] = client.workers(redis)
        report["queues"] = {name: redis.llen(name) for name in k.QUEUES}
    except RedisError as exc:
        report["error"] = f"redis unreachable: {exc}"
    alive = [w for w in report["workers"] if w["heartbeat_age"] is not None]
    healthy = report["redis"] and (bool(alive) or not args.require_worker)
    report["healthy"] = healthy
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"redis: {'ok' if report['redis'] else report.get('error')}")
        for name, depth in report["queues"].items():
            print(f"queue {name}: {depth}")
        for w in report["workers"]:
            age = "lease expired" if w["heartbeat_age"] is None else f"heartbeat {w['heartbeat_age']}s ago"
            print(f"worker {w['id']}: {age}, holding {w['held']}")
        print("healthy" if healthy else "UNHEALTHY")
    return 0 if healthy else 1


def cmd_certs(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.certs import list_certificates  # noqa: PLC0415

    certificates = list_certificates(settings.certificate_dir)
    last: dict[str, str] = {}
    try:
        raw = _redis(settings).hgetall(k.CERT_RENEW_LAST)
        last = {key.decode(): value.decode() for key, value in raw.items()}  # type: ignore[union-attr]
    except RedisError:
        pass
    if args.json:
        print(json.dumps({"certificates": [c.as_dict() for c in certificates], "last_renewal": last}, indent=2))
    else:
        print(f"certificates in {settings.certificate_dir}: {len(certificates)}")
        for c in certificates:
            left = "?" if c.days_left is None else f"{c.days_left}d"
            flag = f"  RENEW: {c.problem or 'due'}" if c.renewal_due else ""
            print(f"{c.domain:<48} {left:>6}  until {c.not_after or '-':<20} {c.issuer or '-'}{flag}")
        if last:
            print(
                f"last renewal run {last.get('at', '?')}: {last.get('status', '?')},"
                f" renewed {last.get('renewed', '[]')}, failed {last.get('failed', '[]')}"
            )
    due = [c for c in certificates if c.problem]
    return 1 if due and args.strict else 0


def cmd_vars(args: argparse.Namespace, settings: Settings) -> int:
    """The extra vars a worker gives every run, for running a playbook by hand with `-e @FILE`. They hold the
    orchestrator's credentials: the file is created 0600 and never printed unless asked with --out -."""
    from orchestrator.runner import unsafe_vars_yaml  # noqa: PLC0415 - keeps the other commands light

    values = settings.service_vars()
    text = unsafe_vars_yaml(values)
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    names = sorted(values)
    print(json.dumps({"out": str(out), "vars": names}) if args.json else f"wrote {len(names)} vars to {out} (0600)")
    return 0


def cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.models import json_schemas  # noqa: PLC0415

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / f"{name}.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(json_schemas())} schemas to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="consume the provisioning queues")
    p.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    p.add_argument("--concurrency", type=int, default=0, help="override ORCHESTRATOR_CONCURRENCY")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("submit", help="push a task exactly as the Portal does; prints its id")
    p.add_argument("type", choices=[t.value for t in k.TaskType])
    p.add_argument("--payload", required=True, help="the type's payload, as JSON")
    p.add_argument(
        "--priority",
        choices=["high", "normal"],
        default=None,
        help="queue to use (default: the type's priority from the seed)",
    )
    p.add_argument("--user", default="cli", help="user_id: progress goes to tasks:{user_id}")
    p.add_argument("--resource", default=None, help="resource_id (default: a new uuid)")
    p.add_argument("--id", default=None, help="task id (default: a new uuid)")
    p.set_defaults(func=cmd_submit)

    for name, func, help_text in (
        ("watch", cmd_watch, "live progress until the final status (exit 0 completed, 1 failed, 2 cancelled)"),
        ("status", cmd_status, "the task's hash"),
        ("cancel", cmd_cancel, "cancel a queued or running task"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("task_id")
        p.set_defaults(func=func)

    p = sub.add_parser("health", help="Redis reachability, workers and their heartbeats, queue depths")
    p.add_argument("--require-worker", action="store_true", help="unhealthy unless a worker is alive")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("certs", help="every certificate on disk with its days left, and the last renewal run")
    p.add_argument("--strict", action="store_true", help="exit 1 when a certificate is expired, missing or wrong")
    p.set_defaults(func=cmd_certs)

    p = sub.add_parser("vars", help="write the extra vars every run gets (0600), for ansible-playbook -e @FILE")
    p.add_argument("--out", required=True, help="file to write (created 0600), or - for stdout")
    p.set_defaults(func=cmd_vars)

    p = sub.add_parser("schemas", help="write the JSON Schema of every task type")
    p.add_argument("--out", default="schemas")
    p.set_defaults(func=cmd_schemas)

    for p in sub.choices.values():
        p.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    try:
        return int(args.func(args, settings))
    except RedisError as exc:
        print(f"redis error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
