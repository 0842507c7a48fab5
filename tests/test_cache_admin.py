"""The caching layers' report (GET /api/v1/admin/cache) and the stale-read probe on the real stack:
counters added up over every app server, the cache Valkey's own figures, and the probe finding
stale reads under TTL-only invalidation and none under event invalidation."""
import os
import subprocess
import sys
import time

import requests

from conftest import ANONYMOUS, wait_for
from tests.settings import ROOT
from workbench import topology


def admin(stack_config, api_url, **kw):
    return requests.get(f"{api_url}/admin/cache", timeout=10,
                        headers={"Authorization": f"Bearer {stack_config.controller_token()}"}, **kw)


def test_the_report_needs_the_admin_token(api_url):
    response = requests.get(f"{api_url}/admin/cache", headers=ANONYMOUS, timeout=10)
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"


def test_the_report_counts_hits_over_every_app_server(topology_admin, stack_config, api_url, new_user):
    topology_admin.apply({"max_lag_ms": 0, "cache": {"mode": "cache-aside"}}, replace=True)
    time.sleep(topology.REFRESH_S + 0.2)
    before = admin(stack_config, api_url).json()["data"]["layers"]["valkey"]["counters"].get("hits", 0)
    user = new_user()
    url = f"{api_url}/users/{user['id']}"
    wait_for(lambda: requests.get(url, timeout=10).headers["X-Cache"] == "hit", timeout=15, what="a hit")
    for _ in range(10):
        requests.get(url, timeout=10)
    time.sleep(0.6)  # each worker adds its counts to the state Valkey at most every half second
    requests.get(url, timeout=10)  # ... when it serves a request: make every worker flush once more
    data = wait_for(lambda: (d := admin(stack_config, api_url).json()["data"])
                    and d["layers"]["valkey"]["counters"].get("hits", 0) >= before + 5 and d,
                    timeout=20, what="the hits in the report")
    assert data["cache"]["mode"] == "cache-aside"
    valkey = data["layers"]["valkey"]
    assert 0 < valkey["hit_ratio"] <= 1
    assert valkey["server"]["keys"] >= 1 and valkey["server"]["evicted_keys"] >= 0
    assert set(data["layers"]) == {"l1", "valkey", "query"}
    assert data["layers"]["l1"]["this_process"]["app_server"] in ("app-1", "app-2")
    topology_admin.apply({}, replace=True)


def probe(*args) -> str:
    done = subprocess.run([sys.executable, "manage.py", "stale_probe", "--duration", "3", "--users", "4",
                           "--readers", "3", "--no-write", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def test_the_probe_finds_stale_reads_under_ttl_only_and_none_under_events(stack_config, api_url, topology_admin):
    probe("--only", "cache-aside, event", "cache-aside, TTL", "--ttl", "30")
    saved = admin(stack_config, api_url).json()["data"]["stale_probe"]
    rows = {r["case"]: r for r in saved["rows"]}
    events, ttl = rows["cache-aside, event invalidation"], rows["cache-aside, TTL only, TTL 30 s"]
    for row in (events, ttl):
        assert row["all"]["reads"] > 20 and row["writes"] > 10 and not row["errors"], row
    # Every write deletes what it changed before it is acknowledged: no read sent afterwards is stale.
    assert events["all"]["stale"] == 0, events
    # With TTL only, a cached profile or page outlives the writes after it.
    assert ttl["all"]["stale"] > 0 and ttl["all"]["age_max_ms"] > 0, ttl
    # The probe put the topology back as it found it.
    assert topology_admin.get().json()["data"]["topology"]["cache"]["mode"] == "off"
