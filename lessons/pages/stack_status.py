"""The first page: what runs, whether it is healthy, and one live request through the stack."""
import pandas as pd
import streamlit as st

from lessons.client import StackClient


def render():
    client = StackClient()
    st.title("Stack status")
    st.caption("Every figure on this page is read live from the running stack: process data from the "
               "stack controller, the request from a real call through Caddy.")
    state = client.status()
    if not state:
        st.error("The stack controller does not answer. Start the workbench with `python manage.py up`.")
        return
    procs = state["processes"]
    healthy = sum(p["healthy"] for p in procs)
    cols = st.columns(4)
    cols[0].metric("Processes healthy", f"{healthy} / {len(procs)}")
    cols[1].metric("Phase", state["phase"])
    probe = client.probe()
    cols[2].metric("GET /api/v1/users (measured now)", f"{probe['ms']:.1f} ms" if probe["ok"] else "failed")
    cols[3].metric("Answered by", probe.get("app_server") or "-")

    table = pd.DataFrame([{
        "role": p["role"], "name": p["name"], "pid": p["pid"], "port": p["port"],
        "health": "healthy" if p["healthy"] else "DOWN", "uptime (s)": round(p["uptime_s"]),
        "RSS (MiB)": round(p["rss_bytes"] / 2**20, 1), "restarts": p["restarts"],
    } for p in procs])
    st.subheader("Processes")
    st.dataframe(table, hide_index=True, width="stretch")

    st.subheader("Entry points")
    st.markdown(f"- API (through Caddy): `{state['api_url']}`  \n"
                f"- App servers, direct: {', '.join(f'`{u}`' for u in state['direct_urls'])}  \n"
                f"- API docs: [{state['api_url']}/api/docs]({state['api_url']}/api/docs)")

    st.subheader("Readiness of the API's dependencies")
    st.json(client.readiness(), expanded=False)

    events = client.events()
    if events:
        st.subheader("Controller events")
        st.dataframe(pd.DataFrame(events[-30:][::-1]), hide_index=True, width="stretch")
    if st.button("Refresh"):
        st.rerun()
