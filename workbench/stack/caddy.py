"""Caddy: the single entry point, load-balancing over the app servers (the topology's `lb_policy`),
serving static/ and the uploaded blobs under /media/ as the edge (Cache-Control, ETag,
compression), over plain HTTP (api_url) and TLS from Caddy's internal CA (https_url).

At run time nothing reloads Caddy. Every config change through its admin API is a full graceful
reload, and Go's http.Server.Shutdown closes the clients' idle keep-alive connections at once: a
client that sends a request on one at that moment gets the connection closed unanswered (measured
here: 2 of 1,270 and 6 of 1,056 requests during live policy switches; Caddy's maintainers advise
against reloads for dynamic routing, caddyserver/caddy#3143). So:
- the reverse proxy lists every app-server slot (app-1 .. app-MAX_APP_SERVERS); health checks decide
  which serve: a slot whose server does not run fails its check and its dial, and gets no requests;
- each policy has its own reverse_proxy handler, chosen per request by Caddy's `file` matcher on a
  marker file (<data_dir>/caddy/lb/<policy>): switching the policy is creating one file and removing
  another, which Caddy sees on the next request, with no reload.
Only a new header name for the `header` policy changes the config (a rare reload, see set_policy)."""
from __future__ import annotations

import json
import os
import re

import requests

from workbench import topology

from . import binaries, ports
from .config import MAX_APP_SERVERS, PROJECT_DIR, StackConfig
from .process import ProcessSpec

# The handlers, in the order Caddy tries their routes: the first policy whose marker exists wins,
# and round_robin, last and without a matcher, serves when no marker exists. Names as Topology.lb()
# writes them (`header` stands for `header:<lb_header>`).
MARKED_POLICIES = ("least_conn", "header", "uri")
DEFAULT_POLICY = "round_robin"
DEFAULT_HEADER = topology.Topology().lb_header  # until set_policy names another

# "@id" of each policy's handler, so the admin API can read it: /id/lb_header/load_balancing/...
HANDLER_ID = "lb_{}"

HEALTH_URI = "/healthz"
# The largest body the API takes is an avatar (settings.AVATAR_MAX_BYTES, 2 MiB; JSON bodies stop
# at MAX_BODY_BYTES, 64 KiB), and the app answers those limits itself with its own problem. The
# edge's cap sits above them: it only stops bodies no route could take.
BODY_CAP = 3 * 1024 * 1024
HEADER_CAP = 32 * 1024


def selection_policy(lb: str) -> dict:
    """Caddy's JSON for a topology's policy (Topology.lb(): `round_robin`, `least_conn`, `uri`,
    `header:<name>`). Caddy's `header` and `uri_hash` policies are rendezvous hashing (highest
    random weight): each upstream gets a score hash(key, upstream) and the highest wins, so one
    header value or URI keeps one app server, and adding a server moves only the keys it now wins,
    without the ring of virtual nodes the sharding issue's consistent hashing uses. A request
    without the header falls back to round-robin (Caddy's own default there is random). Only
    available upstreams take part, so a server that leaves the rotation moves only its own keys."""
    if lb.startswith("header:"):
        return {"policy": "header", "field": lb.removeprefix("header:"), "fallback": {"policy": "round_robin"}}
    return {"policy": "uri_hash" if lb == "uri" else lb}


def lb_dir(cfg: StackConfig):
    return cfg.data_dir / "caddy" / "lb"


def _header_file(cfg: StackConfig):
    """The header name the `header` handler is configured with, kept so a restart renders it again."""
    return cfg.data_dir / "caddy" / "lb_header"


def configured_header(cfg: StackConfig) -> str:
    try:
        return _header_file(cfg).read_text().strip() or DEFAULT_HEADER
    except FileNotFoundError:
        return DEFAULT_HEADER


def marked_policy(cfg: StackConfig) -> str:
    """The policy Caddy's routes pick now: the first marker that exists, as Caddy tries them."""
    return next((name for name in MARKED_POLICIES if (lb_dir(cfg) / name).exists()), DEFAULT_POLICY)


def running_policy(cfg: StackConfig) -> str | None:
    """The policy Caddy runs now, as Topology.lb() writes it; None while Caddy cannot be asked."""
    header = _running_header(cfg)
    if header is None:
        return None
    name = marked_policy(cfg)
    return f"header:{header}" if name == "header" else name


def _running_header(cfg: StackConfig) -> str | None:
    """The header name Caddy's header handler hashes on; None while Caddy cannot be asked."""
    path = f"/id/{HANDLER_ID.format('header')}/load_balancing/selection_policy/field"
    try:
        response = requests.get(_admin(cfg, path), timeout=2)
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError):
        return None


def set_policy(cfg: StackConfig, lb: str) -> bool:
    """Switch the policy live: create the new policy's marker, then remove the others, so that a
    marker (or the round_robin catch-all) always matches; requests already in a handler finish
    there, new ones take the new handler. No reload, so no connection is closed. False when Caddy
    is not up (yet) and a header name must be set: the controller's next pass tries again."""
    name = "header" if lb.startswith("header:") else lb
    if name not in MARKED_POLICIES + (DEFAULT_POLICY,):
        raise ValueError(f"unknown load-balancing policy {lb!r}")
    if name == "header" and not _use_header(cfg, lb.removeprefix("header:")):
        return False
    directory = lb_dir(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    if name != DEFAULT_POLICY:
        (directory / name).touch()
    for other in MARKED_POLICIES:
        if other != name:
            (directory / other).unlink(missing_ok=True)
    return True


def _use_header(cfg: StackConfig, header: str) -> bool:
    """The header handler hashes on `header`. A new name is the one change that reloads Caddy (the
    field is part of the handler's config): rare, an operator's choice, and a reload closes idle
    client connections as the module docstring says. The config file is rewritten first, so a
    Caddy restarted after a crash comes back with the same name."""
    running = _running_header(cfg)
    if running is None:
        return False
    if running == header:
        return True
    _header_file(cfg).write_text(header)
    document = write_config(cfg)
    try:
        response = requests.post(_admin(cfg, "/load"), json=document, timeout=30)
    except requests.RequestException:
        return False
    if not response.ok:
        raise RuntimeError(f"Caddy refused the header {header}: {response.status_code} {response.text[:200]}")
    return True


def upstreams(cfg: StackConfig) -> list[dict] | None:
    """Caddy's upstream stats, per app server: `in_flight` is its requests in flight now (Caddy's
    num_requests, per address and so shared by the policies' handlers), `fails` the failures that
    passive health checks remember (0 while none are configured, see proxy()), `healthy` what the
    active health checks last said, as Caddy's metrics sample it (every 10 s: the admin API itself
    carries no health state, caddyserver/caddy#6135). Listed: the configured app servers and any
    other slot whose port is taken (scaled up). None while Caddy cannot be asked."""
    try:
        response = requests.get(_admin(cfg, "/reverse_proxy/upstreams"), timeout=2)
        response.raise_for_status()
        rows = {row.get("address"): row for row in response.json() or []}
    except (requests.RequestException, ValueError):
        return None
    healthy = health_gauge(cfg)
    listed = []
    for i in range(1, MAX_APP_SERVERS + 1):
        address = f"127.0.0.1:{cfg.app_port(i)}"
        row = rows.get(address, {})
        if i <= cfg.app_servers or row.get("num_requests") or ports.in_use(cfg.app_port(i)):
            listed.append({"app_server": f"app-{i}", "address": address, "in_flight": row.get("num_requests", 0),
                           "fails": row.get("fails", 0), "healthy": healthy.get(address)})
    return listed


HEALTHY_GAUGE = re.compile(r'^caddy_reverse_proxy_upstreams_healthy\{upstream="([^"]+)"\} (\S+)$', re.M)


def health_gauge(cfg: StackConfig) -> dict:
    """{address: bool} from Caddy's caddy_reverse_proxy_upstreams_healthy gauge; {} if unreadable."""
    try:
        text = requests.get(_admin(cfg, "/metrics"), timeout=2).text
    except requests.RequestException:
        return {}
    return {address: float(value) > 0 for address, value in HEALTHY_GAUGE.findall(text)}


def _admin(cfg: StackConfig, path: str) -> str:
    return f"http://127.0.0.1:{cfg.caddy_admin_port}{path}"


def proxy(cfg: StackConfig, lb: str) -> dict:
    """One policy's reverse_proxy handler over every app-server slot."""
    return {
        "@id": HANDLER_ID.format(lb.split(":")[0]), "handler": "reverse_proxy",
        "upstreams": [{"dial": f"127.0.0.1:{cfg.app_port(i)}"} for i in range(1, MAX_APP_SERVERS + 1)],
        # X-Request-Start: when Caddy forwarded the request (replacing any the client sent), so the
        # app server can tell how long it queued (api/gateway/shedding.py).
        "headers": {"request": {"set": {"X-Request-Start": ["t={time.now.unix_ms}"]}}},
        # The whole body is read before an upstream is picked (bodies stop at BODY_CAP): a slow
        # upload holds a Caddy goroutine, never one of the app servers' few worker threads.
        "request_buffers": BODY_CAP,
        # Idle connections to the app servers close before gunicorn's own keep-alive (30 s) would,
        # so Caddy never sends a request on a connection the app server is closing.
        "transport": {"protocol": "http", "keep_alive": {"idle_timeout": "20s"}},
        # A dial that fails (a slot with no server, one restarting) is tried on another upstream
        # for up to 5 s: nothing was sent, so the retry is safe even for writes.
        "load_balancing": {"selection_policy": selection_policy(lb), "try_duration": "5s", "try_interval": "100ms"},
        "health_checks": {
            # Each handler asks every slot once a second; a refused connection or a 503 (an app
            # server draining, workbench/health.py) takes it out of this handler's rotation at the
            # first failure, one pass brings it back. The timeout allows an overloaded but live
            # server a slow answer: refused dials and 503s fail at once anyway. Statuses of proxied
            # requests never count: the app sheds with 503 and rate-limits with 429 on purpose.
            # No passive checks: Caddy 2.11 counts a round trip that failed because the *client's*
            # body broke (over BODY_CAP, or too slow for read_timeout) against the upstream, so a
            # few oversized or slow uploads would take every app server out of rotation (seen:
            # two over-cap POSTs, both servers out for fail_duration). Between a server's death and
            # its next check (at most a second), a refused dial is retried on another upstream.
            "active": {"uri": HEALTH_URI, "interval": "1s", "timeout": "3s", "fails": 1, "passes": 1},
        },
    }


def policy_routes(cfg: StackConfig, header: str) -> list[dict]:
    """One route per policy: the marked ones match on their marker file; round_robin matches all."""
    names = {"least_conn": "least_conn", "header": f"header:{header}", "uri": "uri"}
    marked = [{"match": [{"file": {"root": str(lb_dir(cfg)), "try_files": [f"/{name}"]}}],
               "handle": [proxy(cfg, names[name])], "terminal": True} for name in MARKED_POLICIES]
    return marked + [{"handle": [proxy(cfg, DEFAULT_POLICY)], "terminal": True}]


PROBLEM_413 = {"type": "https://workbench.local/problems/body-too-large", "title": "Content Too Large",
               "status": 413, "detail": f"The request body is larger than {BODY_CAP} bytes, the most the edge accepts.",
               "errors": [{"field": "(body)", "in": "body", "pointer": "#",
                           "detail": f"The request body is larger than {BODY_CAP} bytes."}],
               "field": "(body)"}


ACCESS_LOGGER = "http.log.access"
# The ids the app keeps as given (api/gateway/middleware.py REQUEST_ID); any other is replaced.
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"


def access_log(cfg: StackConfig):
    return cfg.log_dir / "caddy-access.log"


def request_id_routes() -> list[dict]:
    """Every request carries an X-Request-Id from the edge on: the client's own if the app would keep
    it, else Caddy's per-request uuid. The app answers with the same id, and Caddy's access line
    records it as `request_id`, so `manage.py logs --request-id` joins Caddy's line to the app's."""
    return [
        {"match": [{"not": [{"header_regexp": {"X-Request-Id": {"pattern": REQUEST_ID_PATTERN}}}]}],
         "handle": [{"handler": "headers", "request": {"set": {"X-Request-Id": ["{http.request.uuid}"]}}}]},
        {"handle": [{"handler": "log_append", "key": "request_id", "value": "{http.request.header.X-Request-Id}"}]},
    ]


# W3C Trace Context, version 00 (lower-case hex; the app also checks the sampled flag).
TRACEPARENT_PATTERN = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


def trace_context_route() -> dict:
    """A request without a valid `traceparent` gets one from the edge (api/tracing.py): Caddy's
    per-request uuid without its dashes as the trace id (so it equals X-Request-Id when Caddy made
    that too), the uuid's last 16 hex digits as the parent, flags 00: not sampled by the edge, the
    app decides. A client's valid one is forwarded as sent. Caddy's own `tracing` handler would also
    do this, but it exports its spans to an OTLP collector that the workbench does not run."""
    uuid = r"^00-(\w{8})-(\w{4})-(\w{4})-(\w{4})-(\w{12})-00$"
    return {"match": [{"not": [{"header_regexp": {"Traceparent": {"pattern": TRACEPARENT_PATTERN}}}]}],
            "handle": [{"handler": "headers", "request": {
                "set": {"Traceparent": ["00-{http.request.uuid}-00"]},  # set, then replace: one handler
                "replace": {"Traceparent": [{"search_regexp": uuid, "replace": "00-$1$2$3$4$5-$4$5-00"}]}}}]}


def config(cfg: StackConfig, header: str | None = None) -> dict:
    header = header or configured_header(cfg)
    return {
        "admin": {"listen": f"127.0.0.1:{cfg.caddy_admin_port}"},
        "logging": {"logs": {
            # Caddy's own messages: warnings and errors, to its stdout (logs/caddy.log).
            "default": {"level": "WARN", "exclude": [ACCESS_LOGGER]},
            # One JSON line per request (the server's "logs" below turns them on), for `manage.py logs`.
            "access": {"level": "INFO", "include": [ACCESS_LOGGER], "encoder": {"format": "json"},
                       "writer": {"output": "file", "filename": str(access_log(cfg)), "roll_size_mb": 100,
                                  "roll_keep": 2}},
        }},
        "apps": {
            "http": {
                # One server on both ports: Caddy puts TLS on every listener except http_port's, so
                # both serve the same routes (and the same handlers and health checks).
                "http_port": cfg.caddy_port, "https_port": cfg.https_port,
                "servers": {"api": {
                    "listen": [f"127.0.0.1:{cfg.caddy_port}", f"127.0.0.1:{cfg.https_port}"],
                    "tls_connection_policies": [{}],
                    # No redirect to HTTPS and no certificate management from routes: the TLS app
                    # below names the certificates. Plain HTTP stays api_url.
                    "automatic_https": {"disable": True},
                    "protocols": ["h1", "h2"],
                    # Limits against slow and abusive clients: a client gets 10 s for its headers,
                    # 30 s for the whole request with its body, 120 s to take the response (above
                    # gunicorn's 60 s worker timeout), 2 min idle between keep-alive requests, and
                    # headers over HEADER_CAP are refused by Go's server with 431 (no problem body:
                    # no handler runs).
                    "read_header_timeout": "10s", "read_timeout": "30s", "write_timeout": "120s",
                    "idle_timeout": "2m", "max_header_bytes": HEADER_CAP,
                    "logs": {},  # access logs, to the "access" log above
                    "routes": [
                        *request_id_routes(),
                        trace_context_route(),
                        {"match": [{"path": ["/static/*"]}], "handle": [static_edge()]},
                        {"match": [{"path": ["/media/*"]}], "handle": [media_edge(cfg)]},
                        # Metrics are for the controller, straight from each app server, never via the edge.
                        {"match": [{"path": ["/metrics", "/metrics/*"]}],
                         "handle": [{"handler": "static_response", "status_code": 404}]},
                        {"handle": [{"handler": "request_body", "max_size": BODY_CAP},
                                    {"handler": "subroute", "routes": policy_routes(cfg, header)}]},
                    ],
                    # A body over BODY_CAP: the problem document the app would give, from the edge.
                    "errors": {"routes": [
                        {"match": [{"vars": {"{http.error.status_code}": ["413"]}}],
                         "handle": [{"handler": "static_response", "status_code": 413,
                                     "headers": {"Content-Type": ["application/problem+json"]},
                                     "body": json.dumps(PROBLEM_413)}]},
                    ]},
                }},
            },
            "tls": {
                "certificates": {"automate": ["127.0.0.1", "localhost"]},
                "automation": {"policies": [{"subjects": ["127.0.0.1", "localhost"],
                                             "issuers": [{"module": "internal"}]}]},
            },
            # Caddy's own CA, under XDG_DATA_HOME (cfg.caddy_root_ca); never put in the system's trust.
            "pki": {"certificate_authorities": {"local": {"install_trust": False}}},
        },
    }


# The edge's caching rules. A name with a content hash in it (`app.3f9a1c2b.css`, and every avatar)
# never changes meaning, so any cache may keep it for a year without asking again; any other name
# may change, so caches must revalidate it (cheap: Caddy's file_server answers If-None-Match with
# 304 from the file's ETag). Headers are set on successes and 304s only, never on a 404.
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "public, no-cache"
HASHED_NAME = r"\.[0-9a-f]{8,64}\.[A-Za-z0-9]+$"


def _cache_control(value: str, **extra: str) -> dict:
    return {"handler": "headers", "response": {
        "set": {"Cache-Control": [value], **{name: [v] for name, v in extra.items()}},
        "require": {"status_code": [2, 304]}}}


def static_edge() -> dict:
    """static/ of the project: Cache-Control by name, ETag and Last-Modified (file_server), and gzip
    or zstd for text types when the client asks (encode's default response matcher skips images)."""
    hashed = {"path_regexp": {"name": "hashed", "pattern": HASHED_NAME}}
    return {"handler": "subroute", "routes": [
        {"handle": [{"handler": "rewrite", "strip_path_prefix": "/static"}]},
        {"match": [hashed], "handle": [_cache_control(IMMUTABLE)]},
        {"match": [{"not": [hashed]}], "handle": [_cache_control(REVALIDATE)]},
        {"handle": [{"handler": "encode", "encodings": {"zstd": {}, "gzip": {}}, "prefer": ["zstd", "gzip"]},
                    {"handler": "file_server", "root": str(PROJECT_DIR / "static")}]},
    ]}


def media_edge(cfg: StackConfig) -> dict:
    """Uploaded blobs (api/avatars.py) in the default filesystem storage: every name is content-
    hashed, so all are immutable. nosniff: a browser never runs an upload as anything but its type."""
    return {"handler": "subroute", "routes": [
        {"handle": [{"handler": "rewrite", "strip_path_prefix": "/media"},
                    _cache_control(IMMUTABLE, **{"X-Content-Type-Options": "nosniff"}),
                    {"handler": "file_server", "root": str(cfg.media_dir)}]},
    ]}


def write_config(cfg: StackConfig) -> dict:
    """Render the config into the data dir, where `caddy run` (and every restart) reads it."""
    document = config(cfg)
    path = cfg.data_dir / "caddy" / "caddy.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2))
    os.replace(tmp, path)
    return document


def spec(cfg: StackConfig) -> ProcessSpec:
    home = cfg.data_dir / "caddy"
    home.mkdir(parents=True, exist_ok=True)
    lb_dir(cfg).mkdir(parents=True, exist_ok=True)
    cfg.media_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg)
    return ProcessSpec(
        name="caddy", role="caddy", port=cfg.caddy_port, log_file=cfg.log_dir / "caddy.log",
        argv=[str(binaries.caddy()), "run", "--config", str(home / "caddy.json")],
        # Caddy keeps its CA, certificates and autosaves under XDG dirs: keep them in the data dir.
        env={"XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"), "HOME": str(home)},
        health=lambda: _admin_ok(cfg.caddy_admin_port),
    )


def _admin_ok(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/config/", timeout=1).ok
    except requests.RequestException:
        return False
