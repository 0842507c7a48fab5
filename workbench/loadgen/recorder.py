"""What a run measured: HDR histograms (whole run and per second), counts, attribution, and the
generator's own lag. Recorders from several processes merge into one."""
from __future__ import annotations

import collections
import math

from hdrh.histogram import HdrHistogram

# Latencies in microseconds, from 1 us to 120 s, 3 significant digits.
LOWEST_US, HIGHEST_US, DIGITS = 1, 120_000_000, 3
LATE_US = 1000              # a send that left more than 1 ms after its intended time is "late"
MAX_LATE_SHARE = 0.01       # more than 1% late sends make the run invalid
MAX_FAILURE_TIMES = 20_000  # failure times kept per run (fault runs want the first and last)
# Response headers a request is attributed by, whichever the stack sends (DESIGN.md section 2).
ATTRIBUTION_HEADERS = ("X-App-Server", "X-DB-Node", "X-Cache", "X-Query-Cache", "X-Write-Behind", "X-Read-Model",
                       "X-RateLimit-Status", "X-Shed")
# Headers whose value varies per response (`X-Shed: queue-time=412ms`): attributed by the name before `=`.
ATTRIBUTE_BY_NAME = {"X-Shed"}


def server_timing(header: str) -> dict[str, float]:
    """`app;dur=1.20, cache;dur=0.31` -> {"app": 1.2, "cache": 0.31}; parts without a duration are left out."""
    parts = {}
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur" and name:
                try:
                    parts[name] = parts.get(name, 0.0) + float(value)
                except ValueError:
                    pass
    return parts


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


class Second:
    __slots__ = ("sent", "ok", "errors", "histogram")

    def __init__(self):
        self.sent = 0
        self.ok = 0
        self.errors = collections.Counter()
        self.histogram = new_histogram()


class Recorder:
    def __init__(self):
        self.histogram = new_histogram()      # latency from the intended send time
        self.service = new_histogram()        # latency from the actual send time (what closed loops see)
        self.lag = new_histogram()            # actual send - intended send
        self.admitted = new_histogram()       # latency of the successes only (what a shed spike leaves served)
        self.seconds: dict[int, Second] = collections.defaultdict(Second)
        self.scheduled = 0
        self.sent = 0
        self.ok = 0
        self.errors = collections.Counter()   # "503", "timeout", "connect", ...
        self.dropped = 0                      # sent, but no answer before the run's hard stop
        self.late = 0
        self.by_kind = collections.Counter()
        self.attribution = {h: collections.Counter() for h in ATTRIBUTION_HEADERS}
        self.timing_ms: collections.Counter = collections.Counter()  # Server-Timing part -> total ms
        self.timed = 0                                               # responses that carried Server-Timing
        # For fault runs (workbench/loadgen/faults.py): when each failure happened (seconds from the
        # start, bounded), failures per request kind, and the ledger of acknowledged creates: the
        # Location of every post the API answered 201 for, checked against the database afterwards.
        self.failed_at: list[float] = []
        self.failed_by_kind = collections.Counter()
        self.created: list[str] = []
        self.started_at: float | None = None  # wall-clock time (time.time()) of the schedule's zero

    def on_send(self, second: int, lag_us: int) -> None:
        self.sent += 1
        self.seconds[second].sent += 1
        self.lag.record_value(max(lag_us, LOWEST_US))
        if lag_us > LATE_US:
            self.late += 1

    def on_done(self, second: int, kind: str, latency_us: int, service_us: int, outcome: str,
                headers=None, at: float | None = None) -> None:
        """`outcome` is "ok" or an error key (an HTTP status such as "503", or "timeout")."""
        latency_us = min(max(latency_us, LOWEST_US), HIGHEST_US)
        bucket = self.seconds[second]
        self.histogram.record_value(latency_us)
        self.service.record_value(min(max(service_us, LOWEST_US), HIGHEST_US))
        bucket.histogram.record_value(latency_us)
        self.by_kind[kind] += 1
        if outcome == "ok":
            self.ok += 1
            self.admitted.record_value(latency_us)
            bucket.ok += 1
            if kind == "create_post" and headers is not None and headers.get("Location"):
                self.created.append(headers["Location"])
        else:
            self.errors[outcome] += 1
            bucket.errors[outcome] += 1
            self.failed_by_kind[kind] += 1
            if len(self.failed_at) < MAX_FAILURE_TIMES:
                self.failed_at.append(round(second if at is None else at, 4))
        if headers is not None:
            for name in ATTRIBUTION_HEADERS:
                value = headers.get(name)
                if value:
                    self.attribution[name][value.split("=", 1)[0] if name in ATTRIBUTE_BY_NAME else value] += 1
            timing = headers.get("Server-Timing")
            if timing:
                self.timed += 1
                self.timing_ms.update(server_timing(timing))

    # --- merging across processes -------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "histogram": self.histogram.encode().decode(), "service": self.service.encode().decode(),
            "lag": self.lag.encode().decode(), "admitted": self.admitted.encode().decode(),
            "seconds": {str(s): {"sent": b.sent, "ok": b.ok, "errors": dict(b.errors),
                                 "histogram": b.histogram.encode().decode()} for s, b in self.seconds.items()},
            "scheduled": self.scheduled, "sent": self.sent, "ok": self.ok, "errors": dict(self.errors),
            "dropped": self.dropped, "late": self.late, "by_kind": dict(self.by_kind),
            "attribution": {h: dict(c) for h, c in self.attribution.items()},
            "timing_ms": dict(self.timing_ms), "timed": self.timed,
            "failed_at": self.failed_at, "failed_by_kind": dict(self.failed_by_kind), "created": self.created,
            "started_at": self.started_at,
        }

    @classmethod
    def merge(cls, parts: list[dict]) -> "Recorder":
        total = cls()
        for part in parts:
            total.histogram.add(HdrHistogram.decode(part["histogram"]))
            total.service.add(HdrHistogram.decode(part["service"]))
            total.lag.add(HdrHistogram.decode(part["lag"]))
            if part.get("admitted"):
                total.admitted.add(HdrHistogram.decode(part["admitted"]))
            for key, raw in part["seconds"].items():
                bucket = total.seconds[int(key)]
                bucket.sent += raw["sent"]
                bucket.ok += raw["ok"]
                bucket.errors.update(raw["errors"])
                bucket.histogram.add(HdrHistogram.decode(raw["histogram"]))
            for name in ("scheduled", "sent", "ok", "dropped", "late"):
                setattr(total, name, getattr(total, name) + part[name])
            total.errors.update(part["errors"])
            total.by_kind.update(part["by_kind"])
            for header, counts in part["attribution"].items():
                total.attribution.setdefault(header, collections.Counter()).update(counts)
            total.timing_ms.update(part.get("timing_ms", {}))
            total.timed += part.get("timed", 0)
            total.failed_at = sorted(total.failed_at + part.get("failed_at", []))[:MAX_FAILURE_TIMES]
            total.failed_by_kind.update(part.get("failed_by_kind", {}))
            total.created += part.get("created", [])
            if part.get("started_at") is not None:
                total.started_at = min(total.started_at or math.inf, part["started_at"])
        return total

    # --- reporting ----------------------------------------------------------------------------
    def late_share(self) -> float:
        return self.late / self.sent if self.sent else 0.0

    def valid(self) -> tuple[bool, str]:
        share = self.late_share()
        if share > MAX_LATE_SHARE:
            return False, (f"{share:.2%} of sends left more than {LATE_US / 1000:g} ms late "
                           f"(limit {MAX_LATE_SHARE:.0%}): the generator, not the server, set the pace")
        return True, ""

    def summary(self, duration_s: float) -> dict:
        def pct(h: HdrHistogram) -> dict:
            if not h.get_total_count():
                return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
            return {"p50_ms": h.get_value_at_percentile(50) / 1000, "p95_ms": h.get_value_at_percentile(95) / 1000,
                    "p99_ms": h.get_value_at_percentile(99) / 1000, "max_ms": h.get_max_value() / 1000,
                    "mean_ms": round(h.get_mean_value() / 1000, 3)}

        valid, why = self.valid()
        return {
            "scheduled": self.scheduled, "sent": self.sent, "ok": self.ok, "errors": dict(self.errors),
            "error_count": sum(self.errors.values()), "dropped": self.dropped,
            "achieved_rps": round(self.ok / duration_s, 1) if duration_s else None,
            "sent_rps": round(self.sent / duration_s, 1) if duration_s else None,
            "latency": pct(self.histogram), "service_time": pct(self.service),
            "admitted_latency": pct(self.admitted),  # successes only: shed (503) and failed requests left out
            "generator_lag": {**pct(self.lag), "late_share": round(self.late_share(), 5)},
            "valid": valid, "invalid_reason": why,
            "by_kind": dict(self.by_kind),
            "attribution": {h: dict(c) for h, c in self.attribution.items() if c},
            # The mean of each Server-Timing part over the responses that carried the header (ms).
            "server_timing_ms": {k: round(v / self.timed, 3) for k, v in sorted(self.timing_ms.items())}
            if self.timed else {},
        }

    def timeseries(self) -> list[dict]:
        rows = []
        for second in sorted(self.seconds):
            b = self.seconds[second]
            h = b.histogram
            has = h.get_total_count() > 0
            rows.append({"t": second, "sent": b.sent, "ok": b.ok, "errors": dict(b.errors),
                         "p50_ms": h.get_value_at_percentile(50) / 1000 if has else None,
                         "p95_ms": h.get_value_at_percentile(95) / 1000 if has else None,
                         "p99_ms": h.get_value_at_percentile(99) / 1000 if has else None})
        return rows
