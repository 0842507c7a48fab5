"""Oversized and deeply nested bodies through Caddy, many at once (tests/test_bad_input.py has one
of each kind, alone): JSON nested thousands deep in objects, arrays and both mixed, arrays of tens
of thousands of elements, strings far past each field's limit, thousands of keys, numbers past a
double's range or Python's 4,300-digit limit, a gzip bomb, bodies past the app's cap (64 KiB) and
past the edge's (3 MiB). Each is a 400, 411, 413 or 415 problem+json, never a 5xx, answered within
seconds; meanwhile a normal client is served, and afterwards no request is left in flight at any
app server (no worker hung on one of them)."""
import gzip
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import wait_for
from hostile import SOAK, Plain, new_member, record
from workbench.stack import caddy

ROUNDS = 10 if SOAK else 2      # each body is sent this many times, all of them at once
ANSWER_S = 10.0                 # the slowest refusal allowed (generous: a shared 2-core machine)
NORMAL_S = 3.0                  # the slowest normal read allowed meanwhile


def nested(depth: int, opening: str, closing: str, inner: str = "1") -> str:
    return opening * depth + inner + closing * depth


def bodies() -> dict:
    """name -> (raw body, extra headers, the statuses it may get). Sizes stay under the app's 64 KiB
    unless the case is about size."""
    post = '{"title": "t", "body": %s}'
    return {
        "objects nested 5,000 deep": (post % nested(5000, '{"a":', "}"), {}, {400}),
        "arrays nested 30,000 deep": (post % nested(30000, "[", "]"), {}, {400}),
        "objects and arrays nested 8,000 deep": (post % nested(8000, '[{"a":', "}]"), {}, {400}),
        "a top-level array nested 32,000 deep": (nested(32000, "[", "]", ""), {}, {400}),
        "an array of 30,000 numbers": (post % ("[" + ",".join(["0"] * 30000) + "]"), {}, {400}),
        "an array of 20,000 empty objects": (post % ("[" + ",".join(["{}"] * 20000) + "]"), {}, {400}),
        "a top-level array of 20,000 strings": ("[" + ",".join(['""'] * 20000) + "]", {}, {400}),
        "a 60,000-character body field": (post % json.dumps("b" * 60000), {}, {400}),
        "10,000 escaped characters in the title": ('{"title": "' + "\\u00e9" * 10000 + '"}', {}, {400}),
        "5,000 unknown keys": ("{" + ",".join(f'"k{i}":1' for i in range(5000)) + "}", {}, {400}),
        "an integer of 20,000 digits": ('{"title": 1' + "0" * 20000 + "}", {}, {400}),
        "a number past a double (1e999999)": ('{"title": 1e999999}', {}, {400}),
        "a number as the title": ('{"title": 42}', {}, {400}),
        "a gzip bomb (50 MiB of zeros, declared gzip)": (gzip.compress(b"0" * (50 << 20)),
                                                         {"Content-Encoding": "gzip"}, {400}),
        "1 MiB of JSON (the app's cap is 64 KiB)": (post % json.dumps("b" * (1 << 20)), {}, {413}),
        "2.9 MiB of JSON": (post % json.dumps("b" * int(2.9 * (1 << 20))), {}, {413}),
        "8 MiB of JSON (past the edge's 3 MiB)": (post % json.dumps("b" * (8 << 20)), {}, {413}),
        "a 1 MiB body declared text/plain": ("x" * (1 << 20), {"Content-Type": "text/plain"}, {413, 415}),
        "a 60 KiB multipart body": ("--b\r\n" + "x" * 60000 + "\r\n--b--\r\n",
                                    {"Content-Type": "multipart/form-data; boundary=b"}, {415}),
    }


@pytest.fixture(scope="module")
def owner(api_url):
    user, token = new_member(api_url, "hb")
    return user["id"], token


def send(url: str, name: str, raw, headers: dict) -> tuple:
    data = raw.encode() if isinstance(raw, str) else raw
    started = time.monotonic()
    with Plain() as http:
        try:
            response = http.post(url, data=data, headers=headers, timeout=60)
        except requests.ConnectionError as exc:
            return name, "connection closed", str(exc)[:100], time.monotonic() - started, None
    kind = response.headers.get("Content-Type", "")
    return name, response.status_code, kind, time.monotonic() - started, response


def test_hostile_bodies_many_at_once_are_refused_quickly_and_hang_no_worker(stack, stack_config, api_url, owner):
    user_id, token = owner
    url = f"{api_url}/users/{user_id}/posts"
    cases = bodies()
    normal, stop = [], threading.Event()

    def normal_reads():
        with Plain() as http:
            while not stop.is_set():
                started = time.monotonic()
                response = http.get(f"{api_url}/users/{user_id}", timeout=30)
                normal.append((response.status_code, time.monotonic() - started))
                time.sleep(0.05)

    reader = threading.Thread(target=normal_reads)
    reader.start()
    try:
        jobs = [(name, raw, {"Content-Type": "application/json", **token, **extra})
                for _ in range(ROUNDS) for name, (raw, extra, _) in cases.items()]
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            answers = list(pool.map(lambda job: send(url, *job), jobs))
    finally:
        stop.set()
        reader.join()
    wrong = []
    for name, status, kind, seconds, response in answers:
        allowed = cases[name][2]
        if status not in allowed or not kind.startswith("application/problem+json") or seconds > ANSWER_S:
            wrong.append((name, status, kind, round(seconds, 2), response.text[:200] if response is not None else ""))
        elif response.json()["status"] != status:
            wrong.append((name, "status member", response.json()))
    assert not wrong, wrong
    assert normal and all(code == 200 for code, _ in normal), normal
    slowest = max(seconds for _, seconds in normal)
    assert slowest < NORMAL_S, f"a normal read took {slowest:.2f} s while the hostile bodies were sent"
    # No worker is left holding one of them.
    wait_for(lambda: sum(row["in_flight"] for row in caddy.upstreams(stack_config)) == 0, timeout=30,
             what="no request in flight at any app server")
    # Nothing was written: the owner has no post.
    with Plain() as http:
        assert http.get(f"{url}", timeout=10).json()["data"]["results"] == []
    record("oversized and nested bodies", kinds=len(cases), requests=len(answers), server_errors=0,
           slowest_refusal_s=round(max(a[3] for a in answers), 2), normal_reads=len(normal),
           slowest_normal_read_s=round(slowest, 2))


def test_many_keys_get_a_bounded_answer(api_url, owner):
    """5,000 unknown keys in 60 KiB: every one is named (the API's policy), answered in well under a
    second of server time; the answer's size grows with the keys, within about 100 bytes each."""
    user_id, token = owner
    body = "{" + ",".join(f'"k{i}":1' for i in range(5000)) + "}"
    with Plain() as http:
        response = http.post(f"{api_url}/users/{user_id}/posts", data=body.encode(),
                             headers={"Content-Type": "application/json", **token}, timeout=30)
    assert response.status_code == 400
    named = {e["field"] for e in response.json()["errors"]}
    assert {f"k{i}" for i in range(5000)} <= named
    assert len(response.content) < 5000 * 120, len(response.content)
