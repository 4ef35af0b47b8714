"""`hidream jobs`: what the queue is doing, from the terminal.

    hidream jobs [list] [--limit N]          recent requests of every dialect, newest first
    hidream jobs show REQUEST_ID             state, timings, outputs, webhook attempts, last logs
    hidream jobs cancel REQUEST_ID
    hidream jobs replay-webhook REQUEST_ID   send its webhook once more (same webhook-id)

Each takes --json for scripts, and --server / --key like `hidream run`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from hidream_service.client import DEFAULT_SERVER, ServiceClient, ServiceError
from hidream_service.commands.common import UsageError, add_connection_options

SHOWN_LOG_LINES = 10


def _local_time(iso: str | None) -> str:
    if not iso:
        return "—"
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _webhook(summary: dict[str, Any]) -> str:
    webhook = summary.get("webhook")
    if not webhook:
        return "—"
    attempts = webhook["attempts"]
    return f"{webhook['state']} ({attempts} attempt{'' if attempts == 1 else 's'})"


def _status(summary: dict[str, Any]) -> str:
    outcome = str(summary["outcome"])
    if outcome == "queued" and summary.get("queue_position"):
        return f"queued ({summary['queue_position']} ahead)"
    return outcome


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def list_jobs(client: ServiceClient, args: argparse.Namespace) -> int:
    page = client.requests(args.limit)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    if not page["requests"]:
        print("no requests yet")
        return 0
    rows = [["REQUEST", "SUBMITTED", "ENDPOINT", "VIA", "STATUS", "DURATION", "WEBHOOK"]]
    for summary in page["requests"]:
        rows.append(
            [
                summary["request_id"],
                _local_time(summary["created_at"]),
                summary["endpoint"],
                summary["dialect"],
                _status(summary),
                _seconds(summary["total_seconds"]),
                _webhook(summary),
            ]
        )
    print(table(rows))
    if page["next"]:
        print(f"(newest {len(page['requests'])} shown; --limit shows more)")
    return 0


def _attempt_line(attempt: dict[str, Any]) -> str:
    answer = f"HTTP {attempt['status_code']}" if attempt["status_code"] is not None else "no answer"
    line = f"    {attempt['attempt']:>2}  {_local_time(attempt['at'])}  {answer:<10} {attempt['latency_ms']:>7.0f} ms"
    if attempt["error"] and attempt["status_code"] is None:
        line += f"  {attempt['error']}"
    return line + ("  (replay)" if attempt["replay"] else "")


def show_job(client: ServiceClient, args: argparse.Namespace) -> int:
    summary = client.request(args.request_id)
    deliveries = client.deliveries(args.request_id)
    if args.json:
        print(json.dumps({**summary, "deliveries": deliveries}, indent=2))
        return 0
    status = _status(summary)
    if summary["error"]:
        status += f": {summary['error_type']}: {summary['error']}"
    lines = [
        f"request    {summary['request_id']}",
        f"endpoint   {summary['endpoint']} (via {summary['dialect']})",
        f"status     {status}",
        f"submitted  {_local_time(summary['created_at'])}; waited {_seconds(summary['queue_seconds'])},"
        f" total {_seconds(summary['total_seconds'])}, inference {_seconds(summary['inference_seconds'])}",
    ]
    result = summary.get("result") or {}
    for image in result.get("images", []):
        url = image["url"] if not image["url"].startswith("data:") else "(data URI)"
        lines.append(f"image      {url} ({image['width']}x{image['height']})")
    if "seed" in result:
        lines.append(f"seed       {result['seed']}")
    for delivery in deliveries:
        state = delivery["state"]
        if state == "pending" and delivery["attempts"]:
            state = f"retrying (next attempt {_local_time(delivery['next_attempt_at'])})"
        lines.append(f"webhook    {state} → {delivery['url']}  (id {delivery['id']})")
        lines.extend(_attempt_line(attempt) for attempt in delivery["attempts"])
        if delivery["state"] == "failed":
            lines.append(f"           send it again: hidream jobs replay-webhook {summary['request_id']}")
    logs = summary.get("logs") or []
    if logs:
        lines.append(f"logs       (last {min(len(logs), SHOWN_LOG_LINES)} of {len(logs)})")
        lines.extend(f"    {line['message']}" for line in logs[-SHOWN_LOG_LINES:])
    print("\n".join(lines))
    return 0


def cancel_job(client: ServiceClient, args: argparse.Namespace) -> int:
    summary = client.request(args.request_id)
    if summary["status"] in ("COMPLETED", "CANCELLED"):
        print(f"error: {args.request_id} already ended ({summary['outcome']}); nothing to cancel", file=sys.stderr)
        return 1
    client.cancel(summary["cancel_url"])
    stops = "will not run" if summary["status"] == "IN_QUEUE" else "stops at its next step"
    print(f"cancelled {args.request_id}: it {stops}")
    return 0


def replay_webhook(client: ServiceClient, args: argparse.Namespace) -> int:
    delivery_id = args.delivery
    if delivery_id is None:
        webhook = client.request(args.request_id).get("webhook")
        if webhook is None:
            print(f"error: {args.request_id} asked for no webhook", file=sys.stderr)
            return 1
        delivery_id = webhook["delivery_id"]
    answer = client.replay(delivery_id)
    last = answer["attempt"]
    outcome = f"HTTP {last['status_code']}" if last["status_code"] is not None else str(last["error"])
    if args.json:
        print(json.dumps(answer, indent=2))
    if answer["delivered"]:
        print(f"delivered {delivery_id} to {answer['delivery']['url']} ({outcome}, {last['latency_ms']:.0f} ms)")
        return 0
    print(f"error: {answer['delivery']['url']} did not take it: {outcome}", file=sys.stderr)
    return 1


def jobs(args: argparse.Namespace) -> int:
    if args.limit is not None and not 1 <= args.limit <= 100:
        raise UsageError("--limit must be between 1 and 100")
    with ServiceClient(args.server, args.key) as client:
        try:
            action = args.action or list_jobs
            code: int = action(client, args)
        except ServiceError as exc:
            request_id = getattr(args, "request_id", None)
            if exc.status == 404 and request_id is not None:
                raise ServiceError(404, f"no request {request_id} on {args.server} for this key") from None
            raise
        return code


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("jobs", help="list, show, cancel requests; replay their webhooks")
    actions = parser.add_subparsers(dest="jobs_command")
    parser.set_defaults(handler=jobs, action=None, limit=20, json=False)
    add_connection_options(parser, server_default=DEFAULT_SERVER)

    def action(name: str, handler: Any, help_text: str, *, takes_id: bool = True) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text)
        if takes_id:
            sub.add_argument("request_id")
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
        add_connection_options(sub, server_default=DEFAULT_SERVER, nested=True)
        sub.set_defaults(action=handler)
        return sub

    listing = action("list", list_jobs, "recent requests, newest first", takes_id=False)
    listing.add_argument("--limit", type=int, default=argparse.SUPPRESS, help="how many (1-100, default 20)")
    action("show", show_job, "one request: state, timings, outputs, webhook attempts, logs")
    action("cancel", cancel_job, "cancel a queued or running request")
    replay = action("replay-webhook", replay_webhook, "send a request's webhook once more now")
    replay.add_argument("--delivery", help="a delivery id from `jobs show` (default: the request's final webhook)")
