"""Benchmarks of topology toggles: each suite measures several topologies in one session, the
repetitions interleaved (A B C A B C ...) so drift on a noisy machine hits each alike, and writes
its table (medians; ratios to the suite's first row) into docs/benchmarks.md.

  replicas     read throughput and p95 with 0, 1 and 2 replicas, emulation off and on (RTT sweep)
  replication  the write cost of async vs remote_write vs remote_apply (1 replica)
  pooling      a new connection per request vs pooled connections vs PgBouncer
  sharding     write throughput and p95 with 1, 2 and 4 shards, emulation off and on (RTT sweep);
               each shard count is reached by an online reshard, which is recorded too
  querycache   the database query cache off vs on (application cache off), the caching lesson's
               95/5 Zipf mix, emulation off and on (RTT sweep), with the X-Query-Cache shares
  readmodel    GET /users/{id}?view=profile from the read model (Valkey documents) vs the SQL path, 95/5,
               with the documents' staleness (commit to document update) from the admin endpoint
  fastpath     cached GET /users/{id} (Valkey, Valkey + L1, and Valkey with the whole gateway on: a JWT
               verified per request and the rate limiter) against the bare Django JSON view, both through
               Caddy, with where each response's time went (Server-Timing)
  cachenodes   the caching lesson's 95/5 Zipf mix with cache-aside on 1 Valkey vs a 3-node Valkey
               Cluster (`cache_nodes`), and the 3-node cluster losing one node (SIGKILL) mid-run
  ratelimit    the rate limiter's added latency: cached GET /users/{id} with the limiter off vs on
               (one rule, three rules) with rules so generous that nothing is refused
  caddy        Caddy's overhead: one app server through Caddy vs directly on its port
  appservers   throughput vs app-server count (1, 2, 4) on the shared 2 cores
  lbpolicy     least connections vs round-robin on a mix of point reads, searches and 100-row pages
  lbl1         the per-process L1 cache's hit rate under each load-balancing policy
  observability  metrics and tracing off vs on (default sampling) vs every request traced
  spike        a traffic spike (2 x the measured capacity C, 10x the normal 0.2 x C) with load shedding
               off vs on: admitted p95, share shed, generator lag (workbench/loadgen/spike.py)
  flood        a volumetric flood from many loopback addresses against the per-IP rate limit: the normal
               traffic's admitted p95 with and without it, against the A/A noise band
               (workbench/loadgen/floodbench.py)

A case may name a placement (`sharding`, `shards`): those change only by resharding, so the
suite reshards in-process (api/routing/reshard.py, what `manage.py reshard` runs) before it
measures that case, and reshards back to where it started at the end.
"""
import collections
import json
import time
from datetime import datetime, timezone

from django.core.management.base import BaseCommand, CommandError

from api.routing import reshard, shards as shard_names
from workbench import parameters, topology
from workbench.loadgen import floodbench, hashmoves, spike
from workbench.loadgen.client import RunClient, RunError, TopologyClient, TopologyError
from workbench.loadgen.report import (BENCHMARKS_DOC, add_bench_arguments, cpu_mean, median as _median, new_row,
                                      record_pair, shard_shares, write_doc_block)
from workbench.loadgen.runs import machine, versions
from workbench.stack import config

READS = {"read_ratio": 1.0}  # the default read mix: a user, a user's posts, a time range, a post
POINT_READS = {"read_ratio": 1.0, "reads": {"user": 1}}
WRITES = {"read_ratio": 0.0, "writes": {"create_post": 1}}
# The caching lesson's workload: 95% reads of profiles and posts pages, 5% writes, Zipf popularity.
CACHED_MIX = {"read_ratio": 0.95, "popularity": "zipf", "zipf_s": 1.1, "reads": {"user": 1, "user_posts": 1}}
# The fast path's workload: point reads over a hot set small enough that nearly every read is a hit
# (its first reads are misses; the table shows the X-Cache shares the runs got).
HOT_READS = {"read_ratio": 1.0, "reads": {"user": 1}, "hot_keys": 200}
BARE_VIEW = {"path": "/healthz"}
# The read model's workload: 95% GET /users/{id}?view=profile (the user and their latest 10 posts),
# 5% writes (each of which the relay turns into a new document), Zipf popularity.
PROFILE_MIX = {"read_ratio": 0.95, "popularity": "zipf", "zipf_s": 1.1, "reads": {"user_profile": 1}}
# The least-connections lesson's workload: point reads with slow ones among them (a full-text search
# over every shard, the API's largest page), so one server can be stuck behind slow requests.
MIXED_READS = {"read_ratio": 1.0, "reads": {"user": 0.96, "search": 0.02, "large_page": 0.02}}
# The hash-policy lesson's workload: point reads with the per-process L1 cache on; each request names
# its user in X-User-Id, the header the `header` policy hashes on (the topology's default lb_header).
L1_READS = {"read_ratio": 1.0, "reads": {"user": 1}, "popularity": "zipf", "zipf_s": 1.1, "user_header": "X-User-Id"}
L1_CACHE = {"mode": "cache-aside", "l1": True, "user_ttl_s": 3600, "l1_ttl_ms": 60_000}
SHARD_COUNTS = (1, 2, 4)
PLACEMENT = ("sharding", "shards")
CPU_SATURATED = 95.0  # mean % of all cores over a run: the shared CPU, not an emulated node, set the pace


def _emulated(rtt: float | None) -> dict:
    if rtt is None:
        return {"enabled": False}
    return {"enabled": True, "rtt_ms": rtt, "node_concurrency": parameters.emulation()["node_concurrency"]}


# Rules no benchmark can exhaust: a billion tokens, refilled a million a second. What is measured is the
# limiter's check (one EVALSHA in the state Valkey per request), not refusals.
GENEROUS = {"capacity": 1_000_000_000, "refill_per_s": 1_000_000}
LIMITER_ONE = [{"name": "bench-per-ip", "per": ["ip"], **GENEROUS}]
# The whole gateway on a cached read: each request's JWT verified, and a rate limiter keyed by IP and by
# the token's user (generous: nothing refused).
LIMITER_FULL = LIMITER_ONE + [{"name": "bench-per-user", "per": ["user"], **GENEROUS}]
FULL_GATEWAY = "GET /users/{id}, cache-aside, full gateway (JWT verified + rate limiter per IP and per user)"
LIMITER_THREE = LIMITER_ONE + [
    {"name": "bench-per-endpoint", "per": ["endpoint"], "endpoints": ["GET /api/*"], **GENEROUS},
    {"name": "bench-per-ip-endpoint", "per": ["ip", "endpoint"], "endpoints": ["GET /api/v*/users/{user_id}"],
     **GENEROUS}]
LIMITER_TARGET_MS = 0.5  # the limiter's added p50 (issue 8 item 3)


def suites(strategy: str = "hash") -> dict:
    """name -> (heading, what the table shows, workload, [(case label, topology[, workload])]). A
    case's topology may carry `sharding` and `shards`: the suite reshards to them first; a case's
    own workload replaces the suite's."""
    sweep = parameters.emulation()["rtt_sweep_ms"]
    shard_cases = []
    for count in SHARD_COUNTS:
        for rtt in (None, *sweep):
            label = f"shards={count}, " + ("emulation off" if rtt is None else f"emulation on, RTT {rtt:g} ms")
            shard_cases.append((label, {"sharding": strategy, "shards": count, "emulation": _emulated(rtt)}))
    replica_cases = []
    for replicas in (0, 1, 2):
        for rtt in (None, *sweep):
            label = f"replicas={replicas}, " + ("emulation off" if rtt is None else f"emulation on, RTT {rtt:g} ms")
            replica_cases.append((label, {"replicas": replicas, "emulation": _emulated(rtt)}))
    cache_cases = []
    for rtt in (None, *sweep):
        for name, cache in (("off", {"mode": "off"}), ("cache-aside", {"mode": "cache-aside"}),
                            ("cache-aside + L1", {"mode": "cache-aside", "l1": True})):
            label = f"cache {name}, " + ("emulation off" if rtt is None else f"emulation on, RTT {rtt:g} ms")
            cache_cases.append((label, {"cache": cache, "emulation": _emulated(rtt)}))
    query_cases = []
    for rtt in (None, *sweep):
        for on in (False, True):
            label = f"query cache {'on' if on else 'off'}, " + (
                "emulation off" if rtt is None else f"emulation on, RTT {rtt:g} ms")
            query_cases.append((label, {"cache": {"mode": "off", "query_cache": on}, "emulation": _emulated(rtt)}))
    hits = {"mode": "cache-aside", "user_ttl_s": 3600}  # entries outlive the whole suite: the runs measure hits
    fast_cases = [("bare Django JSON view (/healthz)", {}, BARE_VIEW),
                  ("GET /users/{id}, cache off", {"cache": {"mode": "off"}}),
                  ("GET /users/{id}, cache-aside (Valkey)", {"cache": hits}),
                  ("GET /users/{id}, cache-aside + L1", {"cache": {**hits, "l1": True, "l1_ttl_ms": 60_000}}),
                  (FULL_GATEWAY, {"cache": hits, "rate_limit": {"enabled": True, "rules": LIMITER_FULL}},
                   {**HOT_READS, "signed_reads": True})]
    aside = {"mode": "cache-aside"}
    node_cases = [("cache_nodes=1", {"cache_nodes": 1, "cache": aside}),
                  ("cache_nodes=3", {"cache_nodes": 3, "cache": aside}),
                  (NODE_LOST, {"cache_nodes": 3, "cache": aside})]
    limiter_cases = [("limiter off", {"cache": hits}),
                     ("limiter on, 1 rule (per IP)", {"cache": hits, "rate_limit": {"enabled": True,
                                                                                    "rules": LIMITER_ONE}}),
                     ("limiter on, 3 rules (per IP, per endpoint, per IP and endpoint)",
                      {"cache": hits, "rate_limit": {"enabled": True, "rules": LIMITER_THREE}})]
    direct = {**POINT_READS, "target": config.load().direct_url(1)}
    return {
        "caddy": ("Load balancing: Caddy's overhead",
                  "GET /users/{id} only, 0 replicas, cache off, one app server (app_servers=1); the same "
                  "server measured through Caddy (round_robin over the one healthy upstream) and directly "
                  "on its own port, interleaved in one session",
                  POINT_READS, [("through Caddy", {"app_servers": 1}),
                                ("direct to app-1", {"app_servers": 1}, direct)]),
        "appservers": ("Load balancing: throughput vs app-server count",
                       "GET /users/{id} only, 0 replicas, cache off, round_robin; each app server is a gunicorn "
                       "group of 2 gthread workers x 4 threads, all on the same 2 cores",
                       POINT_READS, [(f"app_servers={n}", {"app_servers": n}) for n in (1, 2, 4)]),
        "observability": ("Observability: the cost of metrics and tracing",
                          "GET /users/{id} only, uniform popularity, 0 replicas, cache off, 2 app servers; "
                          "`observability.metrics` and `observability.trace_sample_rate` switched per case (the "
                          "JSON request log and Server-Timing stay on in every case)",
                          POINT_READS,
                          [("metrics off, tracing off", {"observability": {"metrics": False, "trace_sample_rate": 0}}),
                           ("metrics on, tracing at the default rate", {}),
                           ("metrics on, every request traced", {"observability": {"trace_sample_rate": 1}})]),
        "lbpolicy": ("Load balancing: least connections vs round-robin on a mixed workload",
                     "96% GET /users/{id} (about 5 ms each), 2% full-text searches over every shard for 8 of the "
                     "seeded words (GET /search/posts?q=..., about 0.2-0.35 s each), 2% the largest page of users "
                     "(GET /users?limit=100), uniform popularity, 0 replicas, cache off, 2 app servers",
                     MIXED_READS, [("round_robin", {"lb_policy": "round_robin"}),
                                   ("least_conn", {"lb_policy": "least_conn"})]),
        "lbl1": ("Load balancing: the per-process L1 cache's hit rate per policy",
                 "GET /users/{id} only, Zipf popularity (s = 1.1) over the seeded users, each request naming its "
                 "user in X-User-Id, 0 replicas, cache-aside with the per-process L1 on (TTLs longer than the "
                 "suite), 2 app servers x 2 worker processes: 4 separate L1 caches",
                 L1_READS, [(f"lb_policy={name}", {"lb_policy": name, "cache": L1_CACHE})
                            for name in ("round_robin", "least_conn", "header", "uri")]),
        "spike": ("Load shedding: a traffic spike", spike.WHAT, spike.WORKLOAD, list(spike.CASES)),
        "flood": ("Hostile input: a volumetric flood against the rate limiter", floodbench.what(),
                  floodbench.WORKLOAD, [(label, {}) for label in floodbench.CASES]),
        "ratelimit": ("Rate limiting: the limiter's added latency",
                      "GET /users/{id} over a hot set of 200 users (uniform), reads only, 0 replicas, cache-aside "
                      "(nearly every read a hit, so the limiter's share of each request shows), emulation off, "
                      "through Caddy; the limiter on checks every request against generous rules (nothing is "
                      "refused) in one EVALSHA on the state Valkey",
                      HOT_READS, limiter_cases),
        "cachenodes": ("Caching: one cache Valkey vs a 3-node Valkey Cluster, and losing a node",
                       "95% reads (GET /users/{id} and GET /users/{id}/posts, half each), 5% writes (posts, "
                       "profile updates), Zipf popularity (s = 1.1) over the seeded users, 0 replicas, "
                       "cache-aside with the default TTLs, emulation off; in the last case one of the 3 nodes "
                       "is SIGKILLed 40% into each run (the controller restarts it, empty)",
                       CACHED_MIX, node_cases),
        "readmodel": ("Read model: profile documents in Valkey vs the SQL path",
                      "95% GET /users/{id}?view=profile (the user and their latest 10 posts), 5% writes (posts, "
                      "profile updates), Zipf popularity (s = 1.1) over the seeded users, 0 replicas, application "
                      "cache off; `read_model` off builds each profile from SQL (two queries in one snapshot), on "
                      "reads the document the relay keeps in the state Valkey",
                      PROFILE_MIX, [("profile from SQL (read_model off)", {"read_model": False}),
                                    ("profile from the read model (read_model on)", {"read_model": True})]),
        "fastpath": ("Caching: the fast path against the bare Django view",
                     "GET /users/{id} over a hot set of 200 users (uniform), reads only, 0 replicas, emulation "
                     "off; the bare view is `/healthz`, a plain Django JsonResponse with no database, no cache "
                     "and no DRF; every case through Caddy",
                     HOT_READS, fast_cases),
        "caching": ("Caching: cache off vs cache-aside",
                    "95% reads (GET /users/{id} and GET /users/{id}/posts, half each), 5% writes (posts, "
                    "profile updates), Zipf popularity (s = 1.1) over the seeded users, 0 replicas",
                    CACHED_MIX, cache_cases),
        "querycache": ("Caching: the database query cache off vs on",
                       "95% reads (GET /users/{id} and GET /users/{id}/posts, half each), 5% writes (posts, "
                       "profile updates), Zipf popularity (s = 1.1) over the seeded users, 0 replicas; the "
                       "application cache (`cache.mode`) off, so every read reaches the selectors, and "
                       "`cache.query_ttl_s` at its default",
                       CACHED_MIX, query_cases),
        "replicas": ("Read replicas, with and without emulation",
                     "the default read mix (users, a user's posts, time ranges, single posts), reads only",
                     READS, replica_cases),
        "replication": ("Replication mode: the write cost",
                        "POST /users/{id}/posts only, with 1 replica",
                        WRITES, [(f"replication={mode}", {"replicas": 1, "replication": mode})
                                 for mode in ("async", "remote_write", "remote_apply")]),
        "pooling": ("Connection pooling",
                    "GET /users/{id} only, 0 replicas",
                    POINT_READS, [("pooled (psycopg pool per node and worker)", {"pool": True}),
                                  ("a new connection per request", {"pool": False}),
                                  ("PgBouncer (session mode), a new client connection per request",
                                   {"pool": False, "pgbouncer": True})]),
        "sharding": ("Sharding: write throughput",
                     f"POST /users/{{id}}/posts only (each post by an existing user, on that user's shard), "
                     f"0 replicas, `{strategy}` placement",
                     WRITES, shard_cases),
    }


class Command(BaseCommand):
    help = ("Measure a suite of topology toggles (caching, replicas, replication, pooling, sharding) and write it to "
            "docs/benchmarks.md.")
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("suite", choices=sorted(suites()))
        add_bench_arguments(parser, duration=5.0, rate=100.0, connections=8)
        parser.add_argument("--strategy", default="hash", choices=[*shard_names.STRATEGIES, "directory"],
                            help="sharding suite: the placement strategy to reshard with")

    def handle(self, *args, **o):
        cfg = config.load()
        runs, topo = RunClient(cfg), TopologyClient(cfg)
        heading, what, workload, cases = suites(o["strategy"])[o["suite"]]
        self.stdout.write(f"suite {o['suite']}: {len(cases)} cases x {o['repeats']} repetitions; closed "
                          f"{o['connections']} connections and open {o['rate']:g} req/s, {o['duration']:g} s each")
        if o["suite"] == "spike":
            return self.spike(cfg, runs, topo, o, heading, what)
        if o["suite"] == "flood":
            return self.flood(cfg, runs, topo, o, heading, what)
        table = {label: new_row() for label, *_ in cases}
        self.reshards: list[dict] = []
        try:
            before = topo.data()["topology"]
            data = {"users": shard_rows(cfg, before["shards"])}
            try:
                for rep in range(o["repeats"]):
                    for label, change, *own in cases:
                        placement = {k: change[k] for k in PLACEMENT if k in change}
                        # Each case is the suite's own topology on top of the defaults: nothing else carries over
                        # (PUT keeps the placement fields; only a reshard changes them).
                        topo.apply({k: v for k, v in change.items() if k not in PLACEMENT}, replace=True)
                        if placement:
                            self.place(topo, placement)
                        time.sleep(topology.REFRESH_S + 0.2)  # every app worker runs the case's topology
                        if change.get("read_model"):
                            readmodel_ready()
                        if label == NODE_LOST:
                            closed, opened = node_lost_pair(cfg, runs, workload, o, f"bench {o['suite']} {label} "
                                                                                   f"#{rep + 1}")
                        else:
                            closed, opened = runs.closed_and_open(own[0] if own else workload, o,
                                                                  f"bench {o['suite']} {label} #{rep + 1}")
                        row = table[label]
                        row.setdefault("closed", []).append(closed["summary"])
                        record_pair(row, closed, opened)
                        row.setdefault("cpu", []).append(cpu_mean(closed))
                        row.setdefault("shares", []).append(shard_shares(closed))
                        row.setdefault("errors", []).append(closed["summary"]["error_count"] +
                                                            opened["summary"]["error_count"])
                        row.setdefault("requests", []).append(closed["summary"]["sent"] + opened["summary"]["sent"])
                        if o["suite"] == "readmodel":
                            row.setdefault("readmodel", []).append(readmodel_status())
                        spread = "/".join(f"{v:.0%}" for v in shard_shares(closed).values())
                        self.stdout.write(f"  #{rep + 1} {label}: {closed['summary']['achieved_rps']} req/s closed "
                                          f"(CPU {cpu_mean(closed)}%, by shard {spread or '-'}); "
                                          f"open p50 {opened['summary']['latency']['p50_ms']} ms, p95 "
                                          f"{opened['summary']['latency']['p95_ms']} ms "
                                          f"({'valid' if row['valid'][-1] else 'INVALID'})")
            finally:
                if any(before[k] != topo.data()["topology"][k] for k in PLACEMENT):
                    self.place(topo, {k: before[k] for k in PLACEMENT})
                topo.apply({k: v for k, v in before.items() if k not in (*PLACEMENT, "reshard_shards")}, replace=True)
        except (RunError, TopologyError, reshard.ReshardError) as exc:
            raise CommandError(str(exc)) from None
        data["posts_end"] = shard_rows(cfg, topo.data()["topology"]["shards"], "api_post")
        if o["suite"] == "sharding":
            text = render_sharding(cfg, o, heading, what, table, self.reshards, data)
        elif o["suite"] == "caching":
            text = render_caching(cfg, o, what, table)
        elif o["suite"] == "querycache":
            text = render_querycache(cfg, o, what, table)
        elif o["suite"] == "fastpath":
            text = render_fastpath(cfg, o, what, table)
        elif o["suite"] == "readmodel":
            text = render_readmodel(cfg, o, what, table)
        elif o["suite"] == "cachenodes":
            text = render_cachenodes(cfg, o, what, table)
        elif o["suite"] == "ratelimit":
            text = render_ratelimit(cfg, o, what, table)
        elif o["suite"] == "lbl1":
            moves = hashmoves.measure(cfg, topo)
            self.stdout.write(f"  scale-out under `header`: {moves}")
            text = render_noted(cfg, o, what, table, NOTES["lbl1"] + " " + moves_sentence(moves))
        elif o["suite"] in NOTES:
            text = render_noted(cfg, o, what, table, NOTES[o["suite"]])
        else:
            text = render(cfg, o, heading, what, table)
        self.stdout.write(text)
        if not o["no_write"]:
            write_doc_block(f"bench-{o['suite']}", text, heading)
            self.stdout.write(f"written to {BENCHMARKS_DOC}")

    def spike(self, cfg, runs: RunClient, topo: TopologyClient, o: dict, heading: str, what: str) -> None:
        try:
            table, budget = spike.run(runs, topo, o, self.stdout.write, cfg.api_url + "/healthz")
        except (RunError, TopologyError) as exc:
            raise CommandError(str(exc)) from None
        text = spike.render(_preamble(cfg, o, what)[:2], table, budget, _provenance(table))
        self.stdout.write(text)
        if not o["no_write"]:
            write_doc_block(f"bench-{o['suite']}", text, heading)
            self.stdout.write(f"written to {BENCHMARKS_DOC}")

    def flood(self, cfg, runs: RunClient, topo: TopologyClient, o: dict, heading: str, what: str) -> None:
        try:
            result = floodbench.run(runs, topo, o, self.stdout.write, cfg.api_url)
        except (RunError, TopologyError) as exc:
            raise CommandError(str(exc)) from None
        table = result["table"]
        text = floodbench.render(_preamble(cfg, o, what)[:2], result, _provenance(table))
        self.stdout.write(text)
        if not o["no_write"]:
            write_doc_block(f"bench-{o['suite']}", text, heading)
            self.stdout.write(f"written to {BENCHMARKS_DOC}")

    def place(self, topo: TopologyClient, placement: dict) -> None:
        """Reshard to `placement` if the data is not there yet (in-process, as `manage.py reshard`
        does), record it, and wait until the controller runs what the new topology asks for."""
        current = topo.data()["topology"]
        strategy, count = placement.get("sharding", current["sharding"]), placement.get("shards", current["shards"])
        if (current["sharding"], current["shards"]) == (strategy, count):
            return
        job = reshard.Resharder().start(count, strategy)
        topo.settled()
        same = (job.before.get("users_sum"), job.before.get("posts_sum")) == \
            (job.after.get("users_sum"), job.after.get("posts_sum"))
        record = {"job": job.id, "from": f"{job.from_strategy} x {job.from_shards}",
                  "to": f"{job.to_strategy} x {job.to_shards}", "users": job.users_total,
                  "users_moved": job.users_moved, "posts_moved": job.posts_moved,
                  "fraction": job.users_moved / job.users_total if job.users_total else 0.0,
                  "seconds": job.seconds, "batches": job.batches, "checksums_equal": same}
        self.reshards.append(record)
        self.stdout.write(f"  reshard #{job.id} {record['from']} -> {record['to']}: {job.users_moved:,} of "
                          f"{job.users_total:,} users moved ({record['fraction']:.1%}), {job.posts_moved:,} posts, "
                          f"{job.seconds:.1f} s; checksums {'equal' if same else 'DIFFER'}")


def shard_rows(cfg, count: int, table: str = "api_user") -> int:
    """Rows of `table` over the first `count` shards, counted on each shard's primary."""
    import psycopg
    total = 0
    for k in range(1, count + 1):
        with psycopg.connect(cfg.shard_url(k), connect_timeout=5) as conn:
            total += conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return total


def _preamble(cfg, o, what, options: str = "") -> list[str]:
    """Who measured what, how, and on which machine: the opening of every suite's block."""
    m = machine()
    emu = parameters.emulation()
    return [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `python manage.py bench_topology {o['suite']} "
        f"--repeats {o['repeats']} --duration {o['duration']:g} --rate {o['rate']:g} --connections "
        f"{o['connections']}{options}` on {m['cores']} cores / {m['memory_bytes'] / 2**30:.0f} GiB ({m['platform']}); "
        f"the generator, the app servers ({cfg.app_servers} unless a case sets `app_servers`; each {cfg.app_workers} "
        f"gthread workers x {cfg.app_threads} threads), Caddy (round-robin unless a case sets `lb_policy`), and every "
        f"PostgreSQL node share the machine. Workload: {what}."
        + ("" if o["suite"] in ("caching", "fastpath", "cachenodes", "ratelimit", "lbl1") else " No cache."),
        "",
        f"Medians of {o['repeats']} interleaved repetitions. Throughput: closed loop, {o['connections']} "
        f"connections. Latency: open model at {o['rate']:g} req/s, timed from the intended send. Emulation, where "
        f"on, injects the round trip before every data-node query and lets each node run "
        f"{emu['node_concurrency']} queries at once (parameters and sources: workbench/parameters.toml). Per-node "
        "figures are shared-CPU figures: every node runs on the same 2 cores.",
        "",
    ]


def render_caching(cfg, o, what, table) -> str:
    """Each cache-aside case (with and without the L1) against cache off at the same emulation, in
    the same repetitions."""
    lines = _preamble(cfg, o, what) + [
        "| case | throughput (req/s) | vs cache off, same emulation | p50 (ms) | p95 (ms) | p95 vs cache off | "
        "CPU, closed run | runs valid |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, row in table.items():
        off = table[f"cache off, {_emulation_of(label)}"]
        lines.append(f"| {label} | {_versus(row, off)} | {_cpu_cell(row)} | {sum(row['valid'])}/{len(row['valid'])} |")
    lines += ["", f"(*) CPU saturated (mean >= {CPU_SATURATED:g}% of both cores) in the closed run: the shared CPU "
              "set that throughput, not the emulated database (DESIGN.md section 5).",
              *_provenance(table)]
    return "\n".join(lines)


FAST_PATH_TARGET = 0.60  # cached GET throughput as a share of the bare view's (issue 6)
FULL_PATH_TARGET = 0.50  # the same with the whole gateway on (issue 8)


def render_fastpath(cfg, o, what, table) -> str:
    """Each case's throughput as a share of the bare view's, what X-Cache said, and the mean of each
    Server-Timing part in the closed runs (ms per response; `app` is the whole time in the app)."""
    bare = table[next(iter(table))]
    bare_thr = _median(bare["thr"])
    parts = ("app", "gateway", "cache", "db", "render")
    lines = _preamble(cfg, o, what) + [
        f"Targets: a cached GET at least {FAST_PATH_TARGET:.0%} of the bare view's throughput, both through Caddy; "
        f"with the whole gateway on (a token verified on every request, the rate limiter on), at least "
        f"{FULL_PATH_TARGET:.0%}. There is no `/metrics` yet (the observability issue), so its cost is not in this row.",
        "",
        "| case | throughput (req/s) | vs bare view | p50 (ms) | p95 (ms) | X-Cache (closed runs) | "
        + " | ".join(f"{p} (ms)" for p in parts) + " | CPU, closed run | runs valid |",
        "|---|---|---|---|---|---|" + "---|" * len(parts) + "---|---|",
    ]
    for label, row in table.items():
        thr, p50, p95 = _median(row["thr"]), _median(row["p50"]), _median(row["p95"])
        shares = _shares(_said(row, "X-Cache"))
        timing = [_median([s.get("server_timing_ms", {}).get(p, 0.0) for s in row["closed"]]) for p in parts]
        ratio = thr / bare_thr if thr and bare_thr else None
        verdict = ""
        if ratio is not None and label.startswith("GET") and "cache-aside" in label:
            target = FULL_PATH_TARGET if label == FULL_GATEWAY else FAST_PATH_TARGET
            verdict = " (met)" if ratio >= target else " (missed)"
        cpu = _median(row["cpu"])
        lines.append(f"| {label} | {thr or 0:,.0f} | {f'{ratio:.2f}x' if ratio else '-'}{verdict} | {p50 or 0:.2f} | "
                     f"{p95 or 0:.2f} | {shares} | " + " | ".join(f"{t or 0:.2f}" for t in timing)
                     + f" | {cpu or 0:.0f}% | {sum(row['valid'])}/{len(row['valid'])} |")
    lines += ["", "Server-Timing parts are means over every response of the closed runs (a part a response did "
              "not touch counts as 0). What `app` has beyond the other parts is Python in the view: the "
              "framework, routing and, on a miss, the serializer. The bare view sends no X-Cache part of its own "
              "beyond the gateway's `off`/`bypass`.",
              *_provenance(table)]
    return "\n".join(lines)


def readmodel_ready(timeout: float = 600.0) -> None:
    """After switching `read_model` on: wait for the relay's full rebuild, then reset the staleness
    samples so the case's figures are its own."""
    from api import readmodel
    from api.state import state_client
    client = state_client()
    deadline = time.monotonic() + timeout
    while not client.exists(readmodel.BUILT):
        if time.monotonic() > deadline:
            raise CommandError(f"the relay did not rebuild the read model within {timeout:.0f} s; see logs/relay.log")
        time.sleep(0.5)
    client.delete(readmodel.STALENESS)


def readmodel_status() -> dict:
    """What GET /api/v1/admin/readmodel says right after a run: staleness over the run's document
    updates, the outbox left, the documents."""
    from api import readmodel
    return readmodel.status()


def render_readmodel(cfg, o, what, table) -> str:
    """The read model against the SQL path, in the same repetitions, with what X-Read-Model said and
    the staleness the admin endpoint measured over each on-run's document updates."""
    lines = _preamble(cfg, o, what) + [
        "| case | throughput (req/s) | vs SQL path | p50 (ms) | p95 (ms) | p95 vs SQL path | X-Read-Model (closed "
        "runs) | staleness p50 / p95 / max (ms) | outbox left after the run | CPU, closed run | runs valid |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = table[next(iter(table))]
    for label, row in table.items():
        stale = "-"
        left = "-"
        if "read_model on" in label and row.get("readmodel"):
            figures = [r["staleness_ms"] for r in row["readmodel"]]
            stale = " / ".join(f"{_median([f[k] for f in figures if f[k] is not None]) or 0:,.1f}"
                               for k in ("p50", "p95", "max"))
            left = f"{_median([r['outbox']['pending'] for r in row['readmodel']]) or 0:,.0f}"
        lines.append(f"| {label} | {_versus(row, base)} | {_shares(_said(row, 'X-Read-Model'))} | {stale} | {left} | "
                     f"{_cpu_cell(row)} | {sum(row['valid'])}/{len(row['valid'])} |")
    lines += ["", "Staleness is the time from a write's commit (its outbox row's `clock_timestamp()`) to the relay's "
              "write of the document that shows it, over every document update of the repetition's closed and open "
              "runs (the admin endpoint's samples, reset before each on-case). Switching `read_model` on makes the "
              "relay rebuild every document first; the suite waits for that before measuring.",
              f"(*) CPU saturated (mean >= {CPU_SATURATED:g}% of both cores) in the closed run.",
              *_provenance(table)]
    return "\n".join(lines)


NODE_LOST = "cache_nodes=3, one node SIGKILLed mid-run"
LOST_NODE = "valkey-cache-2"


def node_lost_pair(cfg, runs: RunClient, workload: dict, o: dict, label: str) -> tuple[dict, dict]:
    """The closed and the open run of the node-loss case: each SIGKILLs LOST_NODE 40% into the run
    (once the controller has it healthy again after the previous kill)."""
    closed = _with_node_lost(cfg, runs, {**workload, "mode": "closed", "connections": o["connections"],
                                         "duration_s": o["duration"]}, f"{label} closed", o["duration"])
    opened = _with_node_lost(cfg, runs, {**workload, "mode": "open", "rate": o["rate"], "duration_s": o["duration"]},
                             f"{label} open", o["duration"])
    return closed, opened


def _with_node_lost(cfg, runs: RunClient, workload: dict, label: str, duration: float) -> dict:
    import os
    import signal

    from workbench.stack import launcher
    deadline = time.monotonic() + 60
    while not (node := _process(launcher.status(cfg), LOST_NODE)) or not node["healthy"]:
        if time.monotonic() > deadline:
            raise CommandError(f"{LOST_NODE} is not running healthy (is cache_nodes 3?)")
        time.sleep(0.2)
    run_id = runs.start(workload, label)
    time.sleep(0.5 + 0.4 * duration)  # the run's process starts, then 40% of its duration
    os.kill(node["pid"], signal.SIGKILL)
    return runs.wait(run_id)


def _process(status: dict | None, name: str) -> dict | None:
    return next((p for p in (status or {}).get("processes", []) if p["name"] == name), None)


def render_cachenodes(cfg, o, what, table) -> str:
    """1 node vs 3 in the same repetitions, with what X-Cache said and the errors of each case."""
    lines = _preamble(cfg, o, what) + [
        "| case | throughput (req/s) | vs cache_nodes=1 | p50 (ms) | p95 (ms) | p95 vs cache_nodes=1 | "
        "X-Cache (closed runs) | errors / requests | CPU, closed run | runs valid |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = table[next(iter(table))]
    for label, row in table.items():
        lines.append(f"| {label} | {_versus(row, base)} | {_shares(_said(row, 'X-Cache'))} | "
                     f"{sum(row['errors']):,} / {sum(row['requests']):,} | {_cpu_cell(row)} | "
                     f"{sum(row['valid'])}/{len(row['valid'])} |")
    lines += ["", "With a node lost, the reads of its slots say X-Cache `down` (served from the database) until "
              "the controller has restarted it and each app worker's breaker for that node has closed again "
              "(api/caching/valkey.py); the restarted node is empty, so its slots then miss and refill. "
              "The cluster's nodes share the same 2 cores as everything else (shared-CPU figures).",
              f"(*) CPU saturated (mean >= {CPU_SATURATED:g}% of both cores) in the closed run.",
              *_provenance(table)]
    return "\n".join(lines)


def render_ratelimit(cfg, o, what, table) -> str:
    """Each limiter-on case against off in the same repetitions: the open-model p50 it adds (the
    target), and the `gateway` Server-Timing part (where the limiter's round trip is spent) it adds."""
    base = table[next(iter(table))]
    base_p50 = _median(base["p50"])
    base_gateway = _median([s.get("server_timing_ms", {}).get("gateway", 0.0) for s in base["closed"]])
    lines = _preamble(cfg, o, what) + [
        f"Target: the limiter adds under {LIMITER_TARGET_MS:g} ms to the p50 (open model, through Caddy).",
        "",
        "| case | throughput (req/s) | vs limiter off | p50 (ms) | p95 (ms) | p95 vs off | p50 added (ms) | "
        "gateway part (ms) | gateway added (ms) | X-RateLimit-Status (closed runs) | errors / requests | "
        "CPU, closed run | runs valid |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in table.items():
        p50 = _median(row["p50"])
        gateway = _median([s.get("server_timing_ms", {}).get("gateway", 0.0) for s in row["closed"]])
        added = added_gateway = "-"
        if row is not base and p50 is not None and base_p50 is not None:
            added = f"{p50 - base_p50:+.3f}" + (" (met)" if p50 - base_p50 < LIMITER_TARGET_MS else " (missed)")
        if row is not base and gateway is not None and base_gateway is not None:
            added_gateway = f"{gateway - base_gateway:+.3f}"
        lines.append(f"| {label} | {_versus(row, base)} | {added} | {gateway or 0:.3f} | {added_gateway} | "
                     f"{_shares(_said(row, 'X-RateLimit-Status'))} | {sum(row['errors']):,} / "
                     f"{sum(row['requests']):,} | {_cpu_cell(row)} | {sum(row['valid'])}/{len(row['valid'])} |")
    lines += ["", "p50 added: the case's median open-model p50 minus the limiter-off row's, both medians of the same "
              "interleaved repetitions. Gateway part: the mean `gateway` Server-Timing part over every response of "
              "the closed runs (the in-process gateway, the limiter's one Valkey round trip included). A refused "
              "request would count as an error; the rules are set so that none is.",
              f"(*) CPU saturated (mean >= {CPU_SATURATED:g}% of both cores) in the closed run.",
              *_provenance(table)]
    return "\n".join(lines)


NOTES = {
    "observability": f"Target: metrics plus tracing at the default sampling rate ({parameters.tracing()['sample_rate']:g}, "
                     "committed in workbench/parameters.toml before this was measured) cost under 10% of the "
                     "throughput of the first row. The last row shows what tracing every request would cost: "
                     "each traced request builds its spans and writes one document to the state Valkey.",
    "caddy": "Caddy's overhead is the difference between the two rows: the same app server, the same runs "
             "interleaved. Caddy shares the 2 cores with the app server and the load generator, so its CPU "
             "comes out of the app server's throughput too.",
    "appservers": "Every app server shares the same 2 cores with PostgreSQL, Valkey, Caddy and the load "
                  "generator, so more servers add processes, not CPU: throughput flattens once the cores are "
                  "saturated (CPU column), and beyond that more processes add context switches and memory. On "
                  "separate machines each server brings its own cores; the capacity model carries that.",
    "lbpolicy": "Round-robin gives each server the same number of requests whatever they cost, so a point "
                "read can queue behind a search on a busy worker; least connections sends it to the server "
                "with fewer requests in flight (Caddy's count per upstream).",
    "lbl1": "X-Cache `hit-l1` is a hit in the answering worker's own memory. Round-robin and least "
            "connections spread each user over all 4 workers, so each L1 holds every hot user and misses "
            "more; `header` (X-User-Id) and `uri` send a user to one server (rendezvous hashing), whose 2 "
            "workers share its hot users.",
}


def moves_sentence(m: dict) -> str:
    return (f"Adding a server under `header` ({m['servers_before']} -> {m['servers_after']} app servers, "
            f"workbench/loadgen/hashmoves.py): {m['moved']:,} of {m['users']:,} users moved "
            f"({m['fraction']:.1%}; rendezvous hashing predicts 1/{m['servers_after']} = {m['expected']:.1%}, "
            f"a modulo hash about {1 - m['expected']:.0%}), {m['moved_to_new']:,} of them to the new server.")


def render_noted(cfg, o, what, table, note: str) -> str:
    """A load-balancing suite: each case against the first, with where the requests went (X-App-Server)
    and what the cache said (X-Cache), errors, and CPU."""
    lines = _preamble(cfg, o, what) + [
        "| case | throughput (req/s) | vs first row | p50 (ms) | p95 (ms) | p95 vs first row | "
        "X-App-Server (closed runs) | X-Cache (closed runs) | errors / requests | CPU, closed run | runs valid |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = table[next(iter(table))]
    for label, row in table.items():
        lines.append(f"| {label} | {_versus(row, base)} | {_shares(_said(row, 'X-App-Server'))} | "
                     f"{_shares(_said(row, 'X-Cache'))} | {sum(row['errors']):,} / {sum(row['requests']):,} | "
                     f"{_cpu_cell(row)} | {sum(row['valid'])}/{len(row['valid'])} |")
    lines += ["", note, f"(*) CPU saturated (mean >= {CPU_SATURATED:g}% of both cores) in the closed run.",
              *_provenance(table)]
    return "\n".join(lines)


def _provenance(table: dict) -> list[str]:
    """The closing lines of every suite's block: the software measured and the runs behind each row."""
    return ["", "Software: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
            "Run ids (in the data dir's `results/`): " + json.dumps({k: v["runs"] for k, v in table.items()})]


def _versus(row: dict, base: dict) -> str:
    """The cells `throughput | vs base | p50 | p95 | p95 vs base` of a row against its base row."""
    thr, p50, p95 = _median(row["thr"]), _median(row["p50"]), _median(row["p95"])
    thr_base, p95_base = _median(base["thr"]), _median(base["p95"])
    return (f"{thr or 0:,.0f} | {f'{thr / thr_base:.2f}x' if thr and thr_base else '-'} | {p50 or 0:.2f} | "
            f"{p95 or 0:.2f} | {f'{p95 / p95_base:.2f}x' if p95 and p95_base else '-'}")


def _cpu_cell(row: dict) -> str:
    cpu = _median(row["cpu"])
    return f"{cpu or 0:.0f}%{' (*)' if cpu and cpu >= CPU_SATURATED else ''}"


def _said(row: dict, header: str) -> collections.Counter:
    """How often `header` had each value over the row's closed runs (the load generator's attribution)."""
    counts = collections.Counter()
    for summary in row.get("closed", []):
        counts.update(summary.get("attribution", {}).get(header, {}))
    return counts


def _shares(counts: collections.Counter) -> str:
    """`hit 81%, miss 14%, bypass 5%`."""
    total = sum(counts.values())
    return ", ".join(f"{k} {v / total:.0%}" for k, v in counts.most_common()) if total else "-"


def render_querycache(cfg, o, what, table) -> str:
    """Each query-cache-on case against off at the same emulation, in the same repetitions, with
    what X-Query-Cache and X-DB-Node said (a hit reads no node: `none`)."""
    lines = _preamble(cfg, o, what)
    lines[0] = lines[0].removesuffix(" No cache.")
    lines += [
        "| case | throughput (req/s) | vs query cache off, same emulation | p50 (ms) | p95 (ms) | p95 vs off | "
        "X-Query-Cache (closed runs) | answered by no DB node | CPU, closed run | runs valid |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in table.items():
        off = table[label.replace("query cache on", "query cache off")]
        nodes = _said(row, "X-DB-Node")
        no_node = f"{nodes['none'] / sum(nodes.values()):.0%}" if nodes else "-"
        lines.append(f"| {label} | {_versus(row, off)} | {_shares(_said(row, 'X-Query-Cache'))} | {no_node} | "
                     f"{_cpu_cell(row)} | {sum(row['valid'])}/{len(row['valid'])} |")
    lines += ["", f"(*) CPU saturated (mean >= {CPU_SATURATED:g}% of both cores) in the closed run: the shared CPU "
              "set that throughput, not the emulated database (DESIGN.md section 5).",
              "", "A hit saves the database round trips of a read (two for a posts page: the user's existence "
              "and the page), not the serializer; writes bump the written user's generations only "
              "(api/caching/querycache.py), so a write invalidates that user's entries and no one else's.",
              *_provenance(table)]
    return "\n".join(lines)


def render(cfg, o, heading, what, table) -> str:
    base = table[next(iter(table))]
    base_thr, base_p50 = _median(base["thr"]), _median(base["p50"])
    lines = _preamble(cfg, o, what) + [
        "| case | throughput (req/s) | vs first row | p50 (ms) | p95 (ms) | p50 vs first row | runs valid |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in table.items():
        thr, p50, p95 = _median(row["thr"]), _median(row["p50"]), _median(row["p95"])
        ratio = f"{thr / base_thr:.2f}x" if thr and base_thr else "-"
        p50_ratio = f"{p50 / base_p50:.2f}x" if p50 and base_p50 else "-"
        lines.append(f"| {label} | {thr or 0:,.0f} | {ratio} | {p50 or 0:.2f} | {p95 or 0:.2f} | {p50_ratio} | "
                     f"{sum(row['valid'])}/{len(row['valid'])} |")
    lines += _provenance(table)
    return "\n".join(lines)


def _emulation_of(label: str) -> str:
    return label.split(", ", 1)[1]


def render_sharding(cfg, o, heading, what, table, reshards: list[dict], data: dict) -> str:
    """The sharding table: each shard count against one shard under the same emulation, where the
    writes went (X-DB-Node), how busy the machine was, and every reshard the suite ran."""
    one = {_emulation_of(label): row for label, row in table.items() if label.startswith("shards=1,")}
    lines = _preamble(cfg, o, what, f" --strategy {o['strategy']}") + [
        f"Data: {data['users']:,} users at the start (the default `up` seed), growing by the posts the runs write "
        f"({data['posts_end']:,} posts at the end). Each shard count is reached by an online reshard (in-process, "
        "what `manage.py reshard` runs), with the API idle; the suite interleaves 1, 2 and 4 shards within each "
        "repetition and reshards back at the end.",
        "",
        "| case | throughput (req/s) | vs 1 shard, same emulation | p50 (ms) | p95 (ms) | p95 vs 1 shard | "
        "writes by shard (closed run) | CPU, closed run | errors | runs valid |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = set()
    for label, row in table.items():
        base = one.get(_emulation_of(label)) or row
        thr, p50, p95 = _median(row["thr"]), _median(row["p50"]), _median(row["p95"])
        b_thr, b_p95 = _median(base["thr"]), _median(base["p95"])
        count = int(label.split(",", 1)[0].split("=")[1])
        shares = {k: _median([s.get(k, 0.0) for s in row["shares"]]) for k in range(1, count + 1)}
        spread = " / ".join(f"{shares[k]:.0%}" for k in sorted(shares))
        if count > 1 and min(shares.values()) < 0.5 / count:
            spread += " (†)"
            notes.add("†")
        cpu = _median(row["cpu"])
        cpu_text = "-" if cpu is None else f"{cpu:.0f}%"
        if cpu is not None and cpu >= CPU_SATURATED and "emulation on" in label:
            cpu_text += " (*)"
            notes.add("*")
        errors = f"{sum(row['errors']):,} of {sum(row['requests']):,}"
        if sum(row["errors"]):
            errors += " (‡)"
            notes.add("‡")
        lines.append(f"| {label} | {thr or 0:,.0f} | {f'{thr / b_thr:.2f}x' if thr and b_thr else '-'} | "
                     f"{p50 or 0:.2f} | {p95 or 0:.2f} | {f'{p95 / b_p95:.2f}x' if p95 and b_p95 else '-'} | "
                     f"{spread} | {cpu_text} | {errors} | {sum(row['valid'])}/{len(row['valid'])} |")
    if "*" in notes:
        lines += ["", f"(*) The machine's CPU was saturated (mean >= {CPU_SATURATED:g}% of both cores) during the "
                  "closed run: the shared CPU, not the emulated nodes' limits, set that throughput, so it does not "
                  "stand for separate machines (DESIGN.md section 5). The open-model latency at the lower rate is "
                  "the emulated figure."]
    if "†" in notes:
        lines += ["", "(†) The writes did not reach every shard (a shard answered under half its even share, by "
                  "the runs' `X-DB-Node`): this row does not measure the shards it names. Not a sharding result."]
    if "‡" in notes:
        lines += ["", "(‡) Some requests failed (the runs' JSON lists them by kind); throughput counts successes "
                  "only."]
    lines += ["", "Reshards run by the suite (users moved is the share that changed shard; the duration includes "
              "the controller starting new shard primaries):", "",
              "| # | from | to | users | users moved | posts moved | duration (s) | batches | checksums before = after |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in reshards:
        lines.append(f"| {r['job']} | {r['from']} | {r['to']} | {r['users']:,} | {r['users_moved']:,} "
                     f"({r['fraction']:.1%}) | {r['posts_moved']:,} | {r['seconds'] or 0:.1f} | {r['batches']} | "
                     f"{'yes' if r['checksums_equal'] else 'NO'} |")
    lines += _provenance(table)
    return "\n".join(lines)
