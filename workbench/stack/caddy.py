"""Caddy: the single entry point, load-balancing over the app servers (the topology's `lb_policy`,
switched live through the admin API), serving static/ and the
uploaded blobs under /media/ as the edge (Cache-Control, ETag, compression)."""
from __future__ import annotations

import json

import requests

from . import binaries
from .config import PROJECT_DIR, StackConfig
from .process import ProcessSpec


PROXY_ID = "app_proxy"
SELECTION_PATH = f"/id/{PROXY_ID}/load_balancing/selection_policy"


def selection_policy(lb: str) -> dict:
    """Caddy's JSON for a topology's policy (Topology.lb(): `round_robin`, `least_conn`, `uri`,
    `header:<name>`). Caddy's `header` and `uri_hash` policies are rendezvous hashing (highest
    random weight): each upstream gets a score hash(key, upstream) and the highest wins, so one
    header value or URI keeps one app server, and adding a server moves only the keys it now wins,
    without the ring of virtual nodes the sharding issue's consistent hashing uses. A request
    without the header falls back to round-robin (Caddy's own default there is random)."""
    if lb.startswith("header:"):
        return {"policy": "header", "field": lb.removeprefix("header:"), "fallback": {"policy": "round_robin"}}
    return {"policy": "uri_hash" if lb == "uri" else lb}


def running_policy(cfg: StackConfig) -> str | None:
    """The policy Caddy runs now, as Topology.lb() writes it; None while Caddy cannot be asked."""
    try:
        response = requests.get(_admin(cfg, SELECTION_PATH), timeout=2)
        response.raise_for_status()
        policy = response.json() or {}
    except (requests.RequestException, ValueError):
        return None
    name = policy.get("policy")
    if name == "header":
        return f"header:{policy.get('field')}"
    return "uri" if name == "uri_hash" else name


def set_policy(cfg: StackConfig, lb: str) -> bool:
    """Switch the policy live: a PATCH of the reverse_proxy handler's selection_policy alone, no
    restart. Caddy loads the changed config gracefully: requests in flight finish on the handler
    that took them; new ones use the new policy. False when Caddy is not up (yet): the controller's
    next pass tries again."""
    if running_policy(cfg) == lb:
        return True
    try:
        response = requests.patch(_admin(cfg, SELECTION_PATH), json=selection_policy(lb), timeout=10)
    except requests.RequestException:
        return False
    if not response.ok:
        raise RuntimeError(f"Caddy refused the policy {lb}: {response.status_code} {response.text[:200]}")
    return True


def upstreams(cfg: StackConfig) -> list[dict] | None:
    """Caddy's upstream stats, per app server: `in_flight` is its requests in flight now (Caddy's
    num_requests), `fails` the failures it counts against it. None while Caddy cannot be asked."""
    names = {f"127.0.0.1:{cfg.app_port(i)}": f"app-{i}" for i in range(1, cfg.app_servers + 1)}
    try:
        response = requests.get(_admin(cfg, "/reverse_proxy/upstreams"), timeout=2)
        response.raise_for_status()
        rows = response.json() or []
    except (requests.RequestException, ValueError):
        return None
    return [{"app_server": names.get(row.get("address"), row.get("address")), "address": row.get("address"),
             "in_flight": row.get("num_requests", 0), "fails": row.get("fails", 0)} for row in rows]


def _admin(cfg: StackConfig, path: str) -> str:
    return f"http://127.0.0.1:{cfg.caddy_admin_port}{path}"


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
                # "@id" names the handler in the admin API: /id/app_proxy/... (set_policy below).
                {"handle": [{"@id": PROXY_ID, "handler": "reverse_proxy", "upstreams": upstreams,
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
