"""The Practice page: the interview as a timed exercise. A timer of 45 minutes (up to 60) split into
the seed's phases, scaled to the length chosen (lessons/interview.py), and the learner's notes per
phase, saved through the API in their workspace (`notes`) and exported as Markdown.

Streamlit reruns the script on every interaction, so the timer is a start time and the seconds
banked before a pause, in session state; what it shows is computed from the clock. While it runs, a
fragment redraws the clock each second without rerunning the rest of the page."""
from __future__ import annotations

import math
import time

import pandas as pd
import streamlit as st

from lessons import interview, workspace
from lessons.client import ApiError, StackClient

KIND = "notes"
NOTE_MAX_CHARS = 6_000
TIMER = "px_timer"          # {"started_at": epoch seconds or None, "banked_s": seconds before the last pause}
MINUTES = "px_minutes"
MESSAGE = "px_message"      # (kind, text) from the last save, shown once
CONFLICT = "px_conflict"


def _note_key(phase: str) -> str:
    return f"px_note_{phase}"


# --- the timer ---------------------------------------------------------------------------------
def _timer() -> dict:
    return st.session_state.setdefault(TIMER, {"started_at": None, "banked_s": 0.0})


def elapsed_s(timer: dict, now: float | None = None) -> float:
    running = timer["started_at"] is not None
    return timer["banked_s"] + ((now or time.time()) - timer["started_at"] if running else 0.0)


def _start() -> None:
    timer = _timer()
    if timer["started_at"] is None:
        timer["started_at"] = time.time()


def _pause() -> None:
    timer = _timer()
    if timer["started_at"] is not None:
        timer["banked_s"], timer["started_at"] = elapsed_s(timer), None


def _reset() -> None:
    st.session_state[TIMER] = {"started_at": None, "banked_s": 0.0}


def _schedule(phases: list[dict], current: int | None, elapsed: float) -> pd.DataFrame:
    rows = []
    for index, phase in enumerate(phases):
        state = ("now" if index == current else
                 "done" if elapsed >= phase["end_s"] else "next")
        rows.append({"phase": phase["title"], "start": interview.clock(phase["start_s"]),
                     "end": interview.clock(phase["end_s"]),
                     "minutes": f"{(phase['end_s'] - phase['start_s']) / 60:.2f}".rstrip("0").rstrip("."),
                     "seed's range": f"{phase['range'][0]}-{phase['range'][1]}" if phase["range"][0] != phase["range"][1]
                     else f"{phase['range'][0]}", "": state})
    return pd.DataFrame(rows).set_index("phase")


def _clock_body() -> None:
    phases = interview.plan(st.session_state[MINUTES])
    total = phases[-1]["end_s"]
    elapsed = elapsed_s(_timer())
    current = interview.phase_at(phases, elapsed)
    cols = st.columns(3)
    cols[0].metric("Elapsed", interview.clock(elapsed), help=f"Of {interview.clock(total)}.")
    if current is None:
        cols[1].metric("Phase", "over")
        cols[2].metric("Over by", interview.clock(elapsed - total))
        st.warning(f"**Time is up**: the {interview.clock(total)} are over. Wrap up, then export your notes.")
    else:
        phase = phases[current]
        cols[1].metric("Phase", f"{current + 1} of {len(phases)}")
        # Whole seconds that have not fully passed yet, so elapsed + left is the phase's end.
        cols[2].metric("Left in this phase", interview.clock(math.ceil(phase["end_s"] - elapsed)))
        st.info(f"**Now: {phase['title']}** ({interview.clock(phase['start_s'])}-{interview.clock(phase['end_s'])}). "
                f"{phase['prompt']}", icon=":material/timer:")
    st.progress(min(1.0, elapsed / total), text=f"{interview.clock(elapsed)} of {interview.clock(total)}")
    st.table(_schedule(phases, current, elapsed))


_clock_live = st.fragment(run_every=1.0)(_clock_body)
_clock_still = st.fragment(_clock_body)


# --- the notes ---------------------------------------------------------------------------------
def _notes_now() -> dict:
    return {p["key"]: st.session_state.get(_note_key(p["key"]), "") for p in interview.PHASES}


def _fill(document: dict) -> None:
    """Put a saved document into the widgets (once per session, or on 'load the saved notes')."""
    data = document.get("data") or {}
    minutes = data.get("minutes")
    if isinstance(minutes, int) and interview.MIN_MINUTES <= minutes <= interview.MAX_MINUTES:
        st.session_state[MINUTES] = minutes
    phases = data.get("phases") if isinstance(data.get("phases"), dict) else {}
    for p in interview.PHASES:
        text = phases.get(p["key"], "")
        st.session_state[_note_key(p["key"])] = text[:NOTE_MAX_CHARS] if isinstance(text, str) else ""


def _save(overwrite: bool = False) -> None:
    """Save the notes and the length (a widget's on_change, or a button)."""
    data = {"minutes": st.session_state[MINUTES], "phases": _notes_now()}
    try:
        saved = workspace.save(StackClient(), KIND, data, overwrite=overwrite)
    except ApiError as exc:
        if exc.status == 409:
            st.session_state[CONFLICT] = str(exc)
        else:
            st.session_state[MESSAGE] = ("error", f"Your notes were not saved. {exc}")
        return
    st.session_state.pop(CONFLICT, None)
    st.session_state[MESSAGE] = ("success", workspace.saved_note(saved))


def _reload() -> None:
    workspace.forget(KIND)
    st.session_state.pop(CONFLICT, None)
    try:
        _fill(workspace.load(StackClient(), KIND))
    except ApiError as exc:
        st.session_state[MESSAGE] = ("error", str(exc))


def _conflict_box() -> None:
    text = st.session_state.get(CONFLICT)
    if not text:
        return
    with st.container(border=True):
        st.warning("Your notes were saved from somewhere else (another tab or device) after this page read them, "
                   "so they were not overwritten. " + text)
        cols = st.columns(2)
        cols[0].button("Load the saved notes (drop my changes here)", on_click=_reload, key="px_reload")
        cols[1].button("Keep mine (overwrite the saved notes)", on_click=_save, kwargs={"overwrite": True},
                       key="px_overwrite")


def render():
    st.title("Practice")
    st.caption("Design the seed's API in one sitting, the way an interview runs: the time splits into the seed's "
               "phases, scaled to the length you pick, with notes for each. Your notes are saved through the API "
               f"in your workspace as {workspace.who()}, so they are there when you come back.")
    client = StackClient()
    document = workspace.load_or_say(client, KIND, "Your saved notes could not be read, so nothing you type here "
                                                   "will be saved.")
    if not st.session_state.get("px_filled"):
        st.session_state.setdefault(MINUTES, interview.DEFAULT_MINUTES)
        if document:
            _fill(document)
        st.session_state["px_filled"] = True

    left, right = st.columns([1.1, 1], gap="large")
    with left:
        st.subheader("Timer")
        timer = _timer()
        running = timer["started_at"] is not None
        st.slider("Length of the exercise (minutes)", interview.MIN_MINUTES, interview.MAX_MINUTES, key=MINUTES,
                  on_change=_save if document else None,
                  help="45 by default, as the seed suggests; up to 60. The phases keep the seed's proportions.")
        buttons = st.columns(3)
        buttons[0].button("Resume" if timer["banked_s"] and not running else "Start", on_click=_start,
                          disabled=running, type="primary", icon=":material/play_arrow:", key="px_start",
                          width="stretch")
        buttons[1].button("Pause", on_click=_pause, disabled=not running, icon=":material/pause:", key="px_pause",
                          width="stretch")
        buttons[2].button("Reset", on_click=_reset, icon=":material/restart_alt:", key="px_reset", width="stretch")
        (_clock_live if running else _clock_still)()

    with right:
        st.subheader("Notes")
        phases = interview.plan(st.session_state[MINUTES])
        current = interview.phase_at(phases, elapsed_s(_timer()))
        # Opens on the running phase's tab (a new `default` makes a new tab bar, on the next full rerun).
        labels = [f"{i + 1}. {p['short']}" for i, p in enumerate(phases)]
        tabs = st.tabs(labels, default=labels[current] if current is not None else None)
        for tab, phase in zip(tabs, phases):
            with tab:
                st.caption(f"**{phase['title']}**, {interview.clock(phase['start_s'])}-"
                           f"{interview.clock(phase['end_s'])}. {phase['prompt']}")
                st.text_area(phase["title"], key=_note_key(phase["key"]), height=260, max_chars=NOTE_MAX_CHARS,
                             on_change=_save if document else None, label_visibility="collapsed",
                             placeholder="Your notes for this phase; saved when you click outside the box.")
        _conflict_box()
        kind, text = st.session_state.pop(MESSAGE, (None, None))
        if kind:
            getattr(st, kind)(text)
        elif document:
            st.caption(workspace.saved_note(workspace.load(client, KIND)))
        cols = st.columns(2)
        cols[0].button("Save notes", on_click=_save, disabled=document is None, icon=":material/save:",
                       key="px_save", width="stretch")
        cols[1].download_button(
            "Export as Markdown", data=interview.notes_markdown(_notes_now(), st.session_state[MINUTES], workspace.who()),
            file_name="system-design-practice.md", mime="text/markdown", icon=":material/download:",
            key="px_export", width="stretch")
