"""Who the dashboard is signed in as, and the signed-in member's workspace documents (the API's
GET/PUT /api/v1/me/workspace/{kind}), for the interview pages.

Identity (DESIGN.md, "The dashboard's identity"): a browser session that holds its own access token
in `st.session_state[TOKEN]` (a workshop's sign-in puts it there) acts as that member; otherwise the
dashboard signs in as the demo admin with the password `up` saved in the data directory. That sign-in
costs a password hash on the server, so its token is shared by the sessions for TOKEN_TTL_S, less
than the token's 15 minutes; a 401 on the way drops it and signs in once more.

A page keeps each document it edits in session state with the version it read, and saves with that
version: a save over a change made elsewhere (another tab, another device) is refused (409), and
the page says so instead of overwriting it."""
from __future__ import annotations

import streamlit as st

from lessons.client import ApiError, StackClient

TOKEN = "wb_token"            # a session's own access token (workshop mode)
WHO = "wb_who"                # its display name
TOKEN_TTL_S = 600
_DOC = "ws_doc_{}"


@st.cache_data(ttl=TOKEN_TTL_S, show_spinner=False)
def _demo_token(api_url: str, data_dir: str) -> str:
    """The demo admin's access token (keyed by the stack, so two stacks never share one). A failed
    sign-in raises and is not cached."""
    return StackClient().sign_in_demo()


def who() -> str:
    return st.session_state.get(WHO) or "the demo admin"


def _token(client: StackClient) -> str:
    own = st.session_state.get(TOKEN)
    return own or _demo_token(client.cfg.api_url, str(client.cfg.data_dir))


def call(client: StackClient, fn):
    """fn(token), signed in; once more with a fresh demo sign-in if the token was refused (expired)."""
    try:
        return fn(_token(client))
    except ApiError as exc:
        if exc.status != 401 or st.session_state.get(TOKEN):
            raise
        _demo_token.clear()
        return fn(_token(client))


def load(client: StackClient, kind: str, *, fresh: bool = False) -> dict:
    """The document ({kind, data, version, updated_at}): read from the API once per session (or
    again with `fresh`), then from session state. Raises ApiError."""
    key = _DOC.format(kind)
    if fresh or key not in st.session_state:
        st.session_state[key] = call(client, lambda token: client.workspace(kind, token))
    return st.session_state[key]


def load_or_say(client: StackClient, kind: str, failed: str) -> dict | None:
    """The document, or None after showing `failed` and why (what to fix) as an error."""
    try:
        return load(client, kind)
    except ApiError as exc:
        st.error(f"{failed} {exc}")
        return None


def save(client: StackClient, kind: str, data: dict, *, overwrite: bool = False) -> dict:
    """Save `data` over the version this session read (`overwrite`: whatever is stored). Raises
    ApiError: a 409 when it changed since."""
    held = st.session_state.get(_DOC.format(kind))
    version = held["version"] if held and not overwrite else None
    saved = call(client, lambda token: client.save_workspace(kind, data, token, version))
    st.session_state[_DOC.format(kind)] = saved
    return saved


def forget(kind: str) -> None:
    st.session_state.pop(_DOC.format(kind), None)


def saved_note(document: dict) -> str:
    if not document.get("version"):
        return "Not saved yet."
    stamp = (document.get("updated_at") or "")[:19].replace("T", " ")
    return f"Saved as {who()} (version {document['version']}, {stamp} UTC) through the API."
