"""The Clarify page: the seed's questions (functional, non-functional, constraints) as one form. The
answers are checked (lessons/interview.py), saved through the API in the signed-in member's
workspace (`clarify`), and read by the Estimate page."""
from __future__ import annotations

import streamlit as st

from lessons import interview, workspace
from lessons.client import ApiError, StackClient

KIND = "clarify"
TEXT = interview.CONTENT["clarify"]
HELP = TEXT["help"]
MESSAGES = "cl_messages"


def _key(name: str) -> str:
    return f"cl_{name}"


def _fill(answers: dict) -> None:
    for name, value in answers.items():
        st.session_state[_key(name)] = list(value) if isinstance(value, list) else value


def _answers_now() -> dict:
    return {name: st.session_state[_key(name)] for name in interview.DEFAULTS}


def _defaults() -> None:
    _fill(interview.DEFAULTS)
    st.session_state[MESSAGES] = [("info", "The seed's defaults are back in the form; save them to use them.")]


def _submit() -> None:
    answers = _answers_now()
    errors, warnings = interview.check(answers)
    messages = [("error", f"**{interview.LABELS[field]}**: {text}") for field, text in errors]
    messages += [("warning", f"**{interview.LABELS[field]}**: {text}") for field, text in warnings]
    if errors:
        messages.append(("error", f"Not saved: {len(errors)} answer(s) to fix above."))
    else:
        try:
            saved = workspace.save(StackClient(), KIND, answers)
        except ApiError as exc:
            if exc.status == 409:
                messages.append(("error", f"Not saved: {exc} Use **Load the saved answers** to see them."))
            else:
                messages.append(("error", f"Not saved. {exc}"))
        else:
            messages.append(("success", f"{workspace.saved_note(saved)} The Estimate page now computes from them."))
    st.session_state[MESSAGES] = messages


def _reload() -> None:
    workspace.forget(KIND)
    st.session_state.pop("cl_filled", None)


def _int_input(column, name: str, step: int = 1, fmt: str = "%d") -> None:
    lo, hi = interview.BOUNDS[name]
    column.number_input(interview.LABELS[name], min_value=lo, max_value=hi, step=step, format=fmt, key=_key(name),
                        help=HELP.get(name))


def _form() -> None:
    with st.form("clarify_form", enter_to_submit=False):
        st.subheader(TEXT["functional"])
        cols = st.columns(2)
        cols[0].multiselect(interview.LABELS["functions"], interview.FUNCTIONS, key=_key("functions"),
                            help=HELP["functions"])
        cols[1].slider(interview.LABELS["read_percent"], 0, 100, step=5, key=_key("read_percent"),
                       help=HELP["read_percent"], format="%d%%")
        cols = st.columns(2)
        cols[0].multiselect(interview.LABELS["access_patterns"], interview.ACCESS_PATTERNS,
                            key=_key("access_patterns"), help=HELP["access_patterns"])
        cols[1].radio(interview.LABELS["transactions"], interview.TRANSACTIONS, key=_key("transactions"),
                      help=HELP["transactions"])

        st.subheader(TEXT["nonfunctional"])
        cols = st.columns(2)
        _int_input(cols[0], "qps_avg", step=100_000)
        cols[0].caption(HELP["qps_avg"])
        _int_input(cols[1], "qps_peak", step=1_000_000)
        cols[1].caption("The seed: spikes of 10x the normal load.")
        cols = st.columns(4)
        for col, name in zip(cols, ("p50_ms", "p95_ms", "p99_ms")):
            _int_input(col, name, step=10)
        cols[3].select_slider(interview.LABELS["availability"], interview.AVAILABILITY, key=_key("availability"),
                              format_func=lambda v: f"{v:g}%", help=HELP["availability"])
        st.caption(HELP["latency"])
        cols = st.columns(4)
        _int_input(cols[0], "records_now", step=1_000_000)
        _int_input(cols[1], "record_bytes", step=100)
        cols[2].slider(interview.LABELS["new_record_percent"], 0, 100, step=5, key=_key("new_record_percent"),
                       help=HELP["new_record_share"], format="%d%%")
        _int_input(cols[3], "horizon_years")

        st.subheader(TEXT["constraints"])
        cols = st.columns(2)
        cols[0].multiselect(interview.LABELS["data_model"], interview.DATA_MODELS, key=_key("data_model"),
                            help=HELP["data_model"])
        cols[1].multiselect(interview.LABELS["compliance"], interview.COMPLIANCE, key=_key("compliance"),
                            help=HELP["compliance"])
        cols = st.columns(3)
        _int_input(cols[0], "budget_month", step=10_000)
        _int_input(cols[1], "regions")
        cols[2].radio(interview.LABELS["region_mode"], interview.REGION_MODES, key=_key("region_mode"),
                      horizontal=True, help=HELP["regions"])
        st.text_area(interview.LABELS["notes"], key=_key("notes"), max_chars=interview.NOTES_MAX, height=100,
                     help=HELP["notes"])
        st.form_submit_button("Save answers", type="primary", on_click=_submit, icon=":material/save:",
                              key="cl_save")


def render():
    st.title("Clarify")
    st.caption(TEXT["intro"])
    client = StackClient()
    document = workspace.load_or_say(client, KIND, "Your saved answers could not be read; the form shows the "
                                                   "seed's defaults and cannot save.")
    if not st.session_state.get("cl_filled"):
        answers, ignored = interview.answers_from((document or {}).get("data"))
        _fill(answers)
        if ignored:
            st.session_state[MESSAGES] = [("warning", "Some saved answers were not understood and the seed's "
                                           "defaults stand in for them: "
                                           + ", ".join(interview.LABELS[n] for n in ignored) + ".")]
        st.session_state["cl_filled"] = True

    _form()
    for kind, text in st.session_state.pop(MESSAGES, []):  # under the form, by the button just pressed
        getattr(st, kind)(text)
    if document is not None:
        st.caption(workspace.saved_note(workspace.load(client, KIND)))
    cols = st.columns([1, 1, 2])
    cols[0].button("Reset to the seed's defaults", on_click=_defaults, key="cl_defaults")
    cols[1].button("Load the saved answers", on_click=_reload, key="cl_reload",
                   help="Drop the changes in the form and read your saved answers again.")
