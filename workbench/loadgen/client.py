"""Ask the controller for runs and read them back: used by `manage.py loadtest`, `bench`, the
dashboard and the tests, so every run goes through the same path."""
from __future__ import annotations

import time

import requests

from workbench.stack.config import StackConfig


class RunError(RuntimeError):
    pass


class RunClient:
    def __init__(self, cfg: StackConfig):
        self.cfg = cfg
        self.headers = {"Authorization": f"Bearer {cfg.controller_token() or ''}"}

    def start(self, workload: dict, label: str = "") -> str:
        response = requests.post(self.cfg.controller_url + "/runs", json={"workload": workload, "label": label},
                                 headers=self.headers, timeout=10)
        if response.status_code != 202:
            raise RunError(response.json().get("error", response.text))
        return response.json()["id"]

    def get(self, run_id: str) -> dict:
        response = requests.get(f"{self.cfg.controller_url}/runs/{run_id}", headers=self.headers, timeout=10)
        if response.status_code != 200:
            raise RunError(response.json().get("error", response.text))
        return response.json()

    def list(self) -> dict:
        return requests.get(self.cfg.controller_url + "/runs", headers=self.headers, timeout=10).json()

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
