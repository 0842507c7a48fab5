"""The stack controller's reshard endpoint (workbench/stack/reshardjob.py) and its client
(StackClient.reshard, lessons/client.py), against the real test stack.

By default: bad input is refused with 400 naming the field, without the token 401; a reshard the
command itself refuses (to the shard count and strategy the data is already on: cheap, nothing
moves) runs as the controller's child, exits 1 with its error as `last_line`, and puts
reshard_start and reshard_failed on the events timeline; a second POST while one goes, and a POST
during a load-test run, get 409; and a real reshard of the demo data through the controller, 1 -> 2
-> 1 shards (reshard_done each way, users on both shards between, the topology back as found): 8 to 11 s
of the test's time here (2 cores shared with other engineers' stacks)."""
import subprocess
import sys

import pytest
import requests

from conftest import ANONYMOUS, wait_for
from lessons.client import ApiError, StackClient
from workbench.loadgen.client import RunClient
from workbench.stack import config, reshardjob

RESHARD_S = 300   # a real reshard of the demo data on a shared machine


def test_parse_names_the_field_at_fault():
    assert reshardjob.parse({"to": 2}) == (2, None)
    assert reshardjob.parse({"to": 8, "strategy": "directory"}) == (8, "directory")
    for body, field in (([2], "(body)"), ({}, "to"), ({"to": 0}, "to"), ({"to": 9}, "to"), ({"to": 1.5}, "to"),
                        ({"to": "2"}, "to"), ({"to": True}, "to"), ({"to": 2, "strategy": "nope"}, "strategy")):
        with pytest.raises(reshardjob.ReshardInputError) as caught:
            reshardjob.parse(body)
        assert caught.value.field == field, body
    assert reshardjob.last_line("\r[##] 10%  1/9 users\r[####] 20%  2/9 users\n") == "[####] 20%  2/9 users"
    assert reshardjob.last_line("Traceback\nCommandError: no\n  at end\n", failed=True) == "CommandError: no"


@pytest.fixture(scope="module")
def client(stack, stack_config) -> StackClient:
    return StackClient(stack_config)


def post(cfg, body, token=True):
    headers = cfg.operator_headers() if token else ANONYMOUS  # conftest sends the token unless told not to
    return requests.post(cfg.controller_url + "/reshard", headers=headers, timeout=10,
                         **({"data": body} if isinstance(body, str) else {"json": body}))


def finished(client: StackClient) -> dict:
    return wait_for(lambda: (lambda s: not s["running"] and s)(client.reshard_state()), timeout=RESHARD_S,
                    what="the reshard command to exit")


def events_since(client: StackClient, pid: int) -> list[str]:
    return [e["event"] for e in client.events() if e["event"].startswith("reshard_") and e.get("pid") == pid]


def test_bad_input_is_refused_naming_the_field(client, stack_config):
    for body, field in (({"to": 0}, "to"), ({"to": "two"}, "to"), ({"to": 2.5}, "to"), ({}, "to"),
                        ({"to": 2, "strategy": "sideways"}, "strategy"), ([2], "(body)"), ("{not json", "(body)")):
        answer = post(stack_config, body)
        assert answer.status_code == 400 and answer.json()["field"] == field, (body, answer.text)
    refused = post(stack_config, {"to": 2}, token=False)
    assert refused.status_code == 401, (refused.text, refused.request.headers)
    with pytest.raises(ApiError) as caught:
        client.reshard(99)
    assert caught.value.status == 400 and caught.value.field == "to" and "1..8" in str(caught.value)
    assert not client.reshard_state()["running"]


def test_a_refused_reshard_runs_exits_and_is_on_the_timeline(client, stack_config, topology_admin):
    t = topology_admin.settled()["topology"]
    started = client.reshard(t["shards"], t["sharding"])   # already there: the command refuses, nothing moves
    assert (started["to"], started["strategy"]) == (t["shards"], t["sharding"]) and started["pid"]
    # One at a time: the command is still starting Django when this arrives.
    with pytest.raises(ApiError) as caught:
        client.reshard(t["shards"], t["sharding"])   # the same, so a lost race moves nothing either
    assert caught.value.status == 409 and "still going" in str(caught.value)
    done = finished(client)
    assert done["pid"] == started["pid"] and done["returncode"] == 1, done
    assert "already on" in done["last_line"], done
    assert wait_for(lambda: events_since(client, started["pid"]) == ["reshard_start", "reshard_failed"],
                    what="reshard_start and reshard_failed on the timeline")
    assert topology_admin.settled()["topology"] == t


def test_no_reshard_during_a_load_test_run(client, stack_config):
    runs = RunClient(stack_config)
    run_id = runs.start({"mode": "open", "rate": 10, "duration_s": 2}, label="pytest reshard refused")
    try:
        with pytest.raises(ApiError) as caught:
            client.reshard(2)
        assert caught.value.status == 409 and run_id in str(caught.value)
    finally:
        runs.wait(run_id, timeout=120)
    assert not client.reshard_state()["running"]


def test_a_reshard_round_trip_through_the_controller(client, topology_admin):
    t = topology_admin.settled()["topology"]
    assert (t["shards"], t["reshard_shards"]) == (1, 0), "this test starts from one shard"
    try:
        pid = client.reshard(2)["pid"]
        done = finished(client)
        assert done["returncode"] == 0, done
        # The topology reaches the app servers, and the row counts the controller's node report, a
        # moment late; the job itself is in the meta database.
        shards = wait_for(lambda: (lambda s: s.get("shards") == 2 and all(p["users"] for p in s["per_shard"]) and s)(
            client.shards()), what="2 shards served, both holding users")
        assert shards["last_reshard"]["state"] == "done" and len(shards["per_shard"]) == 2
        assert wait_for(lambda: events_since(client, pid) == ["reshard_start", "reshard_done"], what="reshard_done")
    finally:
        finished(client)
        if (client.shards().get("last_reshard") or {}).get("state") in ("moving", "rolling_back"):
            subprocess.run([sys.executable, str(config.PROJECT_DIR / "manage.py"), "reshard", "--rollback"],
                           cwd=config.PROJECT_DIR, timeout=RESHARD_S)   # stopped halfway: undo it first
        if topology_admin.settled()["topology"]["shards"] != t["shards"]:
            pid = client.reshard(t["shards"], t["sharding"])["pid"]
            assert finished(client)["returncode"] == 0
            assert wait_for(lambda: events_since(client, pid) == ["reshard_start", "reshard_done"], what="back")
    assert topology_admin.settled()["topology"] == t
