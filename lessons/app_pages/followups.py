"""The Follow-ups page: the seed's seven follow-up questions, each with a live experiment on the
running stack and a model answer hidden until the learner asks for it (lessons/followups/)."""
from __future__ import annotations

import streamlit as st

from lessons import followups


def render():
    st.title("Follow-ups")
    st.caption("An interviewer's follow-up questions. Try each one on the live stack first, write your own answer "
               "in Practice, then reveal the model answer. Every figure here is measured on this machine.")
    found = followups.modules()
    if not found:
        st.info("No follow-up experiments are installed.")
        return
    tabs = st.tabs([m.TITLE for m in found])
    for tab, module in zip(tabs, found):
        with tab:
            st.subheader(module.TITLE)
            st.markdown(module.QUESTION)
            module.render()
            if st.toggle("Reveal the model answer", key=f"fu_reveal_{module.KEY}"):
                with st.container(border=True):
                    st.markdown(module.ANSWER)
