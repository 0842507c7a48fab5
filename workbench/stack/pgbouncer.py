"""PgBouncer, the optional external pooler in front of the data primary (topology `pgbouncer`).

The controller writes its configuration under the data dir and runs it as one more supervised
process, as the same unprivileged user as PostgreSQL (PgBouncer refuses root too). With it on,
the app servers open a new client connection per request to PgBouncer instead of using their own
psycopg pools (api/routing/backend/base.py), and PgBouncer keeps the server connections: the
classic external-pooler model. Its admin console (database `pgbouncer`) gives the pool counts the
controller reports beside the data nodes.
"""
from __future__ import annotations

import signal

import psycopg
from psycopg.conninfo import conninfo_to_dict

from . import binaries, postgres
from .config import StackConfig
from .process import ProcessSpec

NAME = "pgbouncer"
DEFAULT_POOL_SIZE = 20  # server connections to the primary; the app servers run 2 x 2 x 4 = 16 threads by default
MAX_CLIENT_CONN = 1000


def config_dir(cfg: StackConfig):
    return cfg.data_dir / "pgbouncer"


def database(cfg: StackConfig) -> str:
    """The one database PgBouncer serves: the data primary's, under its own name, so the app
    connects to it by the same name whichever way it goes."""
    return conninfo_to_dict(cfg.data_database_url).get("dbname") or postgres.DB_USER


def user(cfg: StackConfig) -> str:
    """The database user the app connects as, and PgBouncer's admin."""
    return conninfo_to_dict(cfg.data_database_url).get("user") or postgres.DB_USER


def write_config(cfg: StackConfig):
    """pgbouncer.ini and its userlist under the data dir; returns the ini's path."""
    directory = config_dir(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    if postgres.run_as():
        postgres.ensure_reachable(directory)  # PgBouncer, as that user, reads these files
    target = conninfo_to_dict(cfg.data_database_url)
    server = " ".join(f"{key}={target[key]}" for key in ("host", "port", "dbname", "user", "password")
                      if target.get(key))
    userlist = directory / "userlist.txt"
    # auth_type trust still wants the user listed; no password is checked.
    userlist.write_text(f'"{user(cfg)}" ""\n')
    ini = directory / "pgbouncer.ini"
    ini.write_text(f"""\
; Written by the workbench controller (workbench/stack/pgbouncer.py) each time it starts PgBouncer.
[databases]
{database(cfg)} = {server}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {cfg.pgbouncer_port}
; TCP only, like the PostgreSQL nodes.
unix_socket_dir =
auth_type = trust
auth_file = {userlist}
; The admin console (database `pgbouncer`): SHOW POOLS for the controller's report.
admin_users = {user(cfg)}
; Session, not transaction pooling: the seed holds session advisory locks on the primary (while it
; rebuilds indexes, and the controller's index toggle waits on them), which transaction pooling
; would hand to whichever client comes next; and Django's psycopg path (session time zone, server
; cursors, prepared statements) is not audited for transaction pooling. In session mode a client
; holds one server connection while it is connected: with a connection per request, per request.
pool_mode = session
server_reset_query = DISCARD ALL
default_pool_size = {DEFAULT_POOL_SIZE}
max_client_conn = {MAX_CLIENT_CONN}
; A connection per request would write two log lines per request.
log_connections = 0
log_disconnections = 0
; No logfile: PgBouncer runs in the foreground and logs to stderr, which the controller writes to
; logs/pgbouncer.log as for every process it runs (no file the unprivileged user must own).
""")
    return ini


def spec(cfg: StackConfig) -> ProcessSpec:
    ini = write_config(cfg)
    return ProcessSpec(
        name=NAME, role="pgbouncer", port=cfg.pgbouncer_port, log_file=cfg.log_dir / "pgbouncer.log",
        argv=[str(binaries.pgbouncer_bin()), str(ini)],
        user=postgres.run_as(),
        health=lambda: postgres.ping(url(cfg)),  # a connection through it to the primary: SELECT 1
        # SIGINT is PgBouncer's safe shutdown: it waits for clients to finish (at most stop_timeout).
        stop_signal=signal.SIGINT,
        stop_timeout=10.0,
    )


def url(cfg: StackConfig, dbname: str | None = None) -> str:
    return f"postgres://{user(cfg)}@127.0.0.1:{cfg.pgbouncer_port}/{dbname or database(cfg)}"


def pools(cfg: StackConfig) -> dict:
    """Counts from the admin console's SHOW POOLS for the primary's pool: clients active and
    waiting, server connections active and idle."""
    # The admin console speaks only the simple query protocol: a client-side-binding cursor.
    with psycopg.connect(url(cfg, "pgbouncer"), connect_timeout=1, autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as conn:
        cursor = conn.execute("SHOW POOLS")
        columns = [c.name for c in cursor.description]
        rows = [dict(zip(columns, row)) for row in cursor.fetchall()]
    out = {"clients_active": 0, "clients_waiting": 0, "servers_active": 0, "servers_idle": 0}
    for row in rows:
        if row["database"] != database(cfg):
            continue
        out["clients_active"] += int(row["cl_active"])
        out["clients_waiting"] += int(row["cl_waiting"])
        out["servers_active"] += int(row["sv_active"])
        out["servers_idle"] += int(row["sv_idle"])
    return out
