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
