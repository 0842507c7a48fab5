"""Where everything runs: the data directory and every port, derived from one base.

This module is imported by Django settings, the controller and the tests, so it stays free of
heavy imports. Each value comes from the environment, so a test stack can run beside a
developer's stack with its own data directory and port base.
"""
from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]

# Valkey Cluster uses port+10000 for its bus, so every engine port must stay at or below this.
MAX_SERVICE_PORT = 55535
# App-server slots app-1 .. app-8: Caddy lists all of them, and health checks decide which serve.
MAX_APP_SERVERS = 8


@dataclass(frozen=True)
class StackConfig:
    data_dir: Path
    port_base: int
    service_port_base: int
    app_servers: int = 2
    app_workers: int = 2
    app_threads: int = 4
    seed_users: int = 10_000
    seed_posts_per_user: int = 10
    reconcile_interval_s: int = 10
    # External services: when set, `up` does not start the matching engine.
    database_url: str | None = None
    meta_database_url: str | None = None
    valkey_url: str | None = None
    valkey_state_url: str | None = None
    extra_env: dict = field(default_factory=dict)

    # Ports of the front tier, laid out as in DESIGN.md.
    @property
    def caddy_port(self) -> int:
        return self.port_base

    @property
    def https_port(self) -> int:
        """Caddy's TLS listener (same routes as caddy_port), with a certificate from Caddy's own CA."""
        return self.port_base + 443

    @property
    def caddy_admin_port(self) -> int:
        return self.port_base + 98

    @property
    def controller_port(self) -> int:
        return self.port_base + 99

    def app_port(self, index: int) -> int:
        """Port of app server `index` (1-based, as in its name app-1)."""
        return self.port_base + 100 + index

    @property
    def dashboard_port(self) -> int:
        return self.port_base + 501

    # Engine ports, kept below MAX_SERVICE_PORT.
    @property
    def meta_pg_port(self) -> int:
        return self.service_port_base

    @property
    def data_pg_port(self) -> int:
        return self.service_port_base + 1

    def replica_port(self, index: int) -> int:
        """Port of read replica `index` (1-based, replica-1 ... replica-4) of the data primary."""
        return self.service_port_base + 1 + index

    def shard_pg_port(self, shard: int) -> int:
        """Primary of shard `shard` (1-based). Shard 1 is the data primary; shard k >= 2 sits at
        service base + 10k, with its replicas just above it (+1 .. +4)."""
        return self.data_pg_port if shard == 1 else self.service_port_base + 10 * shard

    def shard_replica_port(self, shard: int, index: int) -> int:
        return self.replica_port(index) if shard == 1 else self.shard_pg_port(shard) + index

    def shard_url(self, shard: int) -> str:
        if shard == 1:
            return self.data_database_url
        return f"postgres://workbench@127.0.0.1:{self.shard_pg_port(shard)}/workbench"

    def shard_replica_url(self, shard: int, index: int) -> str:
        return f"postgres://workbench@127.0.0.1:{self.shard_replica_port(shard, index)}/workbench"

    @property
    def pgbouncer_port(self) -> int:
        """PgBouncer in front of the data primary, when the topology asks for it."""
        return self.service_port_base + 6

    def replica_url(self, index: int) -> str:
        return f"postgres://workbench@127.0.0.1:{self.replica_port(index)}/workbench"

    @property
    def valkey_state_port(self) -> int:
        return self.service_port_base + 100

    @property
    def valkey_cache_port(self) -> int:
        return self.service_port_base + 101

    def cache_node_port(self, index: int) -> int:
        """Node `index` (1-based, 1..6) of the cache Valkey Cluster (topology `cache_nodes` 3 or 6):
        service base + 110 + index; its cluster bus listens on that plus 10000."""
        return self.service_port_base + 110 + index

    # URLs every client uses.
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.caddy_port}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def controller_url(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def direct_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.app_port(index)}"

    @property
    def data_database_url(self) -> str:
        return self.database_url or f"postgres://workbench@127.0.0.1:{self.data_pg_port}/workbench"

    @property
    def meta_db_url(self) -> str:
        return self.meta_database_url or f"postgres://workbench@127.0.0.1:{self.meta_pg_port}/workbench_meta"

    @property
    def cache_url(self) -> str:
        return self.valkey_url or f"redis://127.0.0.1:{self.valkey_cache_port}/0"

    @property
    def state_url(self) -> str:
        return self.valkey_state_url or f"redis://127.0.0.1:{self.valkey_state_port}/0"

    # Files under the data directory.
    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def media_dir(self) -> Path:
        """Uploaded blobs (avatars) in the default storage; Caddy serves it at /media/."""
        return self.data_dir / "media"

    @property
    def caddy_root_ca(self) -> Path:
        """The root certificate of Caddy's internal CA (XDG_DATA_HOME is <data_dir>/caddy/data):
        clients verify https_url against it; it is never installed in the system's trust store."""
        return self.data_dir / "caddy" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    @property
    def token_file(self) -> Path:
        return self.data_dir / "controller.token"

    @property
    def credentials_file(self) -> Path:
        return self.data_dir / "demo-credentials.json"

    def operator_headers(self) -> dict:
        """The operator's credential (the controller token): the admin endpoints, and the tools that
        write through the API as the operator (stale_probe, write_behind_loss)."""
        return {"Authorization": f"Bearer {self.controller_token() or ''}"}

    def controller_token(self) -> str | None:
        try:
            return self.token_file.read_text().strip()
        except FileNotFoundError:
            return None

    def front_ports(self) -> list[tuple[str, int]]:
        """Every port `up` will bind, with the process that binds it."""
        ports = [("caddy", self.caddy_port), ("caddy-https", self.https_port), ("caddy-admin", self.caddy_admin_port),
                 ("controller", self.controller_port), ("dashboard", self.dashboard_port)]
        ports += [(f"app-{i}", self.app_port(i)) for i in range(1, self.app_servers + 1)]
        if not self.meta_database_url:
            ports.append(("pg-meta", self.meta_pg_port))
        if not self.database_url:
            ports.append(("pg-primary", self.data_pg_port))
        if not self.valkey_state_url:
            ports.append(("valkey-state", self.valkey_state_port))
        if not self.valkey_url:
            ports.append(("valkey-cache", self.valkey_cache_port))
        return ports


class ConfigError(ValueError):
    pass


def bearer_matches(authorization: str, token: str | None) -> bool:
    """Whether an Authorization header is `Bearer <token>`: constant-time, and a non-ASCII header
    is simply a wrong token. Used by the controller's API and the API's admin endpoints."""
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode())


def ephemeral_low() -> int:
    """The first port the kernel hands out to outgoing connections (32768 on Linux by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def default_service_base(base: int) -> int:
    """Engines sit 12000 above the front tier, with 200 ports for them and their Valkey Cluster bus
    ports (+10000) kept below the ephemeral range: a port in that range can be taken by any client
    connection (the load generator opens thousands), and a TIME_WAIT on it blocks an engine's
    restart. Port bases too high for that fall back to 30000 above, below MAX_SERVICE_PORT."""
    if base + 12000 + 10000 + 200 <= ephemeral_low():
        return base + 12000
    return min(base + 30000, MAX_SERVICE_PORT - 200)


def _int(env: dict, name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is outside {low}..{high}")
    return value


def load(env: dict | None = None) -> StackConfig:
    env = dict(os.environ if env is None else env)
    data_dir = Path(env.get("WORKBENCH_DATA_DIR") or PROJECT_DIR / ".workbench").resolve()
    base = _int(env, "WORKBENCH_PORT_BASE", 8000, 1024, 64000)
    svc = _int(env, "WORKBENCH_SERVICE_PORT_BASE", default_service_base(base), 1024, MAX_SERVICE_PORT - 200)
    return StackConfig(
        data_dir=data_dir,
        port_base=base,
        service_port_base=svc,
        app_servers=_int(env, "WORKBENCH_APP_SERVERS", 2, 1, 16),
        app_workers=_int(env, "WORKBENCH_APP_WORKERS", 2, 1, 16),
        app_threads=_int(env, "WORKBENCH_APP_THREADS", 4, 1, 64),
        seed_users=_int(env, "WORKBENCH_SEED_USERS", 10_000, 0, 10_000_000),
        seed_posts_per_user=_int(env, "WORKBENCH_SEED_POSTS_PER_USER", 10, 0, 1000),
        reconcile_interval_s=_int(env, "WORKBENCH_RECONCILE_INTERVAL", 10, 1, 3600),
        database_url=env.get("DATABASE_URL") or None,
        meta_database_url=env.get("META_DATABASE_URL") or None,
        valkey_url=env.get("VALKEY_URL") or None,
        valkey_state_url=env.get("VALKEY_STATE_URL") or None,
    )
