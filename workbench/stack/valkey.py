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


def ping(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False
