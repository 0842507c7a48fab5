"""The read model's relay (api/readmodel.py): turns each shard's outbox rows into profile documents.

One relay (the controller's `relay`) reads each shard's `rm_outbox` in id order, a batch at a
time: it rebuilds every user the batch names from PostgreSQL (one snapshot per batch), writes the
documents to the state Valkey, and only then deletes the rows. Killed anywhere in between, it
leaves the rows, and its successor rebuilds those users again: a rebuild from PostgreSQL is
idempotent, and a version guard keeps an older rebuild from overwriting a newer document.

When it sees `read_model` switched on (and at its start, if nothing marks a finished rebuild), it
waits until every app server writes the outbox, then rebuilds every document, since writes made
while the toggle was off left no rows. When it sees it off, it drops every document and discards
the outbox rows left over. With WORKBENCH_FAULTS=1, the state key readmodel.PAUSE_AT
(`before-document` or `after-document`) holds it at that point, so a test can SIGKILL it there.
"""
import logging
import time

import redis
from django.core.management.base import BaseCommand
from django.db import DatabaseError, close_old_connections

from api import counters, faults, readmodel
from api.gateway.errors import Unavailable
from api.state import state_client
from workbench import topology

log = logging.getLogger(__name__)

IDLE_S = 0.1       # between passes that found nothing
DISCARD_FOR_S = 3 * topology.REFRESH_S + 1  # after read_model goes off: rows a worker still on "on" wrote
RETRY_S = 1.0
BATCH = 500
REBUILD_BATCH = 100  # users per rebuild step; the outbox is relayed between steps, so this bounds staleness meanwhile


class Command(BaseCommand):
    help = "Relay the read model's outbox (every shard) into profile documents in the state Valkey."

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="run forever (the controller's `relay`)")

    def handle(self, *args, **options):
        self.handled = 0
        self.off_since = None  # when read_model was last seen switched off (monotonic)
        while True:
            try:
                done = self.one_pass()
            except (redis.RedisError, DatabaseError, Unavailable) as exc:  # a node restarting: try again
                log.warning("relay: %s: %s", type(exc).__name__, exc)
                if not options["loop"]:
                    raise
                close_old_connections()
                time.sleep(RETRY_S)
                continue
            if not options["loop"]:
                if not done:
                    self.stdout.write(f"relayed {self.handled} outbox rows")
                    return
                continue
            if not done:
                time.sleep(IDLE_S)

    def one_pass(self) -> int:
        client = state_client()
        on = topology.current().topology.read_model
        if on and not client.exists(readmodel.BUILT):
            self.initial_build(client)
        elif not on and client.exists(readmodel.BUILT):
            # The outbox is not written now, so the documents would go stale: drop them; the next
            # switch-on rebuilds everything.
            client.delete(readmodel.BUILT, readmodel.STALENESS)  # the next switch-on measures afresh
            log.info("relay: read_model off, dropped %s documents", readmodel.drop_all(client))
        readmodel.report_relay(client, "running" if on else "idle (read_model off)", handled=self.handled)
        if on:
            self.off_since = None
        else:
            self.off_since = self.off_since or time.monotonic()
            # Off: no app server writes the outbox once each has seen the change (a refresh or two);
            # discard what was written meanwhile, then stop polling: an idle relay sends no query.
            if time.monotonic() - self.off_since > DISCARD_FOR_S:
                return 0
        return self.relay(client, discard=not on)

    def relay(self, client, *, discard: bool = False) -> int:
        """One batch of every shard's outbox."""
        done = 0
        for shard in readmodel.shards_in_use():
            done += readmodel.relay_shard(shard, batch=BATCH, client=client, pause=lambda p: self.pause(client, p),
                                          discard=discard)
        self.handled += done
        counters.flush_all(force=True)
        return done

    def initial_build(self, client) -> None:
        """Every app server writes the outbox within a topology refresh; then rebuild everything."""
        readmodel.report_relay(client, "waiting for every app server to write the outbox")
        time.sleep(2 * topology.REFRESH_S + 0.2)
        readmodel.report_relay(client, "rebuilding every document")
        started = time.monotonic()
        # The outbox is relayed between the rebuild's batches: a document rebuilt (or filled by a
        # read) early in a long rebuild must not stay stale until the rebuild ends. Both write
        # version-guarded, so they may interleave.
        count = readmodel.rebuild_all(batch=REBUILD_BATCH, client=client, progress=lambda shard, done: self.relay(client))
        client.set(readmodel.BUILT, f"{time.time():.3f}")
        log.info("relay: rebuilt %s documents in %.1f s", count, time.monotonic() - started)

    def pause(self, client, point: str) -> None:
        if not faults.ENABLED:
            return
        while (client.get(readmodel.PAUSE_AT) or b"").decode() == point:
            readmodel.report_relay(client, f"paused at {point}", handled=self.handled)
            time.sleep(0.1)
