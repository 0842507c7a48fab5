"""Small Streamlit pieces the status page's sections share."""
from __future__ import annotations

import streamlit as st


def metrics(values: dict) -> None:
    """One row of st.metric, label -> value, in the dict's order."""
    for col, (label, value) in zip(st.columns(len(values)), values.items()):
        col.metric(label, value)
