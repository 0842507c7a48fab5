"""The model of this machine, for the validation: what one stack on these shared cores should do.

Here every process (the generator, Caddy, the app servers, PostgreSQL, Valkey, and whatever else
runs on the machine) takes its CPU from the same few cores, so the bottleneck is the cores, not any
one tier. The calibration (two rates of the same mix, CPU sampled per tier) gives the cores each
request costs, all tiers together (s, the slope of a fit over rates, with its bootstrap spread) and
the cores taken whatever the rate (fixed: timers, the controller's sampling, other users). So:

    the cores left for requests   c_eff = cores - fixed - background
    a request's service           s' = s x cores / c_eff   (the same saturation rate, c_eff / s,
                                                            on the machine's whole cores)
    its latency                   T = U + W

U is the latency the calibration's lowest rate measured (its HDR histogram: every fixed cost of the
path, from the intended send); W is the wait for a core in an M/G/c queue (c = cores) by the Allen-
Cunneen approximation: with probability C(c, lam s') a wait, exponential with mean
(1 + cs^2) / 2 / (c / s' - lam), cs^2 the squared coefficient of variation of U. Percentiles of T by
sampling. All of it is modelled, and is compared with measurement in validation.py.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .queueing import erlang_c

SAMPLES_PER_U = 10


@dataclass
class Machine:
    cores: int
    per_request_ms: float      # CPU per request, every tier together
    fixed_cores: float         # cores busy whatever the rate (the stack's and other users')
    unloaded_ms: list          # latency samples at a low rate
    cv2: float = 1.0

    @classmethod
    def from_calibration(cls, cal: dict, which: str = "per_request_ms") -> "Machine":
        fit = cal.get("cpu_fit")
        if not fit:
            raise ValueError("the calibration has no CPU fit over two rates (capacity --measure with two rates)")
        total = fit["total"]
        background = (fit.get("_background_cores") or {}).get("mean") or 0.0
        return cls(cores=cal["machine"]["cores"], per_request_ms=total[which],
                   fixed_cores=max(total["fixed_cores"], 0.0) + background,
                   unloaded_ms=cal["unloaded"]["samples_ms"], cv2=cal["unloaded"].get("cv2") or 1.0)

    @property
    def effective_cores(self) -> float:
        return max(self.cores - self.fixed_cores, 0.05)

    @property
    def saturation_rps(self) -> float:
        return self.effective_cores * 1000 / self.per_request_ms

    def percentile(self, rate: float, q: float = 0.95, seed: int = 3) -> float:
        """The modelled q-quantile (ms) of the latency at `rate` req/s; inf at or past saturation."""
        if rate >= self.saturation_rps:
            return float("inf")
        service_s = self.per_request_ms / 1000 * self.cores / self.effective_cores
        c = self.cores
        p_wait = erlang_c(c, rate * service_s)
        mean_wait_ms = (1 + self.cv2) / 2 / (c / service_s - rate) * 1000
        rng = random.Random(seed)
        out = []
        for u in self.unloaded_ms:
            for _ in range(SAMPLES_PER_U):
                out.append(u + (rng.expovariate(1 / mean_wait_ms) if rng.random() < p_wait else 0.0))
        out.sort()
        return out[min(len(out) - 1, int(q * len(out)))]

    def throughput_at(self, slo_ms: float, q: float = 0.95) -> float:
        """The highest rate whose modelled q-quantile stays within slo_ms (bisection)."""
        low, high = 0.0, self.saturation_rps
        if self.percentile(1e-6, q) > slo_ms:
            return 0.0
        for _ in range(40):
            mid = (low + high) / 2
            if self.percentile(mid, q) <= slo_ms:
                low = mid
            else:
                high = mid
        return low


def spread_models(cal: dict) -> tuple[Machine, Machine, Machine]:
    """The model at the calibration's mean CPU per request, and at its low and high (the spread)."""
    return (Machine.from_calibration(cal), Machine.from_calibration(cal, "low"),
            Machine.from_calibration(cal, "high"))
