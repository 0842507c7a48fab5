"""A discrete-event simulation of one tier: c servers, a FIFO queue, arrivals from a rate schedule.

It checks the closed-form M/M/c model in a steady state (same assumptions: Poisson arrivals,
exponential service), and goes where the formulas cannot: a rate that changes over time (a 10x
spike), a bounded queue that sheds what does not fit. Seeded, so a run can be repeated exactly.
"""
from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field


@dataclass
class Result:
    latencies: list = field(default_factory=list)   # (arrival time, response time) of served requests
    shed: list = field(default_factory=list)        # arrival times of requests turned away
    busy_time: float = 0.0
    horizon: float = 0.0
    servers: int = 1

    def percentile(self, q: float, after: float = 0.0) -> float:
        values = sorted(t for at, t in self.latencies if at >= after)
        if not values:
            return math.nan
        return values[min(len(values) - 1, int(q * len(values)))]

    @property
    def utilisation(self) -> float:
        return self.busy_time / (self.horizon * self.servers) if self.horizon else 0.0


def run(rate, mu: float, c: int, horizon_s: float, *, queue_limit: int | None = None, seed: int = 1,
        max_events: int = 5_000_000) -> Result:
    """Simulate `horizon_s` seconds. `rate` is requests per second, a number or a function of the
    time (a schedule); arrivals follow a non-homogeneous Poisson process (thinning). Bounded in
    events, so a mistaken input cannot run away."""
    rng = random.Random(seed)
    rate_at = rate if callable(rate) else (lambda _t, r=float(rate): r)
    peak = max(rate_at(horizon_s * k / 1000) for k in range(1001))  # a bound for thinning
    result = Result(horizon=horizon_s, servers=c)
    free_at = [0.0] * c            # when each server next becomes free (a heap)
    heapq.heapify(free_at)
    waiting_until: list[float] = []  # start times of requests still queued, to apply queue_limit
    t, events = 0.0, 0
    while events < max_events:
        t += rng.expovariate(peak)
        if t >= horizon_s:
            break
        events += 1
        if rng.random() > rate_at(t) / peak:
            continue  # thinned away: the rate is lower than the peak now
        while waiting_until and waiting_until[0] <= t:
            heapq.heappop(waiting_until)
        if queue_limit is not None and len(waiting_until) >= queue_limit and free_at[0] > t:
            result.shed.append(t)
            continue
        start = max(t, heapq.heappop(free_at))
        service = rng.expovariate(mu)
        heapq.heappush(free_at, start + service)
        if start > t:
            heapq.heappush(waiting_until, start)
        result.busy_time += service
        result.latencies.append((t, start - t + service))
    return result


# --- a fleet under a spike: autoscaling with a delay, rate limiting, shedding ----------------------
@dataclass
class Fleet:
    """One cell of a fleet (a load balancer's share: the whole fleet is many such cells, and a big
    fleet queues less than a small one, so a cell's percentiles are on the pessimistic side)."""
    rate: float = 1000.0              # requests per second into the cell, normally
    spike: float = 10.0               # the spike multiplies the rate ...
    spike_at_s: float = 20.0          # ... from here ...
    spike_for_s: float = 60.0         # ... for this long
    horizon_s: float = 120.0
    service_ms: float = 4.7           # CPU per request on one core (exponential)
    cores_per_node: int = 16
    nodes: int = 1                    # running at the start
    max_nodes: int = 20
    target_util: float = 0.7          # the autoscaler adds nodes to bring utilisation back to this
    scale_every_s: float = 5.0        # how often it looks (over the last interval)
    boot_s: float = 60.0              # from its decision to a new node taking requests
    rate_limit: float | None = None   # a token bucket at the edge: refill per second (burst: 1 s of it)
    shed_ms: float | None = 50.0      # a request that waited longer than this when a core takes it is shed
    seed: int = 1
    max_events: int = 3_000_000


def run_fleet(f: Fleet) -> dict:
    """Seconds of the run, each with arrivals, served, limited (429), shed (503), p50/p95/p99 of the
    served (by arrival second) and the nodes running; totals at the end."""
    import collections
    rng = random.Random(f.seed)
    mu = 1000.0 / f.service_ms

    def rate_at(t):
        return f.rate * (f.spike if f.spike_at_s <= t < f.spike_at_s + f.spike_for_s else 1.0)

    peak = max(f.rate, f.rate * f.spike)
    seconds = collections.defaultdict(lambda: {"arrived": 0, "served": 0, "limited": 0, "shed": 0, "lat": []})
    queue: collections.deque = collections.deque()
    done: list[float] = []             # completion times of busy cores (heap)
    cores = f.nodes * f.cores_per_node
    booting: list[float] = []          # when each ordered node starts taking requests
    nodes_at: dict[int, int] = {}
    tokens, bucket_t = (f.rate_limit or 0.0), 0.0
    busy_time, offered, window_start, next_tick = 0.0, 0, 0.0, f.scale_every_s
    t_arrival = rng.expovariate(peak)
    events = 0

    def start(now, arrived):
        nonlocal busy_time
        service = rng.expovariate(mu)
        busy_time += service
        heapq.heappush(done, now + service)
        s = seconds[int(arrived)]
        s["served"] += 1
        s["lat"].append((now - arrived + service) * 1000)

    def dispatch(now):
        while queue and len(done) < cores:
            arrived = queue.popleft()
            if f.shed_ms is not None and (now - arrived) * 1000 > f.shed_ms:
                seconds[int(arrived)]["shed"] += 1
                continue
            start(now, arrived)

    while events < f.max_events:
        events += 1
        t_done = done[0] if done else float("inf")
        t_boot = min(booting) if booting else float("inf")
        now = min(t_arrival, t_done, t_boot, next_tick)
        if now >= f.horizon_s:
            break
        if now == t_done:
            heapq.heappop(done)
            dispatch(now)
        elif now == t_boot:
            booting.remove(t_boot)
            cores += f.cores_per_node
            dispatch(now)
        elif now == next_tick:
            # The autoscaler, on the offered load of the last interval (arrivals x mean service, like
            # scaling on requests per target): CPU use would stop at 100% and hide how far over it is.
            util = offered / mu / max(cores * (now - window_start), 1e-9)
            running = cores // f.cores_per_node
            want = min(f.max_nodes, max(1, math.ceil(running * util / f.target_util)))
            for _ in range(max(0, want - running - len(booting))):
                booting.append(now + f.boot_s)
            offered, window_start = 0, now
            nodes_at[int(now)] = running
            next_tick += f.scale_every_s
        else:
            t_arrival_now = now
            t_arrival = now + rng.expovariate(peak)
            if rng.random() > rate_at(t_arrival_now) / peak:
                continue  # thinned away
            s = seconds[int(now)]
            s["arrived"] += 1
            offered += 1
            if f.rate_limit is not None:
                tokens = min(f.rate_limit, tokens + (now - bucket_t) * f.rate_limit)
                bucket_t = now
                if tokens < 1:
                    s["limited"] += 1
                    continue
                tokens -= 1
            queue.append(now)
            dispatch(now)
    rows = []
    running = f.nodes
    for sec in range(int(f.horizon_s)):
        running = nodes_at.get(sec, running)
        s = seconds.get(sec, {"arrived": 0, "served": 0, "limited": 0, "shed": 0, "lat": []})
        lat = sorted(s["lat"])
        pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)) if lat else (lambda q: None)
        rows.append({"t": sec, "arrived": s["arrived"], "served": s["served"], "limited": s["limited"],
                     "shed": s["shed"], "p50_ms": pick(0.5), "p95_ms": pick(0.95), "p99_ms": pick(0.99),
                     "nodes": running})
    total = {k: sum(r[k] for r in rows) for k in ("arrived", "served", "limited", "shed")}
    every = sorted(x for s in seconds.values() for x in s["lat"])
    total["dropped_share"] = round((total["limited"] + total["shed"]) / total["arrived"], 4) if total["arrived"] else 0
    total["p95_ms"] = round(every[int(0.95 * (len(every) - 1))], 2) if every else None
    total["events"] = events
    return {"seconds": rows, "total": total}
