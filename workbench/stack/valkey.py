"""Valkey in its two roles: `cache` (LRU, may lose anything) and `state` (never evicts)."""
from __future__ import annotations

from pathlib import Path

import redis

from . import binaries
from .process import ProcessSpec

ROLES = {
    # maxmemory with LRU: a cache may drop anything under pressure, and has no persistence.
    "cache": ["--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru", "--save", "", "--appendonly", "no"],
    # noeviction: topology, rate-limit buckets and queues must never be dropped to make room.
    "state": ["--maxmemory-policy", "noeviction", "--save", "", "--appendonly", "yes",
              "--appendfsync", "everysec"],
}


def spec(role: str, port: int, data_dir: Path, log_file: Path) -> ProcessSpec:
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [str(binaries.valkey_server()), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(data_dir), "--protected-mode", "yes", *ROLES[role]]
    return ProcessSpec(name=f"valkey-{role}", role="valkey", port=port, log_file=log_file, argv=argv,
                       health=lambda: ping(f"redis://127.0.0.1:{port}/0"))


FSYNC_MODES = ("everysec", "always", "off")


def fsync_mode(client: redis.Redis) -> str:
    """The state Valkey's persistence as the topology's `cache.state_fsync` names it."""
    settings = client.config_get("append*")
    return "off" if settings.get("appendonly") != "yes" else settings.get("appendfsync")


def set_fsync(client: redis.Redis, mode: str) -> None:
    """`off` stops the append-only file (what is written from then on lives in memory only); the
    others keep it and fsync it every second or before every reply. Switching it back on rewrites
    the file from memory, in the background."""
    if mode == "off":
        client.config_set("appendonly", "no")
        return
    client.config_set("appendfsync", mode)
    client.config_set("appendonly", "yes")


def ping(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False
