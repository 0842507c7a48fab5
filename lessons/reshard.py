"""The dashboard's one way to reshard: start `manage.py reshard` through the stack controller
(POST /reshard, workbench/stack/reshardjob.py) and follow it with a progress bar, drawn from the
admin shards API's `last_reshard` (the job as the command records it, batch by batch) while the
controller's GET /reshard says whether the command is still running and how it exited. Used by the
Design and Scale pages."""
from __future__ import annotations

import time

from lessons.client import ApiError, StackClient

BATCH_USERS = 500   # api/routing/reshard.py's batch (WORKBENCH_RESHARD_BATCH unset)
POLL_S = 0.5
UNDER_WAY = ("moving", "rolling_back")
FIX = ("finish it with `python manage.py reshard --resume`, or move it back with "
       "`python manage.py reshard --rollback`")


def fraction(job: dict | None) -> float:
    """How far a reshard has looked through the users (batches of 500), 0..1, from the admin shards
    API's `last_reshard`."""
    if not job:
        return 0.0
    if job.get("state") in ("done", "rolled_back"):
        return 1.0
    total = job.get("users_total") or 0
    return min(job.get("batches", 0) * BATCH_USERS / total, 0.99) if total else 0.0


def line(job: dict) -> str:
    """A reshard as the admin shards API reports it (`last_reshard`), in a line."""
    (s_from, n_from), (s_to, n_to) = job["from"], job["to"]
    total = job.get("users_total") or 0
    text = f"Reshard #{job['id']} ({job['state']}): {s_from} x {n_from} -> {s_to} x {n_to}: "
    if not total:
        return text + "starting the new shards' nodes and counting the rows"
    text += (f"batch {job['batches']} of about {-(-total // BATCH_USERS)}, {job['users_moved']:,} of {total:,} users "
             f"moved ({job['users_moved'] / total:.1%}), {job['posts_moved']:,} posts")
    return text + (f", {job['seconds']:.1f} s" if job.get("seconds") else "")


def show(slot, data: dict, since_id: int | None = 0) -> dict | None:
    """A reshard's progress from the admin shards API's answer (`data`): a progress bar in `slot`.
    Only a job newer than `since_id` counts (None: the newest). Returns the job shown, if any."""
    if "error" in data:
        slot.warning(f"The admin shards API did not answer: {data['error']}", icon=":material/warning:")
        return None
    job = _mine(data, since_id)
    if not job:
        slot.progress(0.0, text=f"Reshard: the controller runs {data.get('shard_groups', '?')} shard group(s); "
                                "the job is starting")
        return None
    slot.progress(fraction(job), text=line(job))
    return job


def _mine(data: dict, since_id: int | None) -> dict | None:
    job = data.get("last_reshard")
    return job if job and (since_id is None or job["id"] > since_id) else None


def running(client: StackClient) -> bool:
    """Whether the controller is running a reshard now (False when it cannot say)."""
    try:
        return bool(client.reshard_state().get("running"))
    except ApiError:
        return False


def run(client: StackClient, to: int, strategy: str | None, slot, timeout: float) -> dict:
    """Start a reshard to `to` shards (`strategy` None: the current one) and follow it to its end in
    `slot`. Returns the finished job as the admin shards API reports it. Raises ApiError."""
    before = client.shards()
    if "error" in before:
        raise ApiError(f"The admin shards API did not answer ({before['error']}), so no reshard was started. "
                       "Check the stack with `python manage.py status`.")
    since = (before.get("last_reshard") or {}).get("id", 0)
    client.reshard(to, strategy)
    return follow(client, slot, since, timeout)


def follow(client: StackClient, slot, since_id: int | None, timeout: float) -> dict:
    """Follow the controller's reshard until the command exits; the job newer than `since_id` (None:
    the newest), finished. Raises ApiError saying what failed and how to fix it."""
    deadline = time.monotonic() + timeout
    while (state := client.reshard_state())["running"]:
        if time.monotonic() > deadline:
            raise ApiError(f"The reshard to {state['to']} shards (pid {state['pid']}) is still going after "
                           f"{timeout:.0f} s; it goes on by itself in the controller. `python manage.py reshard "
                           f"--status` shows it; its output is in `{state['log']}`.")
        show(slot, client.shards(), since_id)
        time.sleep(POLL_S)
    data = client.shards()
    job = _mine(data, since_id)
    if state["returncode"] == 0 and job and job["state"] == "done":
        show(slot, data, since_id)
        return job
    said = f"The reshard to {state['to']} shards failed (exit {state['returncode']}): {state['last_line']}."
    if job and job["state"] in UNDER_WAY:
        fix = f" {line(job)}: it stopped halfway; {FIX}."
    elif job or "error" in data:
        fix = f" If it started, {FIX}."
    else:
        fix = " No reshard job was created, so nothing moved: fix what it says and start again."
    raise ApiError(said + fix + f" Its output is in `{state['log']}`.")
