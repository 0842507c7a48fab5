"""What a fleet costs (modelled): per month and per million requests, from editable unit prices, the
p95-vs-cost curve (the seed's "latency vs cost"), and the check against a budget.

The default prices are illustrative round figures of the order of on-demand cloud list prices for
nodes of the fleet model's shapes (16 cores; a cache node of about 64 GiB; a database node of 16
cores with fast storage), not quotes: edit them (CLI --price NAME=VALUE, the dashboard's sliders).
"""
from __future__ import annotations

from dataclasses import replace

from . import fleet as fleet_model

PRICES = {
    "lb_node_month": 500.0,        # a 16-core load-balancer node
    "app_node_month": 500.0,       # a 16-core app server
    "cache_node_month": 650.0,     # a cache node of about 64 GiB (52 GiB for data)
    "db_node_month": 1500.0,       # a 16-core database node with its storage
    "egress_per_gb": 0.05,         # responses leaving for the internet
    "cross_region_per_gb": 0.02,   # replication between regions
}
SECONDS_A_MONTH = 30 * 24 * 3600
NODE_PRICE = {"load balancers": "lb_node_month", "app servers": "app_node_month", "cache nodes": "cache_node_month",
              "db primaries": "db_node_month", "db replicas": "db_node_month"}


def monthly(fleet: dict, prices: dict | None = None, response_bytes: float = 2000.0,
            write_bytes: float = 1000.0) -> dict:
    """The month's bill of a sized fleet (fleet.size), by line, with the cost per million requests.
    Cache nodes count twice: each has a replica."""
    p = {**PRICES, **(prices or {})}
    d = fleet["design"]
    lines = {}
    for name, nodes in fleet["total"].items():
        lines[name] = nodes * (2 if name == "cache nodes" else 1) * p[NODE_PRICE[name]]
    requests = d["rps"] * SECONDS_A_MONTH
    lines["egress"] = requests * response_bytes / 1e9 * p["egress_per_gb"]
    copies = max(d["regions"] - 1, 0)
    lines["cross-region replication"] = requests * (1 - d["read_ratio"]) * write_bytes * copies / 1e9 \
        * p["cross_region_per_gb"]
    total = sum(lines.values())
    return {"lines": {k: round(v, 2) for k, v in lines.items()}, "month": round(total, 2),
            "per_million": round(total / (requests / 1e6), 4)}


def curve(design: "fleet_model.Design", costs, prices: dict | None = None,
          utils=(0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95), **kw) -> list[dict]:
    """Cost against modelled p95 as the fleet's utilisation ceiling moves: more headroom, more nodes,
    less queueing."""
    rows = []
    for u in utils:
        f = fleet_model.size(replace(design, max_util=u), costs)
        rows.append({"max_util": u, "p95_ms": f["latency_ms"]["p95"], "p99_ms": f["latency_ms"]["p99"],
                     "month": monthly(f, prices, **kw)["month"], "app_servers": f["total"]["app servers"]})
    return rows


def budget_check(bill: dict, budget_month: float | None) -> dict:
    if not budget_month:
        return {"budget": None, "within": None, "note": "no budget given"}
    within = bill["month"] <= budget_month
    return {"budget": budget_month, "within": within,
            "note": f"{bill['month'] / budget_month:.0%} of the budget" + ("" if within else ": OVER budget")}
