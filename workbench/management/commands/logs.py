"""`manage.py logs --request-id X`: one request's path across Caddy and the app servers, in time order.

It reads the log files under the data dir's logs/: Caddy's JSON access log (caddy-access.log, and
the files Caddy rolled from it) and each app server's request log (app-k.requests.jsonl and the
.1 it rotated to, api/logs.py).
Caddy's line carries the id as `request_id` (set by its log_append handler, workbench/stack/caddy.py)
and in the response's X-Request-Id; the app server's line as `request_id`. Each hop is shown at
the time it began (its line's `ts`, written when it finished, less its latency).
"""
from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from workbench.stack import config

# As the app accepts them (api/gateway/middleware.py REQUEST_ID).
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
APP_FIELDS = ("route", "cache", "db_node", "topology_version", "client", "pid")
CADDY_HEADERS = {"X-App-Server": "app_server", "X-Cache": "cache", "X-Db-Node": "db_node"}


def log_files(log_dir: Path) -> list[Path]:
    """Caddy's access log with the files it rolled, each app server's request log with its `.1`."""
    return (sorted(log_dir.glob("caddy-access*.log")) + sorted(log_dir.glob("*.requests.jsonl"))
            + sorted(log_dir.glob("*.requests.jsonl.1")))


def _caddy_hop(line: dict, rid: str) -> dict | None:
    request = line.get("request") or {}
    response_headers = line.get("resp_headers") or {}
    ids = {line.get("request_id"), *(response_headers.get("X-Request-Id") or [])}
    if rid not in ids:
        return None
    latency_ms = float(line.get("duration") or 0) * 1000
    hop = {"start": float(line["ts"]) - latency_ms / 1000, "where": "caddy", "status": line.get("status"),
           "latency_ms": round(latency_ms, 2), "method": request.get("method"), "uri": request.get("uri"),
           "client": request.get("client_ip") or request.get("remote_ip")}
    for header, key in CADDY_HEADERS.items():
        values = response_headers.get(header)
        if values:
            hop[key] = values[0]
    return hop


def _app_hop(line: dict, rid: str) -> dict | None:
    if line.get("request_id") != rid:
        return None
    latency_ms = float(line.get("latency_ms") or 0)
    return {"start": float(line["ts"]) - latency_ms / 1000, "where": line.get("app_server", "app"),
            "status": line.get("status"), "latency_ms": latency_ms, "method": line.get("method"),
            **{key: line[key] for key in APP_FIELDS if line.get(key) is not None}}


def find(rid: str, log_dir: Path) -> list[dict]:
    """Every hop of request `rid`, in the order the hops began."""
    hops = []
    for path in log_files(log_dir):
        caddy = path.name.startswith("caddy-access")
        with open(path, encoding="utf-8", errors="replace") as lines:
            for text in lines:
                if rid not in text:  # cheap filter before parsing
                    continue
                try:
                    line = json.loads(text)
                except ValueError:
                    continue
                hop = _caddy_hop(line, rid) if caddy else _app_hop(line, rid)
                if hop:
                    hops.append(hop)
    return sorted(hops, key=lambda hop: hop["start"])


def _clock(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


class Command(BaseCommand):
    help = ("Show one request's path across Caddy and the app servers, from their JSON logs: one line per "
            "hop with its start time, where, status, latency and the rest of what it logged.")
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--request-id", required=True, help="the X-Request-Id of a response")
        parser.add_argument("--json", action="store_true", help="one JSON object per hop")

    def handle(self, *args, **options):
        rid = options["request_id"]
        if not REQUEST_ID.match(rid):
            raise CommandError(f"--request-id: {rid!r} is not a request id (1 to 128 of A-Z a-z 0-9 . _ : -)",
                               returncode=2)
        log_dir = config.load().log_dir
        hops = find(rid, log_dir)
        if not hops:
            raise CommandError(f"request id {rid}: not found in the logs under {log_dir}")
        for hop in hops:
            if options["json"]:
                self.stdout.write(json.dumps(hop))
                continue
            rest = " ".join(f"{key}={value}" for key, value in hop.items()
                            if key not in ("start", "where", "status", "latency_ms", "method"))
            self.stdout.write(f"{_clock(hop['start'])}  {hop['where']:<8}{hop.get('method') or '-':<7}"
                              f"{hop['status']!s:>4}  {hop['latency_ms']:>9.2f} ms  {rest}")
