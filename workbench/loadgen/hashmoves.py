"""How many users a hash policy moves when a server is added: each user's server is read from the
X-App-Server header of a request that names the user in the hashed header, before and after
scaling out by one. Rendezvous hashing moves only the users the new server now wins, about
1/(N+1) of them; a modulo hash (user mod N) would move about N/(N+1)."""
from __future__ import annotations

import time

import requests

from workbench.stack.config import StackConfig

from .client import TopologyClient


def servers_of(cfg: StackConfig, header: str, users: range) -> dict[int, str]:
    """The app server each user's requests reach now."""
    out = {}
    with requests.Session() as http:
        for user in users:
            response = http.get(cfg.api_url + "/healthz", headers={header: str(user)}, timeout=10)
            response.raise_for_status()
            out[user] = response.headers["X-App-Server"]
    return out


def measure(cfg: StackConfig, topo: TopologyClient, users: int = 1000, timeout: float = 120.0) -> dict:
    """Scale out by one under the `header` policy and count the users whose server changed; the
    topology is put back as it was."""
    before_topology = topo.data()["topology"]
    count = before_topology["app_servers"]
    header = before_topology["lb_header"]
    keys = range(1, users + 1)
    try:
        topo.apply({"lb_policy": "header"})
        before = servers_of(cfg, header, keys)
        topo.apply({"app_servers": count + 1})
        new_server = f"app-{count + 1}"
        deadline = time.monotonic() + timeout
        while True:  # the new server joins the rotation once its first health check passes
            after = servers_of(cfg, header, keys)
            if new_server in after.values() or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    finally:
        topo.apply({"lb_policy": before_topology["lb_policy"], "app_servers": count})
    moved = [u for u in keys if before[u] != after[u]]
    return {"users": users, "servers_before": count, "servers_after": count + 1, "moved": len(moved),
            "fraction": len(moved) / users, "expected": 1 / (count + 1),
            "moved_to_new": sum(after[u] == new_server for u in moved),
            "reached_new": new_server in after.values()}
