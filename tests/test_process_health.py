"""Process health (issue 11): CPU percent and RSS per process of the stack, in the controller's
status (and so in `status` and the dashboard), each process counted with its children."""
import io
import json
import subprocess
import sys
import time

import psutil
from django.core.management import call_command

from workbench.stack.process import CpuMeter

CORES = psutil.cpu_count() or 1


def test_every_running_process_has_cpu_and_rss(stack, stack_config, controller, http, api_url):
    controller.status()  # the first sample; the next status measures from here
    for _ in range(30):
        http.get(f"{api_url}/users?limit=5", timeout=10)
    time.sleep(0.6)
    procs = controller.status()["processes"]
    assert procs
    for p in procs:
        if p["pid"]:
            assert isinstance(p["cpu_percent"], float), p
            assert 0 <= p["cpu_percent"] <= 100 * CORES + 20, p
            assert p["rss_bytes"] > 0, p
        else:
            assert p["cpu_percent"] is None, p
    busy = [p for p in procs if p["role"] == "app" and p["pid"]]
    assert busy and sum(p["cpu_percent"] for p in busy) > 0, busy  # they answered 30 requests


def test_the_status_command_shows_cpu_and_rss(stack, controller):
    out = io.StringIO()
    call_command("status", stdout=out)
    lines = out.getvalue().splitlines()
    header = next(line for line in lines if line.startswith("ROLE"))
    assert "CPU" in header and "RSS" in header
    rows = [line for line in lines if line.split()[:1] and line.split()[0] in
            {p["role"] for p in controller.status()["processes"]} and "MiB" in line]
    assert rows and all("%" in row for row in rows), rows
    out = io.StringIO()
    call_command("status", "--json", stdout=out)
    for p in json.loads(out.getvalue())["processes"]:
        assert "cpu_percent" in p and "rss_bytes" in p


def test_a_trees_cpu_counts_its_children():
    """A parent that only waits on a busy child: with children it is busy, alone it is idle."""
    spin = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    parent = subprocess.Popen([sys.executable, "-c",
                               f"import subprocess, sys; subprocess.run([sys.executable, '-c', {spin!r}])"])
    try:
        time.sleep(0.5)  # the child started
        meter = CpuMeter()
        cpu = meter.percents({"tree": (parent.pid, True), "alone": (parent.pid, False)})
        assert cpu["tree"] > 20, cpu  # one busy core is 100; the cores are shared, so a margin
        assert cpu["alone"] < 10, cpu
    finally:
        spinners = psutil.Process(parent.pid).children()  # by pid, before the parent goes
        parent.kill()
        parent.wait()
        for child in spinners:
            child.kill()


def test_a_tree_holds_grandchildren_and_leaves_out_other_processes():
    """process.tree walks the one parent map: a grandchild is in its grandparent's tree, a sibling
    process started beside it is not."""
    from workbench.stack import process
    sleeper = "import time; time.sleep(20)"
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                               f"\"import subprocess, sys; subprocess.run([sys.executable, '-c', {sleeper!r}])\"])"])
    other = subprocess.Popen([sys.executable, "-c", sleeper])
    try:
        deadline = time.monotonic() + 20
        while len(psutil.Process(parent.pid).children(recursive=True)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(process.FAMILY_TTL_S + 0.1)  # a map taken before the grandchild started has expired
        pids = {p.pid for p in process.tree(parent.pid)}
        assert pids == {parent.pid, *(c.pid for c in psutil.Process(parent.pid).children(recursive=True))}, pids
        assert len(pids) == 3 and other.pid not in pids
        assert {p.pid for p in process.tree(parent.pid, children=False)} == {parent.pid}
        assert process.tree_rss(parent.pid) > process.tree_rss(other.pid)
    finally:
        family = psutil.Process(parent.pid).children(recursive=True)
        for proc in [parent, other]:
            proc.kill()
            proc.wait()
        for child in family:
            child.kill()
