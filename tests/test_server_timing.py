"""Server-Timing on the real stack: each layer a request went through shows up as a part, and the
parts add up to no more than the whole (api/timing.py)."""
import time

import requests

from conftest import wait_for
from workbench import topology
from workbench.loadgen.recorder import server_timing


def parts(response) -> dict:
    return server_timing(response.headers["Server-Timing"])


def test_an_uncached_read_shows_gateway_db_and_render_within_app(topology_admin, api_url, new_user):
    topology_admin.apply({"cache": {"mode": "off"}}, replace=True)
    time.sleep(topology.REFRESH_S + 0.2)
    user = new_user()
    timing = parts(requests.get(f"{api_url}/users/{user['id']}", timeout=10))
    assert {"app", "gateway", "db", "render"} <= set(timing) and "cache" not in timing, timing
    assert timing["db"] > 0 and timing["render"] > 0
    assert timing["gateway"] + timing["db"] + timing["render"] <= timing["app"] + 0.01, timing


def test_a_cache_hit_shows_the_cache_and_no_db(topology_admin, api_url, new_user):
    topology_admin.apply({"max_lag_ms": 0, "cache": {"mode": "cache-aside"}}, replace=True)
    time.sleep(topology.REFRESH_S + 0.2)
    user = new_user()
    url = f"{api_url}/users/{user['id']}"
    hit = wait_for(lambda: (r := requests.get(url, timeout=10)).headers["X-Cache"] == "hit" and r,
                   timeout=15, what="a cache hit")
    timing = parts(hit)
    assert "cache" in timing and "db" not in timing, timing
    assert timing["cache"] <= timing["app"] + 0.01
    topology_admin.apply({}, replace=True)


def test_a_problem_response_still_carries_the_header(api_url):
    response = requests.get(f"{api_url}/users/1", timeout=10)
    assert response.status_code == 404 and "app" in parts(response)
