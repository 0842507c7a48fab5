"""The PostgreSQL backend every alias uses: Django's, plus three things the lessons toggle live.

- Pooling (Phase 3): with the topology's `pool` on, a connection comes from a psycopg pool per node
  and app worker (min_size 0, max_size `pool_max`); off, each request opens its own connection.
  The choice is made per connection, so a toggle never strands a pooled connection.
- Emulation: a query on a data node first waits out the injected round trip, holding one of the
  node's slots (api.routing.emulation).
- Visibility: per-node query counters (api.routing.stats) and the nodes a request used (X-DB-Node).
"""
from django.db.backends.postgresql import base

from api.routing import db, emulation, stats
from workbench import topology


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.node = db.node_name(self.alias)
        self.pooled: bool | None = None  # how the open connection was made; None when closed
        self.execute_wrappers.append(self._observe)

    @property
    def pool(self):
        if self.pooled is False or (self.pooled is None and not topology.current().topology.pool):
            return None
        pool = base.DatabaseWrapper.pool.fget(self)
        if pool is not None:
            size = topology.current().topology.pool_max
            if pool.max_size != size:
                pool.resize(min_size=0, max_size=size)
        return pool

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
            self.pooled = None

    def _observe(self, execute, sql, params, many, context):
        if self.alias not in db.DATA_ALIASES:
            result = execute(sql, params, many, context)
        else:
            with emulation.inject(self.node, topology.current().topology.emulation):
                result = execute(sql, params, many, context)
            db.note_query(self.alias)
        stats.count_query(self.node)
        return result
