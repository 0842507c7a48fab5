"""Benchmark: the controller-side CPU of the process trees one GET /status walks (the RSS and CPU of
each supervised process with its children), two ways, alternated ten times in one run on the same
pids: psutil's children(recursive=True) per tree, as before, and process.tree over one parent map.

    WORKBENCH_PORT_BASE=... WORKBENCH_DATA_DIR=... python -m workbench.stack.statuscost
"""
import json

import psutil
import requests

from . import config, process

ROUNDS = 10


def main() -> None:
    cfg = config.load()
    rows = requests.get(cfg.controller_url + "/status", headers=cfg.operator_headers(), timeout=30).json()["processes"]
    pids = [r["pid"] for r in rows if r["pid"]]

    def per_tree():
        for pid in pids:
            for _ in range(2):   # RSS, then CPU: each walked the tree on its own
                root = psutil.Process(pid)
                [root, *root.children(recursive=True)]

    def one_map():
        process._family = (0.0, {})   # a fresh map, as a status call after FAMILY_TTL_S takes
        for pid in pids:
            for _ in range(2):
                process.tree(pid)

    me, out = psutil.Process(), {"children(recursive=True) per tree": [], "one parent map": []}
    for _ in range(ROUNDS):
        for name, fn in zip(out, (per_tree, one_map)):
            before = sum(me.cpu_times()[:2])
            fn()
            out[name].append(round((sum(me.cpu_times()[:2]) - before) * 1000, 1))
    print(json.dumps({"trees": len(pids), "processes on the machine": len(psutil.pids()),
                      **{k: {"median CPU ms": sorted(v)[len(v) // 2], "min": min(v), "max": max(v)}
                         for k, v in out.items()}}, indent=1))


if __name__ == "__main__":
    main()
