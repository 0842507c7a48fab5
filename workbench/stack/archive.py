"""Continuous WAL archiving: where each node's WAL goes, and the settings every node starts with.

The archive is kept per *lineage*, the history of one database rather than one process: `meta`,
`primary` (shard 1: the node pg-primary and its replicas replica-1..4) and `shard-k` (with
shard-k-replica-1..4). A replica promoted later continues its shard's history on a new timeline,
so it archives into the same place as the primary it replaced.

Every node runs with archive_mode=always, set on the command line from its start (archive_mode
needs a restart to change):
- with `on`, a standby archives nothing, and once promoted archives only the WAL it generated
  itself: the segments the dead primary had not archived yet, which the standby has, would never
  reach the archive. With `always` each standby also archives every segment it receives, into the
  same shared archive; a copy already there with identical content counts as done.
- the command copies only once the lineage's directory exists: `manage.py backup` creates it with
  the first base backup, before which archived WAL could not be replayed onto anything (and a
  stack that is never backed up spends no disk on it).
- a different file of the same name is never overwritten: the command fails, and PostgreSQL keeps
  the segment and retries, saying so in the node's log.
"""
from __future__ import annotations

import shlex
from pathlib import Path

from api.routing import shards
from workbench import parameters


def backup_root(stack_data_dir: Path) -> Path:
    return stack_data_dir / "backup"


def wal_dir(stack_data_dir: Path, lineage: str) -> Path:
    return backup_root(stack_data_dir) / "wal" / lineage


def lineage(alias: str) -> str | None:
    """The lineage of a node alias (a directory name under <data dir>/pg), None for anything else."""
    if alias == "meta":
        return "meta"
    where = shards.parse_alias(alias)
    return shards.primary_alias(where[0]) if where else None


def archive_command(directory: Path) -> str:
    d = shlex.quote(str(directory))
    # `$$` (the shell's pid) makes the temporary name unique: a primary and its standbys may copy
    # the same segment at once. `sync` makes the copy durable before PostgreSQL recycles its own.
    return (f"test ! -d {d} || cmp -s %p {d}/%f || "
            f"{{ test ! -f {d}/%f && cp %p {d}/%f.$$ && sync {d}/%f.$$ && mv {d}/%f.$$ {d}/%f; }}")


def restore_command(directory: Path) -> str:
    d = shlex.quote(str(directory))
    return f"cp {d}/%f %p"


def settings(data_dir: Path) -> dict:
    """The archiving settings of the node whose data directory is <stack data dir>/pg/<alias>; none
    for a directory elsewhere (a restore drill's copy must never write into the real archive)."""
    name = lineage(data_dir.name)
    if data_dir.parent.name != "pg" or name is None:
        return {}
    timeout = parameters.load().get("backup", {}).get("archive_timeout_s", 60)
    return {"archive_mode": "always",
            "archive_command": archive_command(wal_dir(data_dir.parent.parent, name)),
            "archive_timeout": f"{int(timeout)}s"}
