"""The interview's pure parts, shared by the Practice, Clarify and Estimate pages (and a workshop's
pages later): the phases scaled to an exercise's length, the Clarify answers (the seed's defaults,
reading a stored document back, validation) and the notes as Markdown. No Streamlit, no I/O but
the lesson text in content/interview.yaml."""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import yaml

from workbench.capacity import envelope

CONTENT = yaml.safe_load((Path(__file__).resolve().parent / "content" / "interview.yaml").read_text())
PHASES = CONTENT["phases"]
DEFAULT_MINUTES, MIN_MINUTES, MAX_MINUTES = 45, 20, 60


# --- the exercise's phases --------------------------------------------------------------------
def plan(minutes: float) -> list[dict]:
    """Each phase with its start and end (seconds into the exercise), scaled to `minutes`.

    The seed gives each phase a range (clarify 5-10, high level 10-15, detailed 15-20, scaling
    10-15, trade-offs 5); their shortest lengths add up to 45 minutes, their longest to 65. From 45
    up, every phase moves the same fraction of the way from its shortest to its longest; under 45,
    the shortest lengths shrink in proportion. Boundaries are whole seconds and the last one is the
    exercise's end."""
    lo = sum(p["minutes"][0] for p in PHASES)
    hi = sum(p["minutes"][1] for p in PHASES)
    if minutes <= lo:
        lengths = [p["minutes"][0] * minutes / lo for p in PHASES]
    else:
        t = min(1.0, (minutes - lo) / (hi - lo))
        lengths = [p["minutes"][0] + t * (p["minutes"][1] - p["minutes"][0]) for p in PHASES]
        lengths[-1] += max(0.0, minutes - hi)  # past the seed's longest: the rest to the last phase
    out, start = [], 0
    for phase, length in zip(PHASES, lengths):
        end = round((start / 60 + length) * 60) if phase is not PHASES[-1] else round(minutes * 60)
        out.append({"key": phase["key"], "title": phase["title"], "short": phase["short"], "prompt": phase["prompt"],
                    "range": phase["minutes"], "start_s": start, "end_s": end})
        start = end
    return out


def phase_at(phases: list[dict], elapsed_s: float) -> int | None:
    """The index of the phase running `elapsed_s` into the exercise; None once it is over."""
    for index, phase in enumerate(phases):
        if elapsed_s < phase["end_s"]:
            return index
    return None


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


# --- the Clarify answers ----------------------------------------------------------------------
FUNCTIONS = ["CRUD", "search", "analytics"]
ACCESS_PATTERNS = ["lookups by id", "range queries (time ranges)", "full-text search", "aggregations"]
TRANSACTIONS = ["none (single-record writes)", "ACID within one user's data", "ACID across users"]
AVAILABILITY = [99.0, 99.9, 99.95, 99.99, 99.999]
DATA_MODELS = ["structured (relational)", "semi-structured (documents)", "unstructured (blobs)"]
COMPLIANCE = ["none", "GDPR", "HIPAA", "PCI DSS", "SOC 2"]
REGION_MODES = ["active-active", "active-passive"]
_SEED = envelope.Answers()
DEFAULTS = {
    "functions": ["CRUD", "search"],
    "read_percent": round(_SEED.read_share * 100),
    "access_patterns": ["lookups by id", "range queries (time ranges)"],
    "transactions": "ACID within one user's data",
    "qps_avg": int(_SEED.qps_avg), "qps_peak": int(_SEED.qps_peak),
    "p50_ms": 30, "p95_ms": int(_SEED.p95_ms), "p99_ms": 300,
    "availability": _SEED.availability,
    "records_now": int(_SEED.records_now), "record_bytes": int(_SEED.record_bytes),
    "new_record_percent": round(_SEED.new_record_share * 100), "horizon_years": int(_SEED.horizon_years),
    "data_model": ["structured (relational)", "unstructured (blobs)"],
    "compliance": ["none"],
    "budget_month": 0,
    "regions": _SEED.regions, "region_mode": "active-active" if _SEED.active_active else "active-passive",
    "notes": "",
}
CHOICES = {"functions": FUNCTIONS, "access_patterns": ACCESS_PATTERNS, "transactions": TRANSACTIONS,
           "availability": AVAILABILITY, "data_model": DATA_MODELS, "compliance": COMPLIANCE,
           "region_mode": REGION_MODES}
BOUNDS = {"read_percent": (0, 100), "qps_avg": (1, 10**12), "qps_peak": (1, 10**13), "p50_ms": (1, 60_000),
          "p95_ms": (1, 60_000), "p99_ms": (1, 60_000), "records_now": (0, 10**15), "record_bytes": (1, 10**9),
          "new_record_percent": (0, 100), "horizon_years": (1, 20), "budget_month": (0, 10**12), "regions": (1, 20)}
NOTES_MAX = 2_000
LABELS = {"functions": "What the API does", "read_percent": "Reads (% of requests)",
          "access_patterns": "Access patterns", "transactions": "Transactions", "qps_avg": "Average requests/s",
          "qps_peak": "Peak requests/s", "p50_ms": "p50 target (ms)", "p95_ms": "p95 target (ms)",
          "p99_ms": "p99 target (ms)", "availability": "Availability (%)", "records_now": "Records today",
          "record_bytes": "Bytes per record", "new_record_percent": "Writes that add a record (%)",
          "horizon_years": "Plan storage for (years)", "data_model": "Data model", "compliance": "Compliance",
          "budget_month": "Budget ($ per month)", "regions": "Regions", "region_mode": "Regions serve",
          "notes": "Other notes"}


def answers_from(stored: dict | None) -> tuple[dict, list[str]]:
    """A saved Clarify document merged over the defaults. A stored value of the wrong type or out of
    range (written by another client) is left out and named, so the page can say which default it used."""
    answers, ignored = dict(DEFAULTS), []
    for name, value in (stored or {}).items():
        if name not in DEFAULTS:
            continue
        default = DEFAULTS[name]
        if isinstance(default, list):
            ok = isinstance(value, list) and all(v in CHOICES[name] for v in value)
        elif name in CHOICES:
            ok = value in CHOICES[name]
        elif isinstance(default, str):
            ok = isinstance(value, str) and len(value) <= NOTES_MAX
        else:
            lo, hi = BOUNDS[name]
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                and lo <= value <= hi
        if ok:
            answers[name] = value
        else:
            ignored.append(name)
    return answers, ignored


def check(answers: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(errors, warnings), each (field, message). Errors block saving; warnings are said and saved."""
    errors, warnings = [], []
    if not answers["functions"]:
        errors.append(("functions", "Pick at least one thing the API does."))
    if not answers["access_patterns"]:
        errors.append(("access_patterns", "Pick at least one access pattern: how is the data looked up?"))
    if not answers["data_model"]:
        errors.append(("data_model", "Pick at least one kind of data."))
    if answers["qps_peak"] < answers["qps_avg"]:
        errors.append(("qps_peak", f"The peak ({answers['qps_peak']:,} req/s) is below the average "
                                   f"({answers['qps_avg']:,} req/s): a peak is at least the average."))
    elif answers["qps_peak"] > 100 * answers["qps_avg"]:
        warnings.append(("qps_peak", f"The peak is {answers['qps_peak'] / answers['qps_avg']:,.0f} times the "
                                     "average: sizing for it leaves most of the fleet idle most of the time."))
    if not answers["p50_ms"] <= answers["p95_ms"] <= answers["p99_ms"]:
        errors.append(("p95_ms", f"Percentiles must not decrease: p50 {answers['p50_ms']:g} ms <= p95 "
                                 f"{answers['p95_ms']:g} ms <= p99 {answers['p99_ms']:g} ms."))
    if "none" in answers["compliance"] and len(answers["compliance"]) > 1:
        errors.append(("compliance", "`none` and a regulation at once: pick `none` alone, or the regulations."))
    if not answers["compliance"]:
        errors.append(("compliance", "Pick `none` if no regulation applies."))
    if answers["region_mode"] == "active-passive" and answers["regions"] < 2:
        errors.append(("regions", "Active-passive needs a second region to fail over to: 2 regions or more."))
    if answers["regions"] == 1 and answers["availability"] >= 99.99:
        warnings.append(("regions", f"{answers['availability']:g}% in a single region: one regional outage "
                                    "uses up years of the downtime budget."))
    if answers["transactions"] == "ACID across users" and answers["qps_avg"] * (100 - answers["read_percent"]) \
            / 100 > 100_000:
        warnings.append(("transactions", "ACID across users at this write rate means distributed transactions "
                                         "across shards on many writes: can the data be keyed so they stay local?"))
    if len(answers["notes"]) > NOTES_MAX:
        errors.append(("notes", f"At most {NOTES_MAX:,} characters ({len(answers['notes']):,} now)."))
    return errors, warnings


def to_envelope(answers: dict) -> envelope.Answers:
    return envelope.Answers(
        qps_avg=float(answers["qps_avg"]), qps_peak=float(answers["qps_peak"]),
        read_share=answers["read_percent"] / 100, records_now=float(answers["records_now"]),
        record_bytes=float(answers["record_bytes"]), new_record_share=answers["new_record_percent"] / 100,
        horizon_years=float(answers["horizon_years"]), p95_ms=float(answers["p95_ms"]),
        availability=float(answers["availability"]), regions=int(answers["regions"]),
        active_active=answers["region_mode"] == "active-active")


def envelope_defaults() -> dict:
    return asdict(envelope.Assumptions())


# --- the notes as Markdown ---------------------------------------------------------------------
def notes_markdown(notes: dict, minutes: float, who: str = "") -> str:
    """The Practice page's notes, one section per phase in the exercise's order, with its time box."""
    lines = ["# System design practice: a REST API for 10M requests/s", ""]
    lines.append(f"Exercise of {minutes:g} minutes" + (f", by {who}" if who else "") + ".")
    for phase in plan(minutes):
        lines += ["", f"## {phase['title']} ({clock(phase['start_s'])}-{clock(phase['end_s'])})", ""]
        text = (notes.get(phase["key"]) or "").strip()
        lines.append(text if text else "_No notes._")
    return "\n".join(lines) + "\n"
