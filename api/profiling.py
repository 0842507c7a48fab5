"""On-demand profiling (the seed's "Debugging"): an admin sends one request with
`X-Workbench-Profile: 1` and the app server runs that request under pyinstrument, stores the
profile in the `state` Valkey, and answers with `X-Profile-Id`. `GET /api/v1/admin/profiles` lists
the last MAX_PROFILES; `/api/v1/admin/profiles/{id}` returns one: the call tree as text and the
hottest frames.

Who: the header counts only with an admin's token (or the controller's). Anyone else's header is
ignored: the request is served as usual, unprofiled, with no X-Profile-Id. Ignored rather than
refused, so a client that always sends it (a copied curl line) keeps working; only the
admin's requests pay the profiler's cost.

What it sees: pyinstrument is a sampling profiler (a look at the stack every INTERVAL_S), and it
samples only the thread that started it. A gthread worker serves several requests at once, one
per thread, so the profile is this request's thread alone: the other requests of the same worker
are not in it, though they compete for the same CPU (and the GIL), which can show as time in
whatever this thread was waiting on. The gateway's work before the view (auth, the rate limiter)
is outside the profile; the view, the cache, the router and the database calls are inside.

Stored as `workbench:profiles:<id>` (the whole profile, JSON, the text bounded to TEXT_CHARS) and
`<id>:meta` (what the list shows), with the ids newest first in the list `workbench:profiles:index`;
one Lua script stores a profile and drops the oldest past MAX_PROFILES in one round trip.
"""
from __future__ import annotations

import json
import logging
import re
import secrets
import time

from django.conf import settings

log = logging.getLogger(__name__)

HEADER = "X-Workbench-Profile"
PREFIX = "workbench:profiles:"
INDEX = PREFIX + "index"
MAX_PROFILES = 20
INTERVAL_S = 0.0005
TEXT_CHARS = 48_000
TOP_FRAMES = 15
ID = re.compile(r"^[0-9a-f]{16}$")

# KEYS[1] the index; ARGV: prefix, id, profile, meta, max.
_STORE = """
redis.call('SET', ARGV[1] .. ARGV[2], ARGV[3])
redis.call('SET', ARGV[1] .. ARGV[2] .. ':meta', ARGV[4])
redis.call('LPUSH', KEYS[1], ARGV[2])
while redis.call('LLEN', KEYS[1]) > tonumber(ARGV[5]) do
  local old = redis.call('RPOP', KEYS[1])
  redis.call('DEL', ARGV[1] .. old, ARGV[1] .. old .. ':meta')
end
"""
_script = None


def wanted(request) -> bool:
    if request.headers.get(HEADER, "") not in ("1", "true", "yes"):
        return False
    principal = getattr(request, "principal", None)
    return principal is not None and principal.is_admin


def run(request, get_response):
    """The gateway's call of the view, profiled when an admin asked for it."""
    if not wanted(request):
        return get_response(request)
    from pyinstrument import Profiler  # only on a profiled request

    profiler = Profiler(interval=INTERVAL_S, async_mode="disabled")  # this thread only
    started = time.perf_counter()
    profiler.start()
    try:
        response = get_response(request)
    finally:
        profiler.stop()
    elapsed = time.perf_counter() - started
    profile_id = store(request, response, profiler, elapsed)
    if profile_id:
        response["X-Profile-Id"] = profile_id
    return response


def _frames(root) -> list[dict]:
    """The frames with the most self time (the time the sampled stack's top was in them), added up
    by function, so a function called from many places counts once."""
    totals: dict[tuple, dict] = {}
    stack = [root] if root is not None else []
    while stack:
        frame = stack.pop()
        stack.extend(frame.children)
        if frame.is_synthetic:
            continue
        key = (frame.function, frame.file_path_short, frame.line_no)
        entry = totals.setdefault(key, {"function": frame.function, "file": frame.file_path_short,
                                        "line": frame.line_no, "self_ms": 0.0, "total_ms": 0.0})
        entry["self_ms"] += frame.total_self_time * 1000
        entry["total_ms"] = max(entry["total_ms"], frame.time * 1000)
    top = sorted(totals.values(), key=lambda e: e["self_ms"], reverse=True)[:TOP_FRAMES]
    return [{**e, "self_ms": round(e["self_ms"], 2), "total_ms": round(e["total_ms"], 2)} for e in top]


def store(request, response, profiler, elapsed: float) -> str | None:
    """Store the profile; its id, or None when the state Valkey failed (the request still answers)."""
    global _script
    try:
        session = profiler.last_session
        match = getattr(request, "resolver_match", None)
        profile_id = secrets.token_hex(8)
        meta = {"id": profile_id, "at": time.time(), "method": request.method, "path": request.path[:300],
                "route": (match.route or match.view_name) if match else None,
                "status": response.status_code, "duration_ms": round(elapsed * 1000, 2),
                "samples": session.sample_count if session else 0,
                "request_id": getattr(request, "request_id", None), "app_server": settings.APP_SERVER_NAME,
                "interval_ms": INTERVAL_S * 1000, "thread": "the request's own thread only"}
        text = profiler.output_text(unicode=False, color=False) if session and session.sample_count else ""
        profile = {**meta, "top_frames": _frames(session.root_frame() if session else None),
                   "text": text[:TEXT_CHARS], "text_truncated": len(text) > TEXT_CHARS}
        if _script is None:
            from api.state import state_client

            _script = state_client().register_script(_STORE)
        _script(keys=[INDEX], args=[PREFIX, profile_id, json.dumps(profile), json.dumps(meta), MAX_PROFILES])
        return profile_id
    except Exception as failure:  # noqa: BLE001 - a failed store must not fail the request
        log.warning("storing a profile failed: %s: %s", type(failure).__name__, failure)
        return None


def profiles(client) -> list[dict]:
    """The stored profiles' summaries, newest first."""
    ids = [i.decode() for i in client.lrange(INDEX, 0, MAX_PROFILES - 1)]
    metas = client.mget([PREFIX + i + ":meta" for i in ids]) if ids else []
    return [json.loads(m) for m in metas if m]


def profile(client, profile_id: str) -> dict | None:
    raw = client.get(PREFIX + profile_id)
    return json.loads(raw) if raw else None
