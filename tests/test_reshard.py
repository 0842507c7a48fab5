"""Resharding on the real stack: rows move between real PostgreSQL shards while the API takes
writes, nothing acknowledged is lost or doubled, and a SIGKILLed reshard resumes or rolls back.
Small batches (WORKBENCH_RESHARD_BATCH) make several batches out of the test stack's users."""
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import psycopg
import pytest
import requests

from api.routing.shards import shard_of
from conftest import Background, wait_for
from tests.settings import ROOT

BATCH = 40


def manage(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "WORKBENCH_RESHARD_BATCH": str(BATCH), **(env or {})})


def reshard(*args, **kw):
    result = manage("reshard", *args, **kw)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def shard_rows(cfg, groups, sql):
    out = {}
    for k in range(1, groups + 1):
        with psycopg.connect(cfg.shard_url(k), autocommit=True) as conn:
            out[k] = conn.execute(sql).fetchall()
    return out


def placement(cfg, groups):
    """user id -> shards holding it; post id -> (user id, shard) for every copy."""
    users, posts = {}, {}
    for k, rows in shard_rows(cfg, groups, "SELECT id FROM api_user").items():
        for (uid,) in rows:
            users.setdefault(uid, []).append(k)
    for k, rows in shard_rows(cfg, groups, "SELECT id, user_id FROM api_post").items():
        for pid, uid in rows:
            posts.setdefault(pid, []).append((uid, k))
    return users, posts


def assert_placed(cfg, groups, shards, strategy):
    """Every user exactly once, on its shard; every post exactly once, beside its user."""
    users, posts = placement(cfg, groups)
    assert users, "no users at all"
    doubled = {u: ks for u, ks in users.items() if len(ks) != 1}
    assert not doubled, f"users on more than one shard: {list(doubled.items())[:5]}"
    wrong = {u: ks[0] for u, ks in users.items() if ks[0] != shard_of(u, shards, strategy)}
    assert not wrong, f"{len(wrong)} users on the wrong shard, e.g. {list(wrong.items())[:5]}"
    doubled = {p: c for p, c in posts.items() if len(c) != 1}
    assert not doubled, f"posts on more than one shard: {list(doubled.items())[:5]}"
    apart = [p for p, [(u, k)] in posts.items() if users.get(u, [None])[0] != k]
    assert not apart, f"{len(apart)} posts not beside their user"
    return users, posts


def topology_placement(api_url, admin_headers):
    doc = requests.get(f"{api_url}/admin/topology", headers=admin_headers, timeout=10).json()["data"]
    t = doc["topology"]
    return t["sharding"], t["shards"], t["reshard_shards"]


@pytest.fixture(scope="module")
def admin_headers(stack_config):
    return {"Authorization": f"Bearer {stack_config.controller_token()}"}


@pytest.fixture(scope="module", autouse=True)
def back_to_one_shard(stack, stack_config):
    yield
    # Leave the session's stack as the other tests expect it: one shard, hash.
    status = manage("reshard", "--status").stdout
    if "moving" in status or "rolling_back" in status:
        manage("reshard", "--rollback")
    manage("reshard", "--to", "1", "--strategy", "hash")


def test_placement_fields_change_only_through_reshard(api_url, admin_headers):
    response = requests.patch(f"{api_url}/admin/topology", json={"shards": 2}, headers=admin_headers, timeout=10)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert "shards" in str(problem) and "reshard" in str(problem)


class Writers(Background):
    """Posts by existing users and sign-ups, through Caddy, each thread at a bounded rate until
    stopped (at most limit_s of it); every acknowledged write is recorded."""

    def __init__(self, api_url, user_ids, threads=2, rate_per_thread=15.0, limit_s=300):
        self.api_url, self.user_ids, self.rate = api_url, list(user_ids), rate_per_thread
        self.posts, self.users, self.failures = [], [], Counter()
        self.sequence, self.rng = itertools.count(1), random.Random(0)
        super().__init__(self._write, threads=threads, limit=int(rate_per_thread * limit_s))

    def _write(self, session):
        n = next(self.sequence)
        try:
            if n % 20 == 0:  # a sign-up hashes a password (~0.2 s of CPU): keep them few
                name = f"rs{n}x{self.rng.randrange(10**9)}"
                r = session.post(f"{self.api_url}/users", json={"username": name[:30], "email": f"{name}@e.org",
                                                                "password": "correct-horse"}, timeout=30)
                if r.status_code == 201:
                    self.users.append(int(r.json()["data"]["id"]))  # ids are strings in JSON
            else:
                uid = self.rng.choice(self.user_ids + self.users[-20:])
                r = session.post(f"{self.api_url}/users/{uid}/posts", json={"title": f"during {n}", "body": "x"},
                                 timeout=30)
                if r.status_code == 201:
                    self.posts.append((int(r.json()["data"]["id"]), int(uid)))
            if r.status_code not in (200, 201):
                self.failures[r.status_code] += 1
        except requests.RequestException as exc:
            self.failures[type(exc).__name__] += 1
        self.stop.wait(1 / self.rate)


def test_reshard_under_writes_loses_nothing(stack_config, api_url, admin_headers):
    cfg = stack_config
    before_users, _ = placement(cfg, 1)
    with Writers(api_url, before_users) as writers:
        time.sleep(1.0)
        out = reshard("--to", "3", "--strategy", "consistent")
        time.sleep(1.0)
    assert topology_placement(api_url, admin_headers) == ("consistent", 3, 0)
    print(out)
    print(f"acknowledged during the move: {len(writers.posts)} posts, {len(writers.users)} users; "
          f"failures {dict(writers.failures)}")
    assert writers.posts and writers.users, "the writers did not get through"
    assert not writers.failures, f"writes failed during the reshard: {dict(writers.failures)}"
    users, posts = assert_placed(cfg, 3, 3, "consistent")
    assert set(before_users) <= set(users)
    for pid, uid in writers.posts:
        assert pid in posts and posts[pid][0][0] == uid, f"acknowledged post {pid} of user {uid} not found once"
    for uid in writers.users:
        assert uid in users, f"acknowledged user {uid} not found"
    # Reads follow the move: every user answers from its own shard.
    for uid in random.Random(1).sample(sorted(users), 20):
        r = requests.get(f"{api_url}/users/{uid}", timeout=10)
        assert r.status_code == 200
        assert r.headers["X-DB-Node"].startswith(f"shard-{shard_of(uid, 3, 'consistent')}/")


def _sums(cfg, groups):
    sums = shard_rows(cfg, groups, "SELECT 'u', count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) "
                                   "FROM api_user t UNION ALL SELECT 'p', count(*), "
                                   "coalesce(sum(hashtextextended(t::text, 0)), 0) FROM api_post t")
    total = Counter()
    for rows in sums.values():
        for name, n, s in rows:
            total[name + "n"] += n
            total[name + "s"] += int(s)
    return total


def _paused_reshard(*args, point):
    proc = subprocess.Popen([sys.executable, str(ROOT / "manage.py"), "reshard", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "WORKBENCH_RESHARD_BATCH": str(BATCH), "WORKBENCH_RESHARD_PAUSE": point})
    lines = []

    def read():
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    wait_for(lambda: any(line.startswith("PAUSED") for line in lines) or proc.poll() is not None, timeout=300,
             what="the reshard to pause")
    assert proc.poll() is None, f"the reshard ended before its pause: {''.join(lines)}"
    return proc


def test_sigkilled_reshard_resumes_and_loses_nothing(stack_config, api_url, admin_headers):
    cfg = stack_config
    assert topology_placement(api_url, admin_headers)[:2] == ("consistent", 3)
    before = _sums(cfg, 3)
    proc = _paused_reshard("--to", "4", "--strategy", "modulo", point="after-copy:3")
    os.kill(proc.pid, signal.SIGKILL)  # between the targets' commit and the sources' delete
    proc.wait(timeout=30)
    users, _ = placement(cfg, 4)
    assert before["un"] == sum(1 for _ in users), "a user went missing mid-batch"
    status = manage("reshard", "--status").stdout
    assert "moving" in status, status
    refused = manage("reshard", "--to", "2")
    assert refused.returncode != 0 and "--resume" in refused.stderr
    out = reshard("--resume")
    print(out)
    assert topology_placement(api_url, admin_headers) == ("modulo", 4, 0)
    assert_placed(cfg, 4, 4, "modulo")
    assert _sums(cfg, 4) == before, "rows or checksums changed across the interrupted reshard"


def test_sigkilled_reshard_rolls_back_and_loses_nothing(stack_config, api_url, admin_headers):
    cfg = stack_config
    before = _sums(cfg, 4)
    proc = _paused_reshard("--to", "2", "--strategy", "hash", point="after-copy:2")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    out = reshard("--rollback")
    print(out)
    assert topology_placement(api_url, admin_headers) == ("modulo", 4, 0)
    assert_placed(cfg, 4, 4, "modulo")
    assert _sums(cfg, 4) == before


def test_fences_that_disagree_refuse_the_write_with_503(stack_config, api_url, admin_headers):
    """What a reshard killed between two shards' commits leaves until --resume: each of two fences
    says the other shard owns the user. A write is refused with 503, never a 500, and nothing is
    written; reads still answer."""
    cfg = stack_config
    strategy, count, _ = topology_placement(api_url, admin_headers)
    users, _ = placement(cfg, count)

    def mapping_to(uid, target):  # a (strategy, shard count) that puts uid on `target`, or None
        return next(((name, n) for name in ("hash", "consistent", "modulo") for n in range(target, 9)
                     if shard_of(uid, n, name) == target), None)

    # A user and another shard such that each of the two fences can be made to name the other.
    uid, home, other = next((u, ks[0], k) for u, ks in sorted(users.items()) for k in range(1, count + 1)
                            if k != ks[0] and mapping_to(u, k) and mapping_to(u, ks[0]))

    def pointing_to(target):
        return mapping_to(uid, target)

    saved = {}
    try:
        for k, target in ((home, other), (other, home)):
            with psycopg.connect(cfg.shard_url(k), autocommit=True) as conn:
                saved[k] = conn.execute("SELECT job, old_strategy, old_shards, new_strategy, new_shards, "
                                        "moved_upto FROM shard_fence").fetchone()
                name, n = pointing_to(target)
                conn.execute("UPDATE shard_fence SET old_strategy = %s, old_shards = %s, new_strategy = %s, "
                             "new_shards = %s", (name, n, name, n))
        before = users[uid]
        r = requests.post(f"{api_url}/users/{uid}/posts", json={"title": "t", "body": "b"}, timeout=30)
        assert r.status_code == 503, r.text
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert "being moved" in r.json()["detail"]
        assert requests.get(f"{api_url}/users/{uid}", timeout=10).status_code == 200
        assert placement(cfg, count)[0][uid] == before
    finally:
        for k, row in saved.items():
            with psycopg.connect(cfg.shard_url(k), autocommit=True) as conn:
                conn.execute("UPDATE shard_fence SET job = %s, old_strategy = %s, old_shards = %s, new_strategy = %s, "
                             "new_shards = %s, moved_upto = %s", row)


def test_a_reshard_killed_before_its_fences_are_set_resumes_correctly(stack_config, api_url, admin_headers):
    """SIGKILL after the job is recorded and the new shards run, before any fence names the job:
    --resume must set the fences and move the rows, not flip the topology over unmoved rows."""
    cfg = stack_config
    strategy, count, _ = topology_placement(api_url, admin_headers)
    before = _sums(cfg, count)
    proc = _paused_reshard("--to", "3", "--strategy", "hash", point="started:0")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    reshard("--resume")
    assert topology_placement(api_url, admin_headers) == ("hash", 3, 0)
    assert_placed(cfg, 3, 3, "hash")
    assert _sums(cfg, 3) == before
