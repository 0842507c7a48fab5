"""Measured runs for the teaching pages (Scale, Trade-offs, Follow-ups, Design): ask the stack
controller for a run, follow it with a progress bar, and hand back the result exactly as the
controller saved it. One path for every page, the same one the Load test page and
`manage.py loadtest` use (RunClient), so a figure on any page is a saved run's figure.

    result = measured.measure({"mode": "open", "rate": 100, "duration_s": 3}, "scale: phase 1", slot)
    measured.run_card(result)          # id, VALID/INVALID, p50/p95/p99, ok/s, errors

`measure` raises lessons.client.ApiError with a message a learner can act on (never a traceback).
"""
from __future__ import annotations

import time

import requests
import streamlit as st

from lessons.client import ApiError
from workbench.loadgen.client import RunClient, RunError
from workbench.stack import config

POLL_S = 0.5
FOLLOW_GRACE_S = 60   # beyond duration + per-request timeout: generator start-up and saving
DASH = "\u2014"
INVALID_NOTE = "not the server's latency"
UNREACHABLE = "The stack controller does not answer."


def client() -> RunClient:
    return RunClient(config.load())


def unreachable(cfg, exc: Exception | None = None) -> str:
    return (f"{UNREACHABLE} Tried `{cfg.controller_url}/runs` with the token in "
            f"`{cfg.token_file}`" + (f" ({type(exc).__name__})" if exc else "") + ". Start the workbench with "
            "`python manage.py up`, or check that WORKBENCH_PORT_BASE and WORKBENCH_DATA_DIR match the running stack.")


def problem(rc: RunClient, exc: Exception) -> str:
    """Any failure talking to the controller, in words."""
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return unreachable(rc.cfg, exc)
    if isinstance(exc, RunError):
        if exc.status == 409:
            return (f"A run is already going ({exc.run}): the stack measures one run at a time. Wait for it "
                    "(the Load test page follows it), then try again.")
        if exc.status == 400:
            return f"The controller refused the workload: field `{exc.field}`: {exc}."
        if exc.status == 401:
            return f"The controller refused the token in `{rc.cfg.token_file}` (WORKBENCH_DATA_DIR): {exc}."
        return f"The run failed: {exc}"
    return f"{type(exc).__name__}: {exc}"


def progress_line(run: dict, label: str = "", counts: bool = True) -> tuple[float, str]:
    """How far a run going is (0..1) and a line saying so, from the controller's relayed progress."""
    p = run.get("progress") or {}
    duration = p.get("duration_s") or run.get("workload", {}).get("duration_s") or 1
    elapsed = p.get("elapsed_s", 0.0)
    what = f"Run {run.get('id', '')}" + (f" ({label})" if label else "")
    if not p:
        text = f"{what}: starting the generator"
    elif elapsed <= duration:
        text = f"{what}: {elapsed:.1f} of {duration:g} s" + (
            f", {p.get('ok', 0):,} ok, {p.get('errors', 0):,} errors" if counts else "")
    else:
        text = f"{what}: {duration:g} s sent; waiting for the last answers"
    return min(1.0, elapsed / duration), text


def progress(slot, run: dict, label: str = "") -> None:
    """The live counts of a run going, relayed by the controller."""
    slot.progress(*progress_line(run, label))


def measure(workload: dict, label: str, slot=None, rc: RunClient | None = None) -> dict:
    """Start a run, follow it in `slot` (an st.empty()), and return its saved result. Blocks for the
    run's duration plus a grace time. Raises ApiError saying what failed and what to do."""
    rc = rc or client()
    try:
        run_id = rc.start(workload, label)
    except (RunError, requests.RequestException, ValueError) as exc:
        raise ApiError(problem(rc, exc), getattr(exc, "status", 0), getattr(exc, "field", None)) from None
    deadline = time.monotonic() + float(workload.get("duration_s", 10)) + float(workload.get("timeout_s", 10)) \
        + FOLLOW_GRACE_S
    while time.monotonic() < deadline:
        try:
            run = rc.get(run_id)
        except (RunError, requests.RequestException, ValueError) as exc:
            raise ApiError(f"Lost track of run {run_id}: {problem(rc, exc)}") from None
        if run["status"] == "done":
            if slot is not None:
                slot.empty()
            return run
        if run["status"] == "failed":
            raise ApiError(f"Run {run_id} failed: {run.get('error') or 'no reason given'}. "
                           "Check the stack with `python manage.py status`.")
        if slot is not None:
            progress(slot, run, label)
        time.sleep(POLL_S)
    raise ApiError(f"Run {run_id} is still going after the page's limit for following it; the controller "
                   "keeps running it and the Load test page lists it once saved.")


def saved(run_id: str, rc: RunClient | None = None) -> dict:
    """A saved run's result (cached: a saved result never changes). Raises ApiError."""
    rc = rc or client()
    try:
        return _saved(rc.cfg.controller_url, run_id, rc)
    except (RunError, requests.RequestException, ValueError) as exc:
        raise ApiError(f"Could not read run {run_id}: {problem(rc, exc)}") from None


@st.cache_data(max_entries=128, show_spinner=False)
def _saved(controller_url: str, run_id: str, _rc: RunClient) -> dict:
    return _rc.get(run_id)


def figures(result: dict) -> dict:
    """The headline figures of a saved result, flat, for tables and charts. Latencies are None for an
    invalid run: they are not the server's."""
    s = result["summary"]
    lat = s["latency"] if s["valid"] else {}
    return {"run": result["id"], "label": result.get("label", ""), "valid": s["valid"],
            "invalid_reason": s.get("invalid_reason", ""), "ok/s": s["achieved_rps"],
            "sent": s["sent"], "ok": s["ok"], "errors": s["error_count"],
            "error rate": (s["error_count"] / s["sent"]) if s["sent"] else 0.0,
            "p50_ms": lat.get("p50_ms"), "p95_ms": lat.get("p95_ms"), "p99_ms": lat.get("p99_ms")}


def ms(value) -> str:
    return DASH if value is None else f"{value:,.2f} ms"


def run_card(result: dict, title: str | None = None) -> None:
    """One saved run in brief: its id, validity and headline figures (as saved)."""
    f = figures(result)
    with st.container(border=True):
        head = f"**{title}** \u00b7 " if title else ""
        st.markdown(f"{head}run `{f['run']}`" + (f" \u00b7 {f['label']}" if f["label"] else ""))
        if f["valid"]:
            cols = st.columns(5)
            cols[0].metric("p50", ms(f["p50_ms"]))
            cols[1].metric("p95", ms(f["p95_ms"]))
            cols[2].metric("p99", ms(f["p99_ms"]))
            cols[3].metric("ok/s", f"{f['ok/s']:,.1f}")
            cols[4].metric("errors", f"{f['errors']:,} of {f['sent']:,}")
        else:
            st.error(f"**INVALID**: {f['invalid_reason']}. Its latencies are {INVALID_NOTE}, so they are not "
                     f"shown. ok/s {f['ok/s']:,.1f}, errors {f['errors']:,} of {f['sent']:,}.")
