"""Caddy: the single entry point, round-robin over the app servers, serving static/ as the edge."""
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
                {"match": [{"path": ["/static/*"]}],
                 "handle": [{"handler": "rewrite", "strip_path_prefix": "/static"},
                            {"handler": "file_server", "root": str(PROJECT_DIR / "static")}]},
                # Metrics are for the controller, straight from each app server, never via the edge.
                {"match": [{"path": ["/metrics", "/metrics/*"]}],
                 "handle": [{"handler": "static_response", "status_code": 404}]},
                # A dial that fails (an app server restarting) is tried on the next upstream for up
                # to 5 s: nothing was sent, so the retry is safe even for writes. Health checks and
                # other policies come with the load-balancer work.
                {"handle": [{"handler": "reverse_proxy", "upstreams": upstreams,
                             "load_balancing": {"selection_policy": {"policy": "round_robin"},
                                                "try_duration": "5s", "try_interval": "100ms"}}]},
            ],
        }}}},
    }


def spec(cfg: StackConfig) -> ProcessSpec:
    home = cfg.data_dir / "caddy"
    home.mkdir(parents=True, exist_ok=True)
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
