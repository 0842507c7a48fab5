"""The Design page's architecture diagram: the live topology and the stack's live per-node figures
turned into a Graphviz DOT string. Pure: no Streamlit, no HTTP; the page passes in what the admin
API and the controller answered, and a figure the stack did not report is a dash, never a guess.

Inputs, each as the stack answers it (an {"error": ...} or None where it did not):
- `doc`: GET /api/v1/admin/topology (`topology`, `version`, `pending`, `progress`);
- `status`: the controller's GET /status (`processes` with cpu_percent and rss_bytes, `upstreams`
  from Caddy, `served` per app server, `data_nodes`: the node report with lag, connections...);
- `cache`, `readmodel`, `ratelimit`: GET /api/v1/admin/cache, /readmodel, /ratelimit.

Node ids are stable (`caddy`, `app_2`, `s1_primary`, `s2_replica_1`, `meta`, `pgbouncer`,
`valkey_cache`, `state`...), so tests and readers can find a component in the DOT text.
"""
from __future__ import annotations

import html

DASH = "\u2014"
FONT = "Helvetica"
# Fill colours of the lit components, one per tier; anything switched off is grey and dashed.
TIER = {"client": "#ffffff", "edge": "#cfe3ff", "app": "#d5f0d5", "gateway": "#fff2bf", "cache": "#ffe1c7",
        "db": "#e4dcff", "meta": "#f6d8d8", "state": "#f7d9ef"}
OFF_FILL, OFF_FONT, OFF_LINE = "#f4f4f4", "#9a9a9a", "#b5b5b5"
DOWN_LINE = "#d62728"


def esc(text) -> str:
    """Text for an HTML-like Graphviz label."""
    return html.escape(str(text), quote=True)


def num(value, fmt: str = "{:,}") -> str:
    return DASH if value is None else fmt.format(value)


def ratio(value) -> str:
    return DASH if value is None else f"{value:.1%}"


def mib(value) -> str:
    return DASH if value is None else f"{value / 2**20:,.0f} MiB"


def proc_line(proc: dict | None) -> str:
    """A process's shared-CPU figures from /status: CPU as % of one core since the previous status
    call (every process shares the machine's cores), and its resident memory."""
    if not proc:
        return "no process"
    cpu = proc.get("cpu_percent")
    return f"CPU {num(cpu, '{:.1f}')}% \u00b7 RSS {mib(proc.get('rss_bytes'))}"


class Live:
    """The stack's answers, indexed the way the diagram looks things up."""

    def __init__(self, doc: dict, status: dict | None = None, cache: dict | None = None,
                 readmodel: dict | None = None, ratelimit: dict | None = None):
        self.topology = doc.get("topology") or {}
        self.version = doc.get("version")
        self.reported = bool(status)  # without /status nothing is known of the processes
        status = status or {}
        self.procs = {p["name"]: p for p in status.get("processes") or []}
        self.by_pid = {p["pid"]: p for p in self.procs.values() if p.get("pid")}
        self.upstreams = {u["app_server"]: u for u in status.get("upstreams") or []}
        self.served = status.get("served") or {}
        report = status.get("data_nodes") or {}
        self.nodes = report.get("nodes") or {}
        self.running = report.get("running") or {}
        self.cache = cache if cache and "error" not in cache else {}
        self.readmodel = readmodel if readmodel and "error" not in readmodel else {}
        self.ratelimit = ratelimit if ratelimit and "error" not in ratelimit else {}

    def t(self, dotted: str, default=None):
        """A topology value by its dotted name, e.g. `cache.mode`."""
        value = self.topology
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        return value

    def health(self, proc: dict | None) -> tuple[str, bool]:
        """A word for a process's health, and whether to draw it as down (it should run and does not)."""
        if not self.reported:
            return "status unknown", False
        if proc is None:
            return "not running", False
        return ("healthy", False) if proc.get("healthy") else ("DOWN", True)

    def figures(self, proc: dict | None) -> str:
        return proc_line(proc) if self.reported else f"CPU {DASH} \u00b7 RSS {DASH}"

    def node_proc(self, alias: str) -> dict | None:
        """The process behind a data node of the report: matched by pid, since a node's alias and its
        process name differ for shard 1's primary (`primary` runs as `pg-primary`)."""
        node = self.nodes.get(alias) or {}
        return self.by_pid.get(node.get("pid")) or self.procs.get(alias)


def attrs(lit: bool, tier: str, down: bool = False, shape: str = "box") -> str:
    if lit:
        style, fill, font, line = "rounded,filled", TIER[tier], "#1a1a1a", "#555555"
    else:
        style, fill, font, line = "rounded,dashed,filled", OFF_FILL, OFF_FONT, OFF_LINE
    extra = f', color="{DOWN_LINE}", penwidth=2.5' if down else f', color="{line}"'
    return f'shape={shape}, style="{style}", fillcolor="{fill}", fontcolor="{font}"{extra}'


def node(nid: str, title: str, lines: list[str], lit: bool, tier: str, down: bool = False) -> str:
    label = f"<B>{esc(title)}</B>" + "".join(f"<BR/>{esc(line)}" for line in lines if line)
    return f"  {nid} [label=<{label}>, {attrs(lit, tier, down)}];"


# --- the tiers ----------------------------------------------------------------------------------
def _edge(live: Live) -> list[str]:
    caddy = live.procs.get("caddy")
    health, down = live.health(caddy)
    policy = live.t("lb_policy", DASH)
    wanted = f"header:{live.t('lb_header')}" if policy == "header" else policy
    running = live.running.get("lb_policy")
    lines = [f"lb_policy {wanted}" + ("" if running in (None, wanted) else f" (Caddy runs {running})"),
             f"{health} \u00b7 {live.figures(caddy)}"]
    return ['  clients [label=<<B>Clients</B><BR/>browsers, load generator>, shape=box, style="rounded", '
            'color="#555555"];',
            node("caddy", "Caddy \u00b7 load balancer, TLS", lines, True, "edge", down)]


def _gateway_cells(live: Live) -> str:
    """The in-process gateway of one app server, as a row of cells: lit when switched on."""
    anon = live.t("auth.anonymous_reads", True)
    cells = [("auth", "JWT, RBAC" + (" \u00b7 anon reads" if anon else " \u00b7 reads need a token"), True),
             ("rate limit", "on" if live.t("rate_limit.enabled") else "off", bool(live.t("rate_limit.enabled"))),
             ("shedding", f"on, {live.t('shedding.queue_budget_ms')} ms" if live.t("shedding.enabled") else "off",
              bool(live.t("shedding.enabled")))]
    out = []
    for name, word, lit in cells:
        fill, font = (TIER["gateway"], "#1a1a1a") if lit else (OFF_FILL, OFF_FONT)
        style = "" if lit else ' STYLE="dashed"'
        out.append(f'<TD BGCOLOR="{fill}"{style}><FONT COLOR="{font}" POINT-SIZE="10">{esc(name)}<BR/>{esc(word)}</FONT></TD>')
    return "".join(out)


def app_names(live: Live) -> list[str]:
    """The app servers to draw: those the topology asks for and any other that still runs (draining)."""
    wanted = int(live.t("app_servers", 1) or 1)
    names = {f"app-{i}" for i in range(1, wanted + 1)}
    names |= {n for n, p in live.procs.items() if p.get("role") == "app"}
    return sorted(names, key=lambda n: (len(n), n))


def _app(live: Live, name: str, wanted: int) -> str:
    proc = live.procs.get(name)
    health, down = live.health(proc)
    index = int(name.split("-")[1])
    if index > wanted and proc:
        health = "draining (beyond app_servers)"
    elif proc is None and live.reported:
        health = "starting"
    upstream = live.upstreams.get(name) or {}
    l1 = "L1 LRU on" if live.t("cache.l1") else "L1 LRU off"
    head = TIER["app"] if proc else OFF_FILL
    line = DOWN_LINE if down else "#555555"
    label = (f'<<TABLE BORDER="1" COLOR="{line}" CELLBORDER="0" CELLSPACING="2" CELLPADDING="3" STYLE="rounded">'
             f'<TR><TD COLSPAN="3" BGCOLOR="{head}"><B>{esc(name)}</B> gunicorn \u00b7 {esc(health)}</TD></TR>'
             f'<TR><TD COLSPAN="3"><FONT POINT-SIZE="9">gateway, in-process middleware</FONT></TD></TR>'
             f'<TR>{_gateway_cells(live)}</TR>'
             f'<TR><TD COLSPAN="3" BGCOLOR="{head}">Django views \u00b7 {esc(l1)}<BR/>{esc(live.figures(proc))}<BR/>'
             f'in flight {esc(num(upstream.get("in_flight")))} (Caddy) \u00b7 answered '
             f'{esc(num(live.served.get(name)))}</TD></TR></TABLE>>')
    return f'    {name.replace("-", "_")} [label={label}, shape=plain];'


def _apps(live: Live) -> list[str]:
    wanted = int(live.t("app_servers", 1) or 1)
    autoscale = " \u00b7 autoscaler on" if live.t("autoscale.enabled") else ""
    out = ["  subgraph cluster_apps {",
           f'    label=<<B>App servers: app_servers = {wanted}</B>{esc(autoscale)}>; style="rounded,filled"; '
           f'fillcolor="#f3fbf3"; color="#7aa37a";']
    out += [_app(live, name, wanted) for name in app_names(live)]
    out.append("  }")
    return out


def _caches(live: Live) -> list[str]:
    layers = live.cache.get("layers") or {}
    mode = live.t("cache.mode", "off")
    l1_on, query_on = bool(live.t("cache.l1")), bool(live.t("cache.query_cache"))
    cache_nodes = int(live.t("cache_nodes", 1) or 1)

    def layer(name: str) -> str:
        return f"hit ratio {ratio((layers.get(name) or {}).get('hit_ratio'))}"

    out = ["  subgraph cluster_caches {", '    label=<<B>Caches</B>>; style="rounded"; color="#c98b55";',
           node("cache_l1", "L1 LRU (in each app server)",
                [f"cache.l1 {'on' if l1_on else 'off'} \u00b7 {live.t('cache.l1_ttl_ms')} ms, "
                 f"{num(live.t('cache.l1_entries'))} entries", layer("l1") if l1_on else ""], l1_on, "cache"),
           node("cache_app", "Application cache",
                [f"cache.mode {mode} \u00b7 invalidation {live.t('cache.invalidation')}",
                 layer("valkey") if mode != "off" else ""], mode != "off", "cache"),
           node("cache_query", "Query cache (rows per shard)",
                [f"cache.query_cache {'on' if query_on else 'off'} \u00b7 ttl {live.t('cache.query_ttl_s')} s",
                 layer("query") if query_on else ""], query_on, "cache")]
    used = mode != "off" or query_on
    server = (layers.get("valkey") or {}).get("server") or {}
    per_node = {n.get("node"): n for n in server.get("nodes") or []}
    if cache_nodes > 1:
        names = [f"valkey-cache-{i}" for i in range(1, cache_nodes + 1)]
        out.append("    subgraph cluster_cache_cluster {")
        out.append(f'      label="Valkey Cluster: cache_nodes = {cache_nodes}"; style="rounded,dashed"; color="#c98b55";')
    else:
        names = ["valkey-cache"]
    for name in names:
        proc, info = live.procs.get(name), per_node.get(name) or {}
        health, down = live.health(proc)
        lines = [f"{health} \u00b7 {live.figures(proc)}"]
        if info and "error" not in info:
            lines.append(f"keys {num(info.get('keys'))} \u00b7 INFO hit ratio {ratio(info.get('hit_ratio'))}")
        out.append(node(name.replace("-", "_"), name + (" (allkeys-lru)" if cache_nodes == 1 else ""), lines,
                        used, "cache", down and used))
    if cache_nodes > 1:
        out.append("    }")
        single = live.procs.get("valkey-cache")
        out.append(node("valkey_cache", "valkey-cache (unused while the cluster serves)", [live.figures(single)],
                        False, "cache"))
    out.append("  }")
    return out


def shard_count(live: Live) -> int:
    """Shards to draw: during a reshard the old and the new ones (what the controller runs)."""
    wanted = max(int(live.t("shards", 1) or 1), int(live.t("reshard_shards", 0) or 0))
    return max(wanted, int(live.running.get("shard_groups") or 1))


def _alias(shard: int, replica: int = 0) -> str:
    """The report's names (api/routing/shards.py): primary, replica-2, shard-3, shard-3-replica-1."""
    if replica:
        return f"replica-{replica}" if shard == 1 else f"shard-{shard}-replica-{replica}"
    return "primary" if shard == 1 else f"shard-{shard}"


def _shard(live: Live, k: int) -> list[str]:
    replicas = int(live.t("replicas", 0) or 0)
    shards, target = int(live.t("shards", 1) or 1), int(live.t("reshard_shards", 0) or 0)
    role = ""
    if target and k > shards:
        role = " (new: being filled by the reshard)"
    elif target and k > target:
        role = " (being emptied by the reshard)"
    elif k > shards:
        role = " (retiring)"
    primary = live.nodes.get(_alias(k)) or {}
    out = ["  subgraph cluster_shard_%d {" % k,
           f'    label=<<B>shard-{k}</B>{esc(role)} \u00b7 {esc(live.t("sharding"))} \u00b7 '
           f'{esc(num(primary.get("users")))} users, {esc(num(primary.get("posts")))} posts>; '
           'style="rounded"; color="#8a78c9";']
    proc = live.node_proc(_alias(k))
    health, down = live.health(proc)
    out.append(node(f"s{k}_primary", f"{_alias(k)} (PostgreSQL primary)",
                    [f"{health} \u00b7 {live.figures(proc)}",
                     f"{num(primary.get('connections'))} connections \u00b7 {num(primary.get('queries'))} queries"],
                    True, "db", down))
    mode = live.t("replication", "async")
    for i in range(1, replicas + 1):
        alias = _alias(k, i)
        info, rproc = live.nodes.get(alias) or {}, live.node_proc(alias)
        rhealth, rdown = live.health(rproc)
        lag = (f"replay lag {num(info.get('lag_ms'), '{:.1f}')} ms, {num(info.get('lag_bytes'))} B"
               if "state" in info else "not reporting yet" if live.reported else f"replay lag {DASH}")
        state = info.get("state") or ("starting" if live.reported else "")
        out.append(node(f"s{k}_replica_{i}", f"{alias} ({state})" if state else alias,
                        [f"{rhealth} \u00b7 {live.figures(rproc)}", lag], True, "db", rdown))
        out.append(f'    s{k}_primary -> s{k}_replica_{i} [label="WAL, {mode}", fontsize=9, color="#8a78c9"];')
    if not replicas:
        out.append(node(f"s{k}_replica_none", "replicas: 0", ["reads go to the primary"], False, "db"))
        out.append(f'    s{k}_primary -> s{k}_replica_none [style=dashed, color="{OFF_LINE}"];')
    out.append("  }")
    return out


def _databases(live: Live) -> list[str]:
    n = shard_count(live)
    out = [line for k in range(1, n + 1) for line in _shard(live, k)]
    if n == 1:
        out.append(node("shard_more", "more shards", ["reshard online to add them"], False, "db"))
    bouncer_on = bool(live.t("pgbouncer"))
    info = live.nodes.get("pgbouncer") or {}
    proc = live.procs.get("pgbouncer")
    health, down = live.health(proc)
    lines = [f"{health} \u00b7 {live.figures(proc)}"] if bouncer_on else ["pgbouncer off: a pool in each app worker"]
    if bouncer_on and "clients_active" in info:
        lines.append(f"clients {num(info.get('clients_active'))} active, {num(info.get('clients_waiting'))} waiting"
                     f" \u00b7 servers {num(info.get('servers_active'))} active")
    out.append(node("pgbouncer", "PgBouncer (primaries' connections)", lines, bouncer_on, "db", down and bouncer_on))
    meta, mproc = live.nodes.get("meta") or {}, live.node_proc("meta")
    mhealth, mdown = live.health(mproc)
    directory = meta.get("directory") or {}
    out.append(node("meta", "meta (PostgreSQL)",
                    [f"{mhealth} \u00b7 {live.figures(mproc)}",
                     f"{num(meta.get('connections'))} connections \u00b7 {num(meta.get('queries'))} queries",
                     (f"directory: {sum(directory.values()):,} users" if directory else ""),
                     "accounts, shard directory, unique names", "one instance: a single point of failure"], True, "meta", mdown))
    return out


def _state(live: Live) -> list[str]:
    proc = live.procs.get("valkey-state")
    health, down = live.health(proc)
    counters = live.ratelimit.get("counters") or {}
    shed = ((live.ratelimit.get("shedding") or {}).get("counters") or {}).get("shed")
    rm_on = bool(live.t("read_model"))
    rm, relay = live.readmodel, live.procs.get("relay")
    staleness = rm.get("staleness_ms") or {}
    outbox = rm.get("outbox") or {}
    out = ["  subgraph cluster_state {", '    label=<<B>State: shared by every app server</B>>; style="rounded"; color="#b0609a";',
           node("state", "valkey-state (noeviction)",
                [f"{health} \u00b7 {live.figures(proc)}",
                 f"rate limit {'on' if live.t('rate_limit.enabled') else 'off'}: {num(counters.get('allowed'))} "
                 f"allowed, {num(counters.get('limited'))} limited",
                 f"shedding {'on' if live.t('shedding.enabled') else 'off'}: {num(shed)} shed",
                 "also: topology, write-behind queue"],
                True, "state", down),
           node("readmodel", "Read model: profile documents",
                [f"read_model {'on' if rm_on else 'off'} \u00b7 {num(rm.get('documents'))} documents",
                 f"staleness p95 {num(staleness.get('p95'), '{:,.1f} ms')} \u00b7 outbox {num(outbox.get('pending'))} pending",
                 f"relay {live.figures(relay)}"], rm_on, "state"),
           "  }"]
    return out


def _edges(live: Live) -> list[str]:
    apps = [n.replace("-", "_") for n in app_names(live)]
    first = apps[0]
    policy = live.t("lb_policy", "")
    out = ['  clients -> caddy [label="HTTP(S)"];']
    out += [f'  caddy -> {a} [label="{policy}", fontsize=9];' if i == 0 else f"  caddy -> {a};"
            for i, a in enumerate(apps)]

    def from_apps(target: str, lit: bool, label: str = "", lhead: str = "") -> str:
        style = "" if lit else f', style=dashed, color="{OFF_LINE}", fontcolor="{OFF_FONT}"'
        head = f", lhead={lhead}" if lhead else ""
        text = f', label="{label}", fontsize=9' if label else ""
        return f"  {first} -> {target} [ltail=cluster_apps{head}{text}{style}];"

    mode, query_on, l1_on = live.t("cache.mode", "off"), bool(live.t("cache.query_cache")), bool(live.t("cache.l1"))
    out += [from_apps("cache_l1", l1_on), from_apps("cache_app", mode != "off"),
            from_apps("cache_query", query_on)]
    nodes = int(live.t("cache_nodes", 1) or 1)
    for layer, on in (("cache_app", mode != "off"), ("cache_query", query_on)):
        style = "" if on else f', style=dashed, color="{OFF_LINE}"'
        if nodes > 1:  # one arrow to the cluster; the hidden ones keep its nodes in one column
            out.append(f"  {layer} -> valkey_cache_1 [lhead=cluster_cache_cluster{style}];")
            out += [f"  {layer} -> valkey_cache_{i} [style=invis];" for i in range(2, nodes + 1)]
            out.append(f"  {layer} -> valkey_cache [style=invis];")
        else:
            out.append(f"  {layer} -> valkey_cache [{style.lstrip(', ')}];")
    bouncer = bool(live.t("pgbouncer"))
    out.append(from_apps("pgbouncer", bouncer, "writes" if bouncer else ""))
    for k in range(1, shard_count(live) + 1):
        if bouncer:
            out.append(f"  pgbouncer -> s{k}_primary;")
            if int(live.t("replicas", 0) or 0):
                out.append(from_apps(f"s{k}_replica_1", True, "reads" if k == 1 else ""))
        else:
            out.append(from_apps(f"s{k}_primary", True, "SQL" if k == 1 else "", f"cluster_shard_{k}"))
    out.append(from_apps("meta", True, "sign-in, uniqueness"))
    out.append(from_apps("state", True, "topology, buckets"))
    rm_on = bool(live.t("read_model"))
    rm_style = "" if rm_on else f', style=dashed, color="{OFF_LINE}"'
    for k in range(1, shard_count(live) + 1):
        label = ', label="outbox, relay"' if k == 1 else ""
        out.append(f"  s{k}_primary -> readmodel [ltail=cluster_shard_{k}{label}, fontsize=9, constraint=false"
                   f"{rm_style}];")
    out.append(from_apps("readmodel", rm_on, "?view=profile"))
    return out


def build(doc: dict, status: dict | None = None, cache: dict | None = None, readmodel: dict | None = None,
          ratelimit: dict | None = None) -> str:
    """The whole diagram as DOT, left to right along the request path."""
    live = Live(doc, status, cache, readmodel, ratelimit)
    lines = ["digraph workbench {",
             f'  graph [rankdir=LR, compound=true, newrank=true, nodesep=0.25, ranksep=0.5, fontname="{FONT}", '
             'fontsize=12, bgcolor="white"];',
             f'  node [fontname="{FONT}", fontsize=11, margin="0.12,0.06"];',
             f'  edge [fontname="{FONT}", fontsize=10, color="#666666", fontcolor="#444444"];']
    lines += _edge(live) + _apps(live) + _caches(live) + _databases(live) + _state(live) + _edges(live)
    lines.append("}")
    return "\n".join(lines)
