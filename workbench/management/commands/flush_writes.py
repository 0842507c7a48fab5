"""The write-behind flusher (api/caching/behind.py): applies the queued writes to PostgreSQL.

One consumer (`flusher`) of one consumer group reads the stream in order, so the writes of each
user are applied in the order they were acknowledged. An entry is acknowledged (XACK) and deleted
(XDEL) only after its transaction has committed; a flusher killed in between reads its own pending
entries again when it starts (XREADGROUP from id 0) and applies them again, which changes nothing
(services.flush_write is idempotent). A database that fails leaves the entry pending and is tried
again: the flusher never skips ahead of a write it could not apply.
"""
import json
import logging
import os
import time

import redis
from django.core.management.base import BaseCommand
from django.db import DatabaseError, close_old_connections

from api import counters, services
from api.caching import behind
from api.caching import writes as cache
from api.gateway.errors import Unavailable
from api.state import state_client

log = logging.getLogger(__name__)

CONSUMER = "flusher"
BATCH = 100
BLOCK_MS = 500
RETRY_S = 1.0


class Command(BaseCommand):
    help = "Apply the writes that write-behind queued in the state Valkey to PostgreSQL."

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="run forever (the controller's `flusher`)")

    def handle(self, *args, **options):
        while True:
            try:
                applied = self.drain(block=options["loop"])
            except (redis.RedisError, DatabaseError, Unavailable) as exc:  # restarting: try again shortly
                log.warning("flusher: %s: %s", type(exc).__name__, exc)
                if not options["loop"]:
                    raise
                close_old_connections()
                time.sleep(RETRY_S)
                continue
            if not options["loop"] and not applied:
                return

    def drain(self, *, block: bool) -> int:
        """One pass: this consumer's pending entries first, then new ones. Returns how many it handled."""
        client = state_client()
        if client.exists(behind.PAUSED):
            self.report(client, "paused")
            time.sleep(0.2)
            return 0
        self.report(client, "running")
        self.ensure_group(client)
        entries = self.read(client, "0")  # read before but not acknowledged: a restart, or a failed pass
        if not entries:
            entries = self.read(client, ">", block_ms=BLOCK_MS if block else None)
        for entry_id, fields in entries:
            self.apply(client, entry_id.decode(), fields)
        # Every counter set this process counted in: write-behind's, and the caches' invalidations.
        counters.flush_all(force=True)
        return len(entries)

    @staticmethod
    def ensure_group(client) -> None:
        """From id 0: a state Valkey that came back without the group (persistence off) hands every
        entry still in the stream to the flusher again."""
        try:
            client.xgroup_create(behind.STREAM, behind.GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @staticmethod
    def read(client, start: str, block_ms: int | None = None) -> list:
        answer = client.xreadgroup(behind.GROUP, CONSUMER, {behind.STREAM: start}, count=BATCH, block=block_ms)
        return answer[0][1] if answer else []

    def apply(self, client, entry_id: str, fields: dict) -> None:
        if not fields:  # deleted after it was read (XDEL): nothing left to apply
            client.xack(behind.STREAM, behind.GROUP, entry_id)
            return
        write = {}
        try:
            write = json.loads(fields[b"w"])
            reason = services.flush_write(write)
        except (DatabaseError, Unavailable, redis.RedisError):
            raise  # left pending, tried again: never skipped
        except Exception as exc:  # noqa: BLE001 - a write that cannot be applied is recorded, not dropped
            log.exception("flusher: entry %s failed", entry_id)
            reason = f"{type(exc).__name__}: {exc}"
        if reason is not None:
            behind.reject(entry_id, write, reason)
        pipe = client.pipeline(transaction=True)
        pipe.xack(behind.STREAM, behind.GROUP, entry_id)
        pipe.xdel(behind.STREAM, entry_id)
        pipe.execute()
        if reason is None:
            behind.COUNTERS.count("flushed")
        self.after(client, write, entry_id, rejected=reason is not None)

    @staticmethod
    def after(client, write: dict, entry_id: str, *, rejected: bool) -> None:
        """The cache after a flush: posts pages move on again (the post is in the database now);
        the user's entry is dropped once the database holds its last queued profile update (and
        only then: an entry that holds a newer queued update must stay)."""
        if not write:
            return
        user_id, post_id = int(write["user_id"]), write.get("post_id")
        if write["kind"] == "user":
            last = behind.forget(behind.user_record(user_id), entry_id)
            cache.invalidate(user_id, user_entry=last or rejected, posts=rejected)
            return
        if post_id is not None:
            behind.forget(behind.post_record(int(post_id)), entry_id)
        profile_queued = bool(client.exists(behind.user_record(user_id)))
        cache.invalidate(user_id, user_entry=rejected or (write["kind"] == "post_create" and not profile_queued),
                         posts=True)

    @staticmethod
    def report(client, state: str) -> None:
        client.hset(behind.FLUSHER, mapping={"state": state, "pid": os.getpid(), "at": round(time.time(), 3)})
        client.expire(behind.FLUSHER, 10)
