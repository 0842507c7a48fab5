"""`python -m workbench.loadgen RUN_ID WORKLOAD_JSON [LABEL]`: one run, as the controller starts it.
Progress goes to stdout as JSON lines; the result is saved under <data dir>/results/RUN_ID.json."""
import json
import os
import sys

from workbench.stack import config

from . import runs
from .workload import Workload


def prioritise() -> None:
    """The generator shares the two cores with the stack it measures. With real-time priority
    (root only; else a higher nice), a send is not queued behind a busy app worker, so it leaves
    on time. Its lag is measured and judged either way; this only makes valid runs possible."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        return
    except (OSError, AttributeError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError:
        pass


def main() -> int:
    run_id, spec = sys.argv[1], json.loads(sys.argv[2])
    label = sys.argv[3] if len(sys.argv) > 3 else ""
    cfg = config.load()
    prioritise()

    def progress(p):
        print(json.dumps({"progress": p}), flush=True)

    result = runs.execute(cfg, Workload.from_dict(spec), run_id=run_id, label=label, on_progress=progress)
    print(json.dumps({"done": result["id"], "valid": result["summary"]["valid"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
