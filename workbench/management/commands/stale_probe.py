"""The stale-read table: the stale-read probe (workbench/loadgen/staleprobe.py) under each caching
strategy and TTL, in one session, written to docs/benchmarks.md and saved for the dashboard."""
import json
import time
from datetime import datetime, timezone

import requests
from django.core.management.base import BaseCommand, CommandError

from workbench import topology
from workbench.loadgen.client import TopologyClient, TopologyError
from workbench.loadgen.report import write_doc_block
from workbench.loadgen.runs import machine
from workbench.loadgen.staleprobe import Probe, saved_dir
from workbench.stack import config

HEADING = "Caching: the stale-read table"
LAGGING_REPLICA_MS = 300


def cases(ttls: list[int]) -> list[tuple[str, dict]]:
    """(label, topology) in the order of the table; each is applied on top of the defaults."""
    aside = {"mode": "cache-aside"}
    rows = [("cache off", {"cache": {"mode": "off"}}),
            ("cache-aside, event invalidation", {"cache": aside}),
            ("write-through, event invalidation", {"cache": {"mode": "write-through"}}),
            ("write-behind", {"cache": {"mode": "write-behind"}}),
            ("cache-aside + L1, event invalidation", {"cache": {**aside, "l1": True}}),
            ("query cache only (cache off)", {"cache": {"mode": "off", "query_cache": True}})]
    rows += [(f"cache-aside, TTL only, TTL {ttl} s",
              {"cache": {**aside, "invalidation": "ttl", "user_ttl_s": ttl, "posts_ttl_s": ttl}}) for ttl in ttls]
    rows.append((f"cache off, 1 replica applying {LAGGING_REPLICA_MS} ms late",
                 {"replicas": 1, "emulation": {"stale_replica": 1, "apply_delay_ms": LAGGING_REPLICA_MS}}))
    return rows


class Command(BaseCommand):
    help = ("Run the stale-read probe under each caching strategy and TTL; write the table to "
            "docs/benchmarks.md and save it (the data dir's stale-probe/*.json) for the dashboard.")
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--duration", type=float, default=10.0, help="seconds per case")
        parser.add_argument("--users", type=int, default=10, help="probe users (one writer each)")
        parser.add_argument("--readers", type=int, default=4, help="reader threads")
        parser.add_argument("--write-pause-ms", type=float, default=250.0, help="pause between one writer's writes")
        parser.add_argument("--ttl", type=int, nargs="+", default=[1, 5, 30], help="TTLs (s) of the TTL-only rows")
        parser.add_argument("--only", nargs="+", default=None, metavar="LABEL_START",
                            help="run only the cases whose label starts with one of these")
        parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")

    def handle(self, *args, **o):
        if not 1 <= o["users"] <= 100 or not 1 <= o["readers"] <= 32 or not 0 < o["duration"] <= 300:
            raise CommandError("--users 1..100, --readers 1..32, --duration up to 300 s")
        cfg = config.load()
        api = cfg.api_url + "/api/v1"
        topo = TopologyClient(cfg)
        chosen = [c for c in cases(o["ttl"]) if not o["only"] or any(c[0].startswith(p) for p in o["only"])]
        if not chosen:
            raise CommandError("no case matches --only")
        try:
            users = [u["id"] for u in requests.get(f"{api}/users?limit={o['users']}", timeout=10).json()["data"]["results"]]
        except (requests.RequestException, ValueError, KeyError) as exc:
            raise CommandError(f"could not list users at {api}: {exc}") from None
        if len(users) < o["users"]:
            raise CommandError(f"the stack has {len(users)} users; seed it first")
        rows = []
        try:
            before = topo.data()["topology"]
            try:
                for label, change in chosen:
                    topo.apply(change, replace=True)
                    time.sleep(topology.REFRESH_S + 0.3)  # every worker has picked the change up
                    result = Probe(api, users, duration_s=o["duration"], readers=o["readers"],
                                   write_pause_s=o["write_pause_ms"] / 1000, headers=cfg.operator_headers()).run()
                    rows.append({"case": label, "topology": change, **result})
                    a = result["all"]
                    self.stdout.write(f"  {label}: {a['stale']:,} of {a['reads']:,} reads stale "
                                      f"({(a['stale_fraction'] or 0):.2%}), age p50 {a['age_p50_ms']} ms max "
                                      f"{a['age_max_ms']} ms; {result['writes']:,} writes; errors {result['errors'] or 0}")
            finally:
                topo.apply({k: v for k, v in before.items()
                            if k not in ("sharding", "shards", "reshard_shards")}, replace=True)
        except TopologyError as exc:
            raise CommandError(str(exc)) from None
        saved = {"at": datetime.now(timezone.utc).isoformat(), "options": {k: o[k] for k in
                 ("duration", "users", "readers", "write_pause_ms", "ttl")}, "machine": machine(), "rows": rows}
        folder = saved_dir(cfg.data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"stale-probe-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps(saved, indent=1))
        text = render(saved, o)
        self.stdout.write(text)
        self.stdout.write(f"saved to {path}")
        if not o["no_write"]:
            write_doc_block("stale-probe", text, HEADING)
            self.stdout.write("written to docs/benchmarks.md")


def render(saved: dict, o: dict) -> str:
    m = saved["machine"]
    lines = [
        f"Measured {saved['at'][:16].replace('T', ' ')} UTC by `python manage.py stale_probe --duration "
        f"{o['duration']:g} --users {o['users']} --readers {o['readers']} --write-pause-ms {o['write_pause_ms']:g} "
        f"--ttl {' '.join(str(t) for t in o['ttl'])}` on {m['cores']} cores / {m['memory_bytes'] / 2**30:.0f} GiB "
        f"({m['platform']}), through Caddy to 2 app servers on the same machine; 1 shard, no emulation unless the "
        "case says. Each probe user has one writer (alternately a profile update and a new post, then a pause); "
        f"{o['readers']} readers read random probe users' profiles and first posts pages. A read is stale when a "
        "write of what it read was acknowledged before the read was sent and the answer lacks it; its age is how "
        "long before the send that write was acknowledged.",
        "",
        "| case | reads | stale | stale share | profiles stale | posts pages stale | age p50 (ms) | age max (ms) | "
        "writes | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in saved["rows"]:
        a, p, q = row["all"], row["profile"], row["posts"]
        lines.append(f"| {row['case']} | {a['reads']:,} | {a['stale']:,} | {(a['stale_fraction'] or 0):.2%} | "
                     f"{p['stale']:,} / {p['reads']:,} | {q['stale']:,} / {q['reads']:,} | "
                     f"{_ms(a['age_p50_ms'])} | {_ms(a['age_max_ms'])} | {row['writes']:,} | "
                     f"{sum(row['errors'].values()) if row['errors'] else 0} |")
    return "\n".join(lines)


def _ms(value) -> str:
    return "-" if value is None else f"{value:,.1f}"
