"""`python -m workbench.loadgen RUN_ID WORKLOAD_JSON [LABEL]`: one run, as the controller starts it.
Progress goes to stdout as JSON lines; the result is saved under <data dir>/results/RUN_ID.json."""
import json
import sys

from workbench.stack import config

from . import runs
from .workload import Workload


def main() -> int:
    run_id, spec = sys.argv[1], json.loads(sys.argv[2])
    label = sys.argv[3] if len(sys.argv) > 3 else ""
    cfg = config.load()
    runs.prioritise()

    def progress(p):
        print(json.dumps({"progress": p}), flush=True)

    result = runs.execute(cfg, Workload.from_dict(spec), run_id=run_id, label=label, on_progress=progress)
    print(json.dumps({"done": result["id"], "valid": result["summary"]["valid"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
