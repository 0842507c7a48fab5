"""Calibrate the load generator, as issue 3 asks:
1. its own ceiling against a trivial sink (Caddy's static `respond`), generator and sink pinned
   to separate cores;
2. its closed mode against Debian's wrk (also closed-loop) at equal connections on the same
   endpoint of the stack, interleaved in one session. Target: throughput and p50 within 10%.
Writes the tables into docs/benchmarks.md."""
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone

import requests
from django.core.management.base import BaseCommand, CommandError

from workbench.loadgen import engine
from workbench.loadgen.runs import machine, prioritise
from workbench.loadgen.workload import Workload
from workbench.loadgen.report import write_doc_block
from workbench.stack import binaries, config



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_generator(w: Workload) -> dict:
    return engine.run(w, w.target, [], [], 1).summary(w.duration_s)


def parse_wrk(output: str) -> dict:
    """Requests/sec and the p50 of `wrk --latency`."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    value, unit = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()
    p50_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return {"rps": rps, "p50_ms": p50_ms}


class Command(BaseCommand):
    help = "Measure the generator's ceiling and compare its closed mode with wrk; write docs/benchmarks.md."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--duration", type=float, default=5.0)
        parser.add_argument("--repeats", type=int, default=3)
        parser.add_argument("--connections", type=int, default=8)
        parser.add_argument("--path", default="/healthz", help="stack endpoint for the wrk comparison")
        parser.add_argument("--no-write", action="store_true")

    def handle(self, *args, **o):
        if not shutil.which("wrk"):
            raise CommandError("wrk is missing: apt-get install wrk")
        if (os.cpu_count() or 1) < 2:
            raise CommandError("pinning generator and sink to separate cores needs 2 cores")
        prioritise()  # the same footing as runs started by the controller
        ceiling = self.ceiling(o["duration"])
        comparison = self.versus_wrk(o)
        text = self.render(ceiling, comparison, o)
        self.stdout.write(text)
        if not o["no_write"]:
            write_doc_block("calibrate", text, "Calibration of the load generator")

    def ceiling(self, duration: float) -> dict:
        port = free_port()
        conf = {"admin": {"disabled": True}, "apps": {"http": {"servers": {"sink": {
            "listen": [f"127.0.0.1:{port}"], "automatic_https": {"disable": True},
            "routes": [{"handle": [{"handler": "static_response", "body": "ok", "status_code": 200}]}]}}}}}
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "sink.json")
            with open(path, "w") as f:
                json.dump(conf, f)
            sink = subprocess.Popen(["taskset", "-c", "1", str(binaries.caddy()), "run", "--config", path],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env={**os.environ, "HOME": tmp, "XDG_DATA_HOME": tmp, "XDG_CONFIG_HOME": tmp})
            old = os.sched_getaffinity(0)
            try:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    try:
                        requests.get(f"http://127.0.0.1:{port}/", timeout=1)
                        break
                    except requests.RequestException:
                        time.sleep(0.1)
                os.sched_setaffinity(0, {0})
                steps, best = [], 0
                for rate in (500, 1000, 1500, 2000, 3000, 4000, 6000, 8000):
                    w = Workload(rate=rate, duration_s=duration, path="/", target=f"http://127.0.0.1:{port}",
                                 processes=1).validate()
                    s = run_generator(w)
                    held = s["valid"] and s["error_count"] == 0 and s["ok"] >= 0.99 * s["scheduled"]
                    steps.append({"rate": rate, "achieved": s["achieved_rps"], "late_share": s["generator_lag"]["late_share"],
                                  "lag_p99_ms": s["generator_lag"]["p99_ms"], "p50_ms": s["latency"]["p50_ms"],
                                  "valid": s["valid"], "held": held})
                    self.stdout.write(f"  ceiling step {steps[-1]}")
                    if not held:
                        break
                    best = rate
            finally:
                os.sched_setaffinity(0, old)
                sink.terminate()
                sink.wait(timeout=10)
        return {"ceiling_rps": best, "steps": steps}

    def versus_wrk(self, o) -> dict:
        cfg = config.load()
        url = cfg.api_url + o["path"]
        ours, theirs = [], []
        for rep in range(o["repeats"]):
            out = subprocess.run(["wrk", "-t1", f"-c{o['connections']}", f"-d{o['duration']:g}s", "--latency", url],
                                 capture_output=True, text=True, timeout=o["duration"] + 60).stdout
            theirs.append(parse_wrk(out))
            w = Workload(mode="closed", connections=o["connections"], duration_s=o["duration"], path=o["path"],
                         target=cfg.api_url, processes=1).validate()
            s = run_generator(w)
            ours.append({"rps": s["achieved_rps"], "p50_ms": s["latency"]["p50_ms"]})
            self.stdout.write(f"  #{rep + 1} wrk {theirs[-1]}  ours {ours[-1]}")
        return {"wrk": theirs, "ours": ours, "url": url}

    def render(self, ceiling: dict, cmp: dict, o) -> str:
        m = machine()
        med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
        w_rps, w_p50 = med(cmp["wrk"], "rps"), med(cmp["wrk"], "p50_ms")
        o_rps, o_p50 = med(cmp["ours"], "rps"), med(cmp["ours"], "p50_ms")
        rps_gap, p50_gap = o_rps / w_rps - 1, o_p50 / w_p50 - 1
        verdict = lambda gap: "met" if abs(gap) <= 0.10 else "MISSED"  # noqa: E731
        lines = [
            f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `python manage.py calibrate --duration "
            f"{o['duration']:g} --repeats {o['repeats']} --connections {o['connections']} --path {o['path']}` on "
            f"{m['cores']} cores / {m['memory_bytes'] / 2**30:.0f} GiB ({m['platform']}).",
            "",
            "### Generator ceiling (one process on core 0; Caddy `static_response` sink on core 1; open model)",
            "",
            "| asked (req/s) | achieved (ok/s) | sends > 1 ms late | lag p99 (ms) | p50 (ms) | valid | held |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in ceiling["steps"]:
            lines.append(f"| {s['rate']:,} | {s['achieved']:,.0f} | {s['late_share']:.2%} | {s['lag_p99_ms']} | "
                         f"{s['p50_ms']} | {s['valid']} | {s['held']} |")
        lines += ["", f"Ceiling of one generator process: **{ceiling['ceiling_rps']:,} req/s** (the highest step that "
                      "stayed valid with every request answered). Runs spread over processes above "
                      "`PER_PROCESS_RATE` in `workbench/loadgen/runs.py`; a run asking more than half the ceiling "
                      "carries a warning, and its measured lag decides validity.", "",
                  f"### Closed mode against wrk, {o['connections']} connections, `{cmp['url']}` (interleaved)", "",
                  "| repetition | wrk req/s | ours req/s | wrk p50 (ms) | ours p50 (ms) |", "|---|---|---|---|---|"]
        for i, (a, b) in enumerate(zip(cmp["wrk"], cmp["ours"]), 1):
            lines.append(f"| {i} | {a['rps']:,.0f} | {b['rps']:,.0f} | {a['p50_ms']:.2f} | {b['p50_ms']:.2f} |")
        lines += ["", f"Medians: throughput ours/wrk = {o_rps / w_rps:.2f} ({rps_gap:+.0%}, target within 10%: "
                      f"{verdict(rps_gap)}); p50 ours/wrk = {o_p50 / w_p50:.2f} ({p50_gap:+.0%}, target within 10%: "
                      f"{verdict(p50_gap)}). Both generators share the two cores with the stack they measure."]
        return "\n".join(lines)
