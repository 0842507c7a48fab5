"""What a crash of the state Valkey loses under write-behind, for one `cache.state_fsync` mode.

The run, through the API like any client (docs/reliability.md, "Write-behind"):
1. sets `cache.mode` write-behind and the fsync mode, and waits until the controller runs it;
2. pauses the flusher: a key in the state Valkey (with a TTL, so a run that dies leaves no paused
   flusher behind) that the flusher checks before each read; the run waits until the flusher
   says it is paused. Every acknowledged write then stays in the queue, as in a backlog (a flusher
   slower than the writes, or a database that is down): the worst case for N queued writes;
3. signs up a user and sends N post creates through Caddy, keeping the ids acknowledged as
   `X-Write-Behind: queued` (and those that fell back to a synchronous write, if any);
4. SIGKILLs the state Valkey (its pid from the controller), by default after the last write,
   or `--kill-after-ms` after the first one is sent (the rest then meet a dead or restarting queue);
5. waits until the supervisor has restarted it and the controller has set the fsync mode again,
   lifts the pause, waits until the queue is drained,
6. counts the acknowledged posts that are in PostgreSQL (each shard primary, read directly).
The cache settings are put back as they were at the end.
"""
import json
import os
import signal
import threading
import time

import psycopg
import redis
import requests
from django.core.management.base import BaseCommand, CommandError

from api.caching import behind
from workbench import topology
from workbench.loadgen.client import TopologyClient
from workbench.stack import config, launcher

PAUSE_TTL_S = 600


def wait_for(predicate, what: str, timeout: float = 180.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (redis.RedisError, requests.RequestException, psycopg.Error):
            value = None  # restarting
        if value:
            return value
        time.sleep(interval)
    raise CommandError(f"timed out after {timeout:.0f}s waiting for {what}")


def state_valkey(cfg) -> dict:
    status = launcher.status(cfg) or {}
    return next((p for p in status.get("processes", []) if p["name"] == "valkey-state"), {})


def posts_in_db(cfg, ids: list[int]) -> set[int]:
    """Which of these posts every running shard primary holds, read directly (not through the cache)."""
    found: set[int] = set()
    shards = topology.current().topology.shard_groups
    for shard in range(1, shards + 1):
        with psycopg.connect(cfg.shard_url(shard), connect_timeout=5) as conn:
            rows = conn.execute("SELECT id FROM api_post WHERE id = ANY(%s)", (ids,)).fetchall()
        found.update(r[0] for r in rows)
    return found


def measure(cfg, writes: int, fsync: str, kill_after_ms: float | None, say=print) -> dict:
    admin = TopologyClient(cfg)
    cache_before = admin.data()["topology"]["cache"]
    state = redis.Redis.from_url(cfg.state_url, socket_timeout=2, socket_connect_timeout=2)
    api = cfg.api_url + "/api/v1"
    try:
        say(f"write-behind with state_fsync={fsync}; waiting for the controller to apply it")
        admin.apply({"cache": {"mode": "write-behind", "state_fsync": fsync}})
        time.sleep(topology.REFRESH_S + 0.5)  # every app worker checks the version at most once a second
        state.set(behind.PAUSED, "write_behind_loss", ex=PAUSE_TTL_S)
        wait_for(lambda: state.hget(behind.FLUSHER, "state") == b"paused", "the flusher to pause")
        name = f"wbloss_{os.getpid() % 10000}_{int(time.time() * 1000) % 10**8}"
        user = requests.post(f"{api}/users", json={"username": name, "email": f"{name}@example.org",
                                                   "password": "correct-horse"}, timeout=30).json()["data"]
        before_pid = state_valkey(cfg).get("pid")
        killer = None
        if kill_after_ms is not None:
            killer = threading.Timer(kill_after_ms / 1000, os.kill, (before_pid, signal.SIGKILL))
            killer.start()
        queued, fallback, failed = [], [], 0
        say(f"sending {writes} post creates through {cfg.api_url}")
        with requests.Session() as http:
            http.headers.update(cfg.operator_headers())  # writes need a token: the operator's
            for i in range(writes):
                try:
                    response = http.post(f"{api}/users/{user['id']}/posts", json={"title": f"loss {i}", "body": ""},
                                         timeout=30)
                except requests.RequestException:
                    failed += 1
                    continue
                if response.status_code != 201:
                    failed += 1
                elif response.headers.get("X-Write-Behind") == "queued":
                    queued.append(int(response.json()["data"]["id"]))
                else:
                    fallback.append(int(response.json()["data"]["id"]))
        if killer is None:
            os.kill(before_pid, signal.SIGKILL)
        else:
            killer.join()
        say(f"SIGKILLed the state Valkey (pid {before_pid}); waiting for its restart")
        wait_for(lambda: (p := state_valkey(cfg)).get("healthy") and p["pid"] != before_pid,
                 "the supervisor to restart the state Valkey")
        admin.settled()  # the controller has set the fsync mode again (a restart starts with the default)
        state.delete(behind.PAUSED)  # still there if persistence kept it
        wait_for(lambda: state.xlen(behind.STREAM) == 0 and state.hget(behind.FLUSHER, "state") == b"running",
                 "the flusher to drain the queue", timeout=600)
        acked = queued + fallback
        in_db = posts_in_db(cfg, acked)
        result = {"fsync": fsync, "writes": writes, "acknowledged": len(acked), "queued": len(queued),
                  "fallback": len(fallback), "failed": failed, "in_db": len(in_db),
                  "lost": len(acked) - len(in_db), "lost_queued": len(set(queued) - in_db),
                  "user_id": user["id"], "acknowledged_ids": acked,
                  "kill_after_ms": kill_after_ms, "behind": behind.status(state)}
    finally:
        try:
            state.delete(behind.PAUSED)
            admin.apply({"cache": cache_before})
        except Exception as exc:  # noqa: BLE001 - report the measurement's own error, not this one
            say(f"could not put the cache settings back: {exc}")
    return result


class Command(BaseCommand):
    help = "Measure what a SIGKILL of the state Valkey loses of the writes write-behind acknowledged."

    def add_arguments(self, parser):
        parser.add_argument("--writes", type=int, default=200, help="acknowledged writes to send (post creates)")
        parser.add_argument("--fsync", choices=("off", "everysec", "always"), required=True)
        parser.add_argument("--kill-after-ms", type=float, default=None,
                            help="SIGKILL this long after the first write is sent (default: after the last)")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    def handle(self, *args, **options):
        cfg = config.load()
        if not launcher.status(cfg):
            raise CommandError("the workbench is not running; start it with: python manage.py up")
        say = (lambda *_: None) if options["json"] else self.stdout.write
        result = measure(cfg, options["writes"], options["fsync"], options["kill_after_ms"], say)
        if options["json"]:
            self.stdout.write(json.dumps(result))
            return
        self.stdout.write(f"state_fsync={result['fsync']}: {result['acknowledged']} acknowledged "
                          f"({result['queued']} queued, {result['fallback']} sync-fallback), "
                          f"{result['in_db']} in PostgreSQL, {result['lost']} lost; "
                          f"{result['failed']} not acknowledged")
