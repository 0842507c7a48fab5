"""Benchmark: press the Scale page's five presets in order, as a learner would, and print each
press's saved runs (emulation off, then on). The presses go through Streamlit's AppTest on the page's
own `render()` and buttons, against the stack chosen by WORKBENCH_PORT_BASE / WORKBENCH_DATA_DIR;
the page's default workload (open model, 100 req/s, 5 s, 90% reads, Zipf popularity).

    WORKBENCH_PORT_BASE=... WORKBENCH_DATA_DIR=... python -m lessons.scalebench [preset ...]
"""
import json
import sys
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from lessons import measured, phases

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom lessons.app_pages import scale\nscale.render()\n"
PRESS_TIMEOUT_S = 600


def main(keys: list[str]) -> int:
    keys = keys or [p.key for p in phases.PRESETS]
    rc = measured.client()
    at = AppTest.from_string(SCRIPT, default_timeout=PRESS_TIMEOUT_S).run()
    for key in keys:
        before = {r["id"] for r in rc.list()["runs"]}
        started = time.monotonic()
        at.button(key=f"scale_preset_{key}").click().run(timeout=PRESS_TIMEOUT_S)
        took = time.monotonic() - started
        problems = [e.value for e in at.error] + [str(e.value) for e in at.exception]
        new = sorted(r["id"] for r in rc.list()["runs"] if r["id"] not in before)
        for run_id in new:
            result = rc.get(run_id)
            f = measured.figures(result)
            cpu = ((result.get("machine") or {}).get("cpu") or {}).get("mean_percent")
            print(json.dumps({"preset": key, "press_s": round(took, 1), **{k: f[k] for k in (
                "run", "label", "valid", "invalid_reason", "ok/s", "errors", "p50_ms", "p95_ms", "p99_ms")},
                "cache_hit_rate": phases.cache_hit_rate(result["summary"].get("attribution") or {}),
                "cpu_mean_percent": cpu}), flush=True)
        if problems or not new:
            print(json.dumps({"preset": key, "press_s": round(took, 1), "problems": problems}), flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
