"""Ask the controller for runs and read them back: used by `manage.py loadtest`, `bench`, the
dashboard and the tests, so every run goes through the same path."""
from __future__ import annotations

import time

import requests

from workbench import topology
from workbench.stack.config import StackConfig


class RunError(RuntimeError):
    """The controller refused or lost a run: `status` is its HTTP status (0 if none), `field` the
    workload field at fault on a 400, `run` the run still going on a 409."""

    def __init__(self, message: str, status: int = 0, field: str | None = None, run: str | None = None):
        super().__init__(message)
        self.status, self.field, self.run = status, field, run


def _error(response) -> RunError:
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text}
    return RunError(body.get("error", response.text), response.status_code, body.get("field"), body.get("run"))


class RunClient:
    def __init__(self, cfg: StackConfig):
        self.cfg = cfg
        self.headers = cfg.operator_headers()

    def start(self, workload: dict, label: str = "") -> str:
        response = requests.post(self.cfg.controller_url + "/runs", json={"workload": workload, "label": label},
                                 headers=self.headers, timeout=10)
        if response.status_code != 202:
            raise _error(response)
        return response.json()["id"]

    def get(self, run_id: str) -> dict:
        response = requests.get(f"{self.cfg.controller_url}/runs/{run_id}", headers=self.headers, timeout=10)
        if response.status_code != 200:
            raise _error(response)
        return response.json()

    def list(self) -> dict:
        response = requests.get(self.cfg.controller_url + "/runs", headers=self.headers, timeout=10)
        if response.status_code != 200:
            raise _error(response)
        return response.json()

    def wait(self, run_id: str, on_progress=None, timeout: float = 900) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.get(run_id)
            if run["status"] == "done":
                return run
            if run["status"] == "failed":
                raise RunError(run.get("error") or "the run failed")
            if on_progress and run.get("progress"):
                on_progress(run["progress"])
            time.sleep(0.5)
        raise RunError(f"run {run_id} did not finish within {timeout:.0f}s")

    def run(self, workload: dict, label: str = "", on_progress=None) -> dict:
        return self.wait(self.start(workload, label), on_progress)

    def closed_and_open(self, workload: dict, options: dict, label: str) -> tuple[dict, dict]:
        """One repetition of a benchmark case: a closed-loop run (throughput at `connections`) and
        an open-model run (latency at `rate`), each `duration` seconds (the bench options)."""
        closed = self.run({**workload, "mode": "closed", "connections": options["connections"],
                           "duration_s": options["duration"]}, f"{label} closed")
        opened = self.run({**workload, "mode": "open", "rate": options["rate"], "duration_s": options["duration"]},
                          f"{label} open")
        return closed, opened


class TopologyError(RuntimeError):
    pass


class TopologyClient:
    """The admin topology API, with the controller's token (admin until the gateway has roles).
    `apply` changes the topology and waits until the controller runs what it asks for."""

    def __init__(self, cfg: StackConfig):
        self.url = cfg.api_url + "/api/v1/admin/topology"
        self.headers = cfg.operator_headers()

    def send(self, method: str, body: dict | None = None, **kw) -> requests.Response:
        return requests.request(method, self.url, json=body, headers=self.headers, timeout=30, **kw)

    def data(self) -> dict:
        response = self.send("GET")
        if response.status_code != 200:
            raise TopologyError(f"GET topology: {response.status_code} {response.text[:300]}")
        return response.json()["data"]

    def settled(self, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            data = self.data()
            if not topology.still_applying(data["pending"]):
                return data
            if time.monotonic() > deadline:
                raise TopologyError(f"the controller did not apply the topology within {timeout:.0f}s: "
                                    f"pending {data['pending']}, progress {data['progress']}")
            time.sleep(0.2)

    def apply(self, patch: dict, *, replace: bool = False, timeout: float = 180) -> dict:
        response = self.send("PUT" if replace else "PATCH", patch)
        if response.status_code != 200:
            raise TopologyError(f"topology change refused: {response.status_code} {response.text[:500]}")
        return self.settled(timeout)
