"""The PostgreSQL backend every alias uses: Django's, plus three things the lessons toggle live.

- Pooling (Phase 3): with the topology's `pool` on, a connection comes from a psycopg pool per node
  and app worker (min_size 0, max_size `pool_max`); off, each request opens its own connection.
  With `pgbouncer` on, and the controller reporting it running and healthy, the primary's
  connections go to PgBouncer instead, a new one per request and never from the app's pool: the
  external pooler keeps the server connections. If PgBouncer refuses a connection (it may be
  restarting), that connection goes to the primary directly. Each choice is made per connection
  and kept until it closes, so a toggle never strands a pooled connection.
- Emulation: a query on a data node first waits out the injected round trip, holding one of the
  node's slots (api.routing.emulation).
- Fail fast: a connection to a node the controller reports down is refused at once (a 503).
- Visibility: per-node query counters (api.routing.stats) and the nodes a request used (X-DB-Node);
  per-node query latency (api.metrics) and a span per query of a sampled request (api.tracing).
"""
import logging
import time

from django.conf import settings
from django.db.backends.postgresql import base

from api import metrics, timing, tracing
from api.routing import db, emulation, nodes, stats
from workbench import topology

log = logging.getLogger(__name__)


def pgbouncer_ready() -> bool:
    """The topology wants PgBouncer and the controller's fresh report has it running and healthy."""
    if not topology.current().topology.pgbouncer:
        return False
    report = nodes.current()
    return (report.fresh() and bool(report.running.get("pgbouncer"))
            and bool(report.nodes.get("pgbouncer", {}).get("healthy")))


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.node = db.metric_name(self.alias)
        self.pooled: bool | None = None  # how the open connection was made; None when closed
        self.via_pgbouncer: bool | None = None  # likewise: whether it goes through PgBouncer
        self.execute_wrappers.append(self._observe)

    @property
    def pool(self):
        if (self.via_pgbouncer or self.pooled is False
                or (self.pooled is None and not topology.current().topology.pool)):
            return None
        pool = base.DatabaseWrapper.pool.fget(self)
        if pool is not None:
            size = topology.current().topology.pool_max
            if pool.max_size != size:
                pool.resize(min_size=0, max_size=size)
        return pool

    def connect(self):
        report = nodes.current()
        if report.fresh() and report.nodes.get(self.node, {}).get("healthy") is False:
            # The controller saw it down (a crash, `chaos stop`, a failover under way): fail at once
            # with a 503 rather than wait out the pool's timeout against a dead port.
            raise self.Database.OperationalError(f"{self.node} is down (the controller's node report)")
        if self.alias == db.META:  # data nodes are followed by the router (db.on_shard, db.choose)
            db.follow_restart(self.alias, report)
        self.via_pgbouncer = self.alias == db.PRIMARY and pgbouncer_ready()
        try:
            try:
                return super().connect()
            except self.Database.OperationalError as exc:
                if not self.via_pgbouncer:
                    raise
                log.warning("PgBouncer refused a connection; this one goes to the primary directly: %s", exc)
                self.via_pgbouncer = False
                return super().connect()
        except BaseException:
            self.via_pgbouncer = None
            raise

    def get_connection_params(self):
        params = super().get_connection_params()
        if self.via_pgbouncer:  # only while connect() opens a connection through it
            params["host"], params["port"] = "127.0.0.1", settings.STACK.pgbouncer_port
        return params

    def get_new_connection(self, conn_params):
        self.pooled = None
        self.pooled = self.pool is not None
        try:
            return super().get_new_connection(conn_params)
        except Exception:
            self.pooled = None
            raise

    def _close(self):
        try:
            return super()._close()
        finally:
            self.pooled = self.via_pgbouncer = None

    def _observe(self, execute, sql, params, many, context):
        started = time.perf_counter()
        with tracing.query(self.node, sql):  # a span only when the request is sampled (api/tracing.py)
            if self.alias not in db.DATA_ALIASES:
                with timing.timed("db"), emulation.chaos_delay(self.node):
                    result = execute(sql, params, many, context)
            else:
                with timing.timed("db"), emulation.inject(self.node, topology.current().topology.emulation):
                    result = execute(sql, params, many, context)
                db.note_query(self.alias)
        metrics.observe_db(self.node, time.perf_counter() - started)  # per-node latency, for /metrics
        stats.count_query(self.node)
        return result
