"""Error tracking (the seed's "Debugging"): every unhandled exception of a request, the kind that
becomes a 500 problem+json (api/gateway/errors.py `server_error`), is recorded in the `state`
Valkey, grouped by a fingerprint.

The fingerprint is the exception's type plus the innermost INNERMOST frames of the project's own
code (file:function; no line numbers, no message), hashed. So the same bug lands in one group even
as its message changes (an id in it) or lines above it move, and two bugs that raise the same type
in different places stay apart. Sentry and most trackers group the same way.

A group is a hash `workbench:errors:<fingerprint>`: count, first and last seen, type, message,
where (the innermost own frame), the frames, the last stack (formatted, its last STACK_CHARS
characters: the innermost frames are at the end), and the last request id, route, method and app
server. The sorted set `workbench:errors:index` orders the groups by last seen; past MAX_GROUPS the
oldest groups are dropped with their hashes. One Lua script does all of it in one round trip, and
only on the error path: a request that does not fail pays nothing.

The client still gets the same 500 problem+json with its request id, never the stack: the request
id is how an operator finds the stack here (`GET /api/v1/admin/errors`) and the request's log lines.

With SENTRY_DSN set, each error also goes to Sentry (sentry-sdk, imported only then, with our
fingerprint so both group alike). Unset, nothing is imported or sent.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import traceback
from pathlib import Path

from django.conf import settings

log = logging.getLogger(__name__)

PREFIX = "workbench:errors:"
INDEX = PREFIX + "index"
MAX_GROUPS = 200
INNERMOST = 3
STACK_CHARS = 16_000
MESSAGE_CHARS = 500
FINGERPRINT_CHARS = 16
SUMMARY_FIELDS = ("fingerprint", "type", "message", "where", "count", "first_seen", "last_seen",
                  "last_request_id", "route", "method", "app_server")
_ROOT = Path(settings.BASE_DIR).resolve()
_OWN = tuple(str(_ROOT / name) + os.sep for name in ("api", "workbench", "lessons"))

# KEYS[1] the index; ARGV: prefix, fingerprint, now, max groups, then field/value pairs.
_RECORD = """
local key = ARGV[1] .. ARGV[2]
redis.call('HSETNX', key, 'first_seen', ARGV[3])
local count = redis.call('HINCRBY', key, 'count', 1)
redis.call('HSET', key, 'last_seen', ARGV[3], unpack(ARGV, 5))
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if extra > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[1], 0, extra - 1)) do redis.call('DEL', ARGV[1] .. old) end
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1)
end
return count
"""
_script = None
_sentry_lock = threading.Lock()
_sentry_ready: bool | None = None


def own_frames(exc: BaseException) -> list[str]:
    """`path:function` of each frame of the project's own code in the traceback, outermost first."""
    frames = []
    for frame in traceback.extract_tb(exc.__traceback__):
        path = str(Path(frame.filename).resolve())
        if path.startswith(_OWN) and "site-packages" not in path:
            frames.append(f"{Path(path).relative_to(_ROOT).as_posix()}:{frame.name}")
    return frames


def type_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def fingerprint(exc: BaseException) -> tuple[str, list[str]]:
    """(fingerprint, the innermost own frames it was made of)."""
    where = own_frames(exc)[-INNERMOST:]
    digest = hashlib.sha256("|".join([type_name(exc), *where]).encode()).hexdigest()
    return digest[:FINGERPRINT_CHARS], where


def record(request, exc: BaseException | None) -> str | None:
    """Record this request's unhandled exception; its fingerprint, or None. Never raises: the 500
    must be answered even when the state Valkey is down."""
    if exc is None:
        return None
    try:
        fp, where = fingerprint(exc)
        match = getattr(request, "resolver_match", None)
        fields = {
            "fingerprint": fp, "type": type_name(exc), "message": str(exc)[:MESSAGE_CHARS],
            "where": where[-1] if where else "(outside the project's code)", "frames": json.dumps(where),
            "stack": "".join(traceback.format_exception(exc))[-STACK_CHARS:],
            "last_request_id": getattr(request, "request_id", "") or "",
            "route": ((match.route or match.view_name) if match else request.path[:200]) or "",
            "method": request.method or "", "app_server": settings.APP_SERVER_NAME,
        }
        _send_to_sentry(exc, fp, fields)
        args = [PREFIX, fp, f"{time.time():.6f}", MAX_GROUPS]
        for name, value in fields.items():
            args += [name, value]
        _record_script()(keys=[INDEX], args=args)
        return fp
    except Exception as failure:  # noqa: BLE001 - tracking must not turn a 500 into a crash
        log.warning("error tracking failed: %s: %s", type(failure).__name__, failure)
        return None


def _record_script():
    global _script
    if _script is None:
        from api.state import state_client

        _script = state_client().register_script(_RECORD)
    return _script


def _group(raw: dict) -> dict:
    group = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
    group["count"] = int(group.get("count", 0))
    for name in ("first_seen", "last_seen"):
        group[name] = float(group[name]) if name in group else None
    if "frames" in group:
        group["frames"] = json.loads(group["frames"])
    return group


def groups(client, limit: int = 50) -> tuple[int, list[dict]]:
    """(how many groups there are, the newest `limit` of them without their stacks)."""
    total = client.zcard(INDEX)
    ids = client.zrevrange(INDEX, 0, limit - 1)
    pipe = client.pipeline(transaction=False)
    for fp in ids:
        pipe.hmget(PREFIX + fp.decode(), *SUMMARY_FIELDS)
    out = []
    for values in pipe.execute() if ids else []:
        if values[0] is not None:  # dropped between the two reads
            out.append(_group(dict(zip((f.encode() for f in SUMMARY_FIELDS), values))))
    return total, out


def group(client, fp: str) -> dict | None:
    raw = client.hgetall(PREFIX + fp)
    return _group(raw) if raw else None


def clear(client) -> int:
    """Drop every group; how many there were."""
    ids = client.zrange(INDEX, 0, -1)
    pipe = client.pipeline(transaction=True)
    for fp in ids:
        pipe.delete(PREFIX + fp.decode())
    pipe.delete(INDEX)
    pipe.execute()
    return len(ids)


def _send_to_sentry(exc: BaseException, fp: str, fields: dict) -> None:
    """Also to Sentry, when SENTRY_DSN is set: initialised on the first error of each worker (after
    the fork), with no automatic integrations, so only what this module sends is sent."""
    global _sentry_ready
    dsn = os.environ.get("SENTRY_DSN", "")
    if not dsn or _sentry_ready is False:
        return
    import sentry_sdk

    with _sentry_lock:
        if _sentry_ready is None:
            try:
                sentry_sdk.init(dsn=dsn, default_integrations=False, auto_enabling_integrations=False,
                                server_name=settings.APP_SERVER_NAME)
                _sentry_ready = True
            except Exception as failure:  # noqa: BLE001 - a bad DSN must not break the error path
                log.warning("Sentry disabled: %s", failure)
                _sentry_ready = False
                return
    with sentry_sdk.new_scope() as scope:
        scope.fingerprint = [fp]  # Sentry groups as the local view does
        for name in ("last_request_id", "route", "method", "app_server"):
            scope.set_tag(name.removeprefix("last_"), fields[name])
        sentry_sdk.capture_exception(exc)
