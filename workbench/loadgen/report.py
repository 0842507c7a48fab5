"""Text tables of runs, for the terminal and docs/benchmarks.md."""
from __future__ import annotations

import statistics
from pathlib import Path

BENCHMARKS_DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def write_doc_block(name: str, text: str, heading: str, doc_path: Path = BENCHMARKS_DOC) -> None:
    """Replace the block between `<!-- name:start -->` and `<!-- name:end -->` in the doc, or add it
    at the end under `heading`: each benchmark command owns one block and rewrites only that."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = doc_path.read_text() if doc_path.exists() else ""
    block = f"{start}\n{text}\n{end}"
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc += f"\n## {heading}\n\n{block}\n"
    doc_path.write_text(doc)


def median(values):
    """The median of the figures there are (an invalid run adds None), or None."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def add_bench_arguments(parser, *, duration: float, rate: float, connections: int) -> None:
    """The options every benchmark command takes, with that command's defaults."""
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=duration, help="seconds per measurement")
    parser.add_argument("--rate", type=float, default=rate, help="open-model rate for the latency columns")
    parser.add_argument("--connections", type=int, default=connections, help="closed-loop connections for throughput")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")


def new_row() -> dict:
    return {"thr": [], "p50": [], "p95": [], "valid": [], "runs": []}


def record_pair(row: dict, closed: dict, opened: dict) -> None:
    """One repetition of a benchmark case: closed-loop throughput and open-model latency. A run
    that is INVALID (the generator set the pace) is counted as such and adds no figure."""
    c, o = closed["summary"], opened["summary"]
    row["thr"].append(c["achieved_rps"] if c["valid"] else None)
    row["p50"].append(o["latency"]["p50_ms"] if o["valid"] else None)
    row["p95"].append(o["latency"]["p95_ms"] if o["valid"] else None)
    row["valid"].append(c["valid"] and o["valid"])
    row["runs"] += [closed["id"], opened["id"]]


def emulation_note(topology: dict | None) -> str:
    """Whether a run had emulation on, and with what: every result must say."""
    emulation = (topology or {}).get("emulation") or {}
    parts = []
    if emulation.get("enabled"):
        parts.append(f"on (injected round trip {emulation['rtt_ms']:g} ms per query, "
                     f"{emulation['node_concurrency'] or 'unlimited'} concurrent queries per node)")
    if emulation.get("stale_replica"):
        parts.append(f"replica-{emulation['stale_replica']} applies {emulation['apply_delay_ms']:g} ms late")
    if emulation.get("remote_replica"):
        parts.append(f"replica-{emulation['remote_replica']} in another region "
                     f"({emulation['region_rtt_ms']:g} ms round trip)")
    return "emulation: " + ("; ".join(parts) if parts else "off (plain loopback measurement)")


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_table(result: dict) -> str:
    s = result["summary"]
    w = result["workload"]
    lat, svc, lag = s["latency"], s["service_time"], s["generator_lag"]
    lines = [
        f"run {result['id']}  {result['label']}".rstrip(),
        f"model: {result['model']}; target {result['target']}; {result['processes']} generator process(es)",
        f"topology version {result.get('topology', {}).get('version')}; {emulation_note(result.get('topology'))}",
        f"asked {w['rate']:g}/s for {w['duration_s']:g}s" if w["mode"] == "open"
        else f"{w['connections']} connections for {w['duration_s']:g}s",
        f"scheduled {s['scheduled']:,}  sent {s['sent']:,}  ok {s['ok']:,}  errors {s['error_count']:,} "
        f"{s['errors'] or ''}  dropped {s['dropped']:,}",
        f"achieved {s['achieved_rps']:,} ok/s (sent {s['sent_rps']:,}/s)",
        "",
        f"{'latency (ms)':<34}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}",
        f"{'from intended send (what users see)':<34}{_ms(lat['p50_ms']):>9}{_ms(lat['p95_ms']):>9}"
        f"{_ms(lat['p99_ms']):>9}{_ms(lat['max_ms']):>9}",
        f"{'from actual send (service time)':<34}{_ms(svc['p50_ms']):>9}{_ms(svc['p95_ms']):>9}"
        f"{_ms(svc['p99_ms']):>9}{_ms(svc['max_ms']):>9}",
        f"{'generator lag':<34}{_ms(lag['p50_ms']):>9}{_ms(lag['p95_ms']):>9}{_ms(lag['p99_ms']):>9}"
        f"{_ms(lag['max_ms']):>9}",
        "",
        f"machine: {result['machine']['cores']} cores, CPU mean {result['machine']['cpu']['mean_percent']}% "
        f"max {result['machine']['cpu']['max_percent']}%",
    ]
    for header, counts in s["attribution"].items():
        lines.append(f"{header}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    if s.get("server_timing_ms"):
        lines.append("Server-Timing, mean per response (ms): "
                     + ", ".join(f"{k} {v:.2f}" for k, v in s["server_timing_ms"].items()))
    lines.append("VALID" if s["valid"] else f"INVALID: {s['invalid_reason']} (not a server latency)")
    lines += [f"warning: {x}" for x in result.get("warnings", [])]
    return "\n".join(lines)


def ratio_value(a, b) -> float | None:
    """B/A, or None where it means nothing (no A, or A is zero)."""
    if a in (None, 0) or b is None:
        return None
    return b / a


def ratio(a, b) -> str:
    value = ratio_value(a, b)
    return "-" if value is None else f"{value:.2f}x"


def compare_rows(a: dict, b: dict) -> list[dict]:
    """The figures two runs are compared by, one dict per row: `name`, `a`, `b`, `ratio` (B/A or
    None) and `latency` (True for a latency row, which is not the server's if its run is invalid).
    `compare_table` prints these; the dashboard shows them."""
    sa, sb = a["summary"], b["summary"]
    rows = [("achieved ok/s", sa["achieved_rps"], sb["achieved_rps"], False)]
    for p in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
        rows.append((f"latency {p[:-3]} (ms)", sa["latency"][p], sb["latency"][p], True))
    rows.append(("errors", sa["error_count"], sb["error_count"], False))
    return [{"name": name, "a": va, "b": vb, "ratio": ratio_value(va, vb), "latency": latency}
            for name, va, vb, latency in rows]


def compare_table(a: dict, b: dict) -> str:
    lines = [f"A = {a['id']} {a['label']}", f"B = {b['id']} {b['label']}",
             f"{'':<20}{'A':>12}{'B':>12}{'B/A':>9}"]
    for row in compare_rows(a, b):
        lines.append(f"{row['name']:<20}{_fmt(row['a']):>12}{_fmt(row['b']):>12}{ratio(row['a'], row['b']):>9}")
    for run, tag in ((a, "A"), (b, "B")):
        if not run["summary"]["valid"]:
            lines.append(f"{tag} is INVALID: {run['summary']['invalid_reason']}")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else (f"{value:,.2f}" if isinstance(value, float) else f"{value:,}")


def shard_of_node(node: str) -> int | None:
    """The shard an `X-DB-Node` value names: `primary`/`replica-2` (one shard) are shard 1,
    `shard-3/primary` is shard 3; None for anything else (`meta`, a missing header)."""
    if node in ("primary",) or node.startswith("replica-"):
        return 1
    if node.startswith("shard-"):
        head = node.split("/", 1)[0][len("shard-"):]
        return int(head) if head.isdigit() else None
    return None


def shard_shares(result: dict) -> dict[int, float]:
    """The share of a run's answers that each shard gave, from its `X-DB-Node` attribution."""
    counts: dict[int, int] = {}
    for node, n in result["summary"].get("attribution", {}).get("X-DB-Node", {}).items():
        shard = shard_of_node(node)
        if shard is not None:
            counts[shard] = counts.get(shard, 0) + n
    total = sum(counts.values())
    return {k: counts[k] / total for k in sorted(counts)} if total else {}


def cpu_mean(result: dict) -> float | None:
    """The machine's mean CPU use (percent of all cores) during a run."""
    return ((result.get("machine") or {}).get("cpu") or {}).get("mean_percent")
