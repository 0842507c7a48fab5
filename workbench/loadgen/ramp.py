"""Find the capacity C: the highest open-model rate whose p95 stays under the SLO, with no errors
and a valid run. Doubles until a step fails, then bisects between the last pass and first fail."""
from __future__ import annotations

from .client import RunClient


def step_passes(result: dict, slo_p95_ms: float) -> bool:
    s = result["summary"]
    return (s["valid"] and s["error_count"] == 0 and s["dropped"] == 0 and s["latency"]["p95_ms"] is not None
            and s["latency"]["p95_ms"] < slo_p95_ms)


def find_capacity(client: RunClient, workload: dict, *, slo_p95_ms: float = 100.0, start: float = 50.0,
                  max_rate: float = 20_000.0, step_s: float = 5.0, bisect_steps: int = 3, label: str = "ramp",
                  on_step=None) -> dict:
    steps = []

    def trial(rate: float) -> bool:
        result = client.run({**workload, "mode": "open", "rate": round(rate, 1), "duration_s": step_s},
                            f"{label} {rate:.0f}/s")
        passed = step_passes(result, slo_p95_ms)
        s = result["summary"]
        steps.append({"rate": round(rate, 1), "run": result["id"], "passed": passed, "valid": s["valid"],
                      "p95_ms": s["latency"]["p95_ms"], "errors": s["error_count"],
                      "achieved_rps": s["achieved_rps"]})
        if on_step:
            on_step(steps[-1])
        return passed

    good, bad = 0.0, None
    rate = start
    while rate <= max_rate:
        if trial(rate):
            good, rate = rate, rate * 2
        else:
            bad = rate
            break
    if bad is not None and good > 0:
        for _ in range(bisect_steps):
            mid = (good + bad) / 2
            if trial(mid):
                good = mid
            else:
                bad = mid
    return {"capacity_rps": good, "first_failing_rps": bad, "slo_p95_ms": slo_p95_ms, "steps": steps}
