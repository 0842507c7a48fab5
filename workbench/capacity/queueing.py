"""M/M/c queues with Erlang C: what a tier of c identical servers does at an arrival rate.

A tier (app servers, a database node's cores) is modelled as c servers, each serving one request
at a time in an exponentially distributed time of mean 1/mu, fed by Poisson arrivals at rate lam,
first come first served. Then, with offered load a = lam / mu and utilisation rho = a / c < 1:

    Erlang C   C(c, a) = (a^c / c!) / (1 - rho) / (sum_{k<c} a^k / k! + (a^c / c!) / (1 - rho))
               the probability that an arrival has to wait;
    waiting    W = 0 with probability 1 - C, else exponential with rate theta = c mu - lam;
    response   T = W + S, S exponential with rate mu, so
               P(T > t) = (1 - C) e^{-mu t} + C (theta e^{-mu t} - mu e^{-theta t}) / (theta - mu)
               (and C (1 + mu t) e^{-mu t} in place of the last term when theta = mu).

Percentiles of T come from that survival function by bisection. Everything is in seconds and
requests per second; the callers convert to milliseconds.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass


class Unstable(ValueError):
    """rho >= 1: the queue grows without bound; no steady state exists."""


def erlang_c(c: int, a: float) -> float:
    """Probability of waiting in M/M/c with offered load a = lam / mu (a < c). Computed with the
    Erlang B recursion, which stays finite for large c where a^c / c! would overflow."""
    if c < 1:
        raise ValueError("c must be at least 1")
    if a < 0:
        raise ValueError("the offered load must be >= 0")
    if a >= c:
        raise Unstable(f"offered load {a:g} >= {c} servers")
    b = 1.0  # Erlang B with 0 servers
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1 - rho + rho * b)


@dataclass(frozen=True)
class MMc:
    lam: float   # arrivals per second
    mu: float    # completions per second per server (1 / mean service time)
    c: int       # servers

    def __post_init__(self):
        if self.lam < 0 or self.mu <= 0 or self.c < 1:
            raise ValueError("need lam >= 0, mu > 0, c >= 1")
        if self.lam >= self.c * self.mu:
            raise Unstable(f"utilisation {self.lam / (self.c * self.mu):.2f} >= 1")

    @property
    def utilisation(self) -> float:
        return self.lam / (self.c * self.mu)

    @functools.cached_property  # O(c) to compute; percentiles and sampling ask for it many times
    def p_wait(self) -> float:
        return erlang_c(self.c, self.lam / self.mu)

    @property
    def mean_wait(self) -> float:
        return self.p_wait / (self.c * self.mu - self.lam)

    @property
    def mean_response(self) -> float:
        return self.mean_wait + 1 / self.mu

    def survival(self, t: float) -> float:
        """P(response time > t)."""
        if t <= 0:
            return 1.0
        mu, theta, pw = self.mu, self.c * self.mu - self.lam, self.p_wait
        if math.isclose(theta, mu, rel_tol=1e-9):
            both = (1 + mu * t) * math.exp(-mu * t)
        else:
            both = (theta * math.exp(-mu * t) - mu * math.exp(-theta * t)) / (theta - mu)
        return (1 - pw) * math.exp(-mu * t) + pw * both

    def percentile(self, q: float) -> float:
        """The response time t with P(T <= t) = q (0 < q < 1)."""
        if not 0 < q < 1:
            raise ValueError("q must be between 0 and 1")
        low, high = 0.0, 1 / self.mu
        while self.survival(high) > 1 - q:
            high *= 2
        for _ in range(200):
            mid = (low + high) / 2
            if self.survival(mid) > 1 - q:
                low = mid
            else:
                high = mid
            if high - low < 1e-12 * max(1.0, high):
                break
        return (low + high) / 2


def servers_for(lam: float, mu: float, p95_s: float, max_servers: int = 10_000_000) -> int:
    """The fewest servers whose M/M/c p95 response time is within p95_s. Raises ValueError when even
    an idle server is too slow (its own service time's p95, ln(20)/mu, is above the target)."""
    if math.log(20) / mu > p95_s:
        raise ValueError(f"one request's own p95 service time ({math.log(20) / mu * 1000:.1f} ms) is above "
                         f"the target ({p95_s * 1000:.1f} ms): no number of servers meets it")
    def meets(c: int) -> bool:
        return MMc(lam, mu, c).percentile(0.95) <= p95_s

    low = math.floor(lam / mu) + 1  # the fewest servers that keep utilisation below 1
    if meets(low):
        return low
    step = 1
    while not meets(low + step):  # the p95 falls as servers are added: find a fleet that meets it
        low += step
        step *= 2
        if low + step > max_servers:
            raise ValueError("no fleet within max_servers meets the target")
    high = low + step
    while high - low > 1:  # then the smallest one, by bisection
        mid = (low + high) // 2
        if meets(mid):
            high = mid
        else:
            low = mid
    return high
