"""The Streamlit dashboard: one entry point, pages registered with st.navigation. The page modules
live in lessons/app_pages/, not lessons/pages/: Streamlit serves a `pages/` directory beside the
entry point as legacy pages too, so a first visit straight to /practice ran lessons/pages/practice.py
as a script of its own and showed a blank page (seen in a headless-Chromium screenshot)."""
import sys
from pathlib import Path

import streamlit as st

# `streamlit run lessons/app.py` puts lessons/ on the path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lessons.app_pages import (capacity, clarify, design, estimate, followups, live_metrics,  # noqa: E402
                               load_test, practice, scale, stack_status, tradeoffs)

st.set_page_config(page_title="Scalable API Workbench", page_icon="🧪", layout="wide")
page = st.navigation([
    st.Page(practice.render, title="Practice", url_path="practice"),
    st.Page(clarify.render, title="Clarify", url_path="clarify"),
    st.Page(estimate.render, title="Estimate", url_path="estimate"),
    st.Page(design.render, title="Design", url_path="design"),
    st.Page(scale.render, title="Scale", url_path="scale"),
    st.Page(tradeoffs.render, title="Trade-offs", url_path="tradeoffs"),
    st.Page(followups.render, title="Follow-ups", url_path="followups"),
    st.Page(live_metrics.render, title="Live metrics", url_path="live"),
    st.Page(stack_status.render, title="Stack status", url_path="status", default=True),
    st.Page(load_test.render, title="Load test", url_path="load-test"),
    st.Page(capacity.render, title="Capacity model", url_path="capacity"),
])
page.run()
