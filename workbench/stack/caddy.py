"""Caddy: the single entry point, round-robin over the app servers, serving static/ and the
uploaded blobs under /media/ as the edge (Cache-Control, ETag, compression)."""
from __future__ import annotations

import json

import requests

from . import binaries
from .config import PROJECT_DIR, StackConfig
from .process import ProcessSpec


def config(cfg: StackConfig) -> dict:
    upstreams = [{"dial": f"127.0.0.1:{cfg.app_port(i)}"} for i in range(1, cfg.app_servers + 1)]
    return {
        "admin": {"listen": f"127.0.0.1:{cfg.caddy_admin_port}"},
        "logging": {"logs": {"default": {"level": "WARN"}}},
        "apps": {"http": {"servers": {"api": {
            "listen": [f"127.0.0.1:{cfg.caddy_port}"],
            "automatic_https": {"disable": True},
            "routes": [
                {"match": [{"path": ["/static/*"]}], "handle": [static_edge()]},
                {"match": [{"path": ["/media/*"]}], "handle": [media_edge(cfg)]},
                # Metrics are for the controller, straight from each app server, never via the edge.
                {"match": [{"path": ["/metrics", "/metrics/*"]}],
                 "handle": [{"handler": "static_response", "status_code": 404}]},
                # A dial that fails (an app server restarting) is tried on the next upstream for up
                # to 5 s: nothing was sent, so the retry is safe even for writes. Health checks and
                # other policies come with the load-balancer work.
                # X-Request-Start: when Caddy forwarded the request (replacing any the client sent),
                # so the app server can tell how long it queued (api/gateway/shedding.py).
                {"handle": [{"handler": "reverse_proxy", "upstreams": upstreams,
                             "headers": {"request": {"set": {"X-Request-Start": ["t={time.now.unix_ms}"]}}},
                             "load_balancing": {"selection_policy": {"policy": "round_robin"},
                                                "try_duration": "5s", "try_interval": "100ms"}}]},
            ],
        }}}},
    }


# The edge's caching rules. A name with a content hash in it (`app.3f9a1c2b.css`, and every avatar)
# never changes meaning, so any cache may keep it for a year without asking again; any other name
# may change, so caches must revalidate it (cheap: Caddy's file_server answers If-None-Match with
# 304 from the file's ETag). Headers are set on successes and 304s only, never on a 404.
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "public, no-cache"
HASHED_NAME = r"\.[0-9a-f]{8,64}\.[A-Za-z0-9]+$"


def _cache_control(value: str, **extra: str) -> dict:
    return {"handler": "headers", "response": {
        "set": {"Cache-Control": [value], **{name: [v] for name, v in extra.items()}},
        "require": {"status_code": [2, 304]}}}


def static_edge() -> dict:
    """static/ of the project: Cache-Control by name, ETag and Last-Modified (file_server), and gzip
    or zstd for text types when the client asks (encode's default response matcher skips images)."""
    hashed = {"path_regexp": {"name": "hashed", "pattern": HASHED_NAME}}
    return {"handler": "subroute", "routes": [
        {"handle": [{"handler": "rewrite", "strip_path_prefix": "/static"}]},
        {"match": [hashed], "handle": [_cache_control(IMMUTABLE)]},
        {"match": [{"not": [hashed]}], "handle": [_cache_control(REVALIDATE)]},
        {"handle": [{"handler": "encode", "encodings": {"zstd": {}, "gzip": {}}, "prefer": ["zstd", "gzip"]},
                    {"handler": "file_server", "root": str(PROJECT_DIR / "static")}]},
    ]}


def media_edge(cfg: StackConfig) -> dict:
    """Uploaded blobs (api/avatars.py) in the default filesystem storage: every name is content-
    hashed, so all are immutable. nosniff: a browser never runs an upload as anything but its type."""
    return {"handler": "subroute", "routes": [
        {"handle": [{"handler": "rewrite", "strip_path_prefix": "/media"},
                    _cache_control(IMMUTABLE, **{"X-Content-Type-Options": "nosniff"}),
                    {"handler": "file_server", "root": str(cfg.media_dir)}]},
    ]}


def spec(cfg: StackConfig) -> ProcessSpec:
    home = cfg.data_dir / "caddy"
    home.mkdir(parents=True, exist_ok=True)
    cfg.media_dir.mkdir(parents=True, exist_ok=True)
    config_file = home / "caddy.json"
    config_file.write_text(json.dumps(config(cfg), indent=2))
    return ProcessSpec(
        name="caddy", role="caddy", port=cfg.caddy_port, log_file=cfg.log_dir / "caddy.log",
        argv=[str(binaries.caddy()), "run", "--config", str(config_file)],
        # Caddy keeps its certificates and autosaves under XDG dirs: keep them in the data dir.
        env={"XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"), "HOME": str(home)},
        health=lambda: _admin_ok(cfg.caddy_admin_port),
    )


def _admin_ok(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/config/", timeout=1).ok
    except requests.RequestException:
        return False
