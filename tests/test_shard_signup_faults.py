"""Usernames and emails stay unique across every shard (issue 5): meta's accounts are the global
index, and the sign-up protocol (api/services.py) leaves no orphan and no duplicate on any shard
when the app server running it is SIGKILLed between its steps. Mechanics as in
tests/test_signup_faults.py; here the stack runs 4 shards (under `hash`, and under `directory`,
whose table in meta is one more thing a dead sign-up must not leave behind), and every check
reads every shard's primary and meta directly."""
import collections
import os
import threading

import pytest
import requests

from conftest import wait_for
from api.routing import shards
from test_shard_placement import PASSWORD, SHARDS, ShardedStack, sharded_stack, sql, unique_name  # noqa: F401
from test_signup_faults import paused_sign_up, sigkill_app_server

FAULT_STRATEGIES = ("hash", "directory")
RACES = 8  # pairs of simultaneous sign-ups; see the test's docstring


@pytest.fixture(scope="module", params=FAULT_STRATEGIES)
def sharded(request, sharded_stack):
    sharded_stack.reshard(request.param, SHARDS)
    return sharded_stack


def everything(sh: ShardedStack) -> dict:
    """Accounts (meta), user rows (every shard) and, under `directory`, meta's directory."""
    accounts = sql(sh.cfg.meta_db_url, "SELECT user_id, username, email, state FROM meta_account")
    users = [(shard, *row) for shard, rows in sh.rows("SELECT id, username, email FROM api_user").items()
             for row in rows]
    directory = sh.directory() if sh.topology().sharding == "directory" else None
    return {"accounts": accounts, "users": users, "directory": directory}


def faults_in(sh: ShardedStack, state: dict) -> list[str]:
    """Every way the data breaks the protocol's promise, across meta and all shards."""
    found = []
    accounts = {user_id: (username, email, st) for user_id, username, email, st in state["accounts"]}
    for what, index in (("id", 1), ("username", 2), ("email", 3)):
        counts = collections.Counter(row[index] for row in state["users"])
        found += [f"{what} {value!r} on {n} rows across shards" for value, n in counts.items() if n > 1]
    strategy, count = sh.topology().sharding, sh.topology().shards
    for shard, user_id, username, email in state["users"]:
        account = accounts.get(user_id)
        if account is None or account[2] != "active":
            found.append(f"orphan user {user_id} ({username}) on shard {shard}: account {account}")
        elif account[:2] != (username, email):
            found.append(f"user {user_id} on shard {shard} is {username}/{email}, its account {account[:2]}")
        if state["directory"] is not None:
            expected = (state["directory"].get(user_id) or (None,))[0]
        else:
            expected = shards.shard_of(user_id, count, strategy)
        if expected != shard:
            found.append(f"user {user_id} on shard {shard}, but {strategy} places it on {expected}")
    on_shards = {row[1] for row in state["users"]}
    for user_id, (username, _email, st) in accounts.items():
        if st != "active":
            found.append(f"account {user_id} ({username}) left {st}")
        elif user_id not in on_shards:
            found.append(f"orphan account {user_id} ({username}): no user row on any shard")
    if state["directory"] is not None:
        found += [f"directory entry for {u} with no account" for u in set(state["directory"]) - set(accounts)]
        found += [f"user {u} with no directory entry" for u in on_shards - set(state["directory"])]
    return found


def settled(sh: ShardedStack):
    """The whole data set once no protocol is left half done (the reconciler's work), or None."""
    state = everything(sh)
    return state if not faults_in(sh, state) else None


def of(state: dict, username: str) -> tuple[list, list]:
    accounts = [(u, st) for u, name, _e, st in state["accounts"] if name == username]
    users = [(shard, u) for shard, u, name, _e in state["users"] if name == username]
    return accounts, users


def _post_together(barrier, url, body, responses, j):
    with requests.Session() as http:
        barrier.wait(timeout=30)
        responses[j] = http.post(url, json=body, timeout=60)


def test_the_data_starts_consistent_across_all_shards(sharded):
    """The seeded users, as the reshard left them: each on its own shard, with its account."""
    state = everything(sharded)
    assert len(state["users"]) > 0
    assert faults_in(sharded, state) == []


def test_racing_sign_ups_for_one_username_or_email_get_one_201_and_one_409(sharded, api_url):
    """Pairs of simultaneous sign-ups through Caddy (so usually on two app servers), sharing a
    username (even pairs) or an email (odd pairs). Each makes its own id, and under `hash` the two
    ids fall on different shards three times in four (all 8 pairs on one shard: 4**-8), where the
    shards' own unique indexes cannot see each other: only meta's accounts can refuse one."""
    outcomes = []
    for i in range(RACES):
        name = unique_name("race")
        bodies = [{"username": name, "email": f"{name}@example.org", "password": PASSWORD},
                  {"username": name + "b" if i % 2 else name, "email": f"{name}{'' if i % 2 else 'b'}@example.org",
                   "password": PASSWORD + "!"}]
        barrier = threading.Barrier(2)
        responses = [None, None]

        threads = [threading.Thread(target=_post_together, args=(barrier, f"{api_url}/users", body, responses, j))
                   for j, body in enumerate(bodies)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
        codes = sorted(r.status_code for r in responses)
        assert codes == [201, 409], [(r.status_code, r.text[:200]) for r in responses]
        loser = next(r for r in responses if r.status_code == 409)
        assert loser.headers["Content-Type"].startswith("application/problem+json")
        winner = next(r for r in responses if r.status_code == 201).json()["data"]
        loser_body = bodies[responses.index(loser)]
        outcomes.append((winner["username"], winner["email"], int(winner["id"]), loser_body["username"]))
    state = wait_for(lambda: settled(sharded), timeout=90, what="no half-done sign-up anywhere")
    for username, email, winner_id, loser_username in outcomes:
        accounts, users = of(state, username)
        assert accounts == [(winner_id, "active")]
        assert users == [(sharded.expected_shard(winner_id), winner_id)], users
        assert [u for _s, u, _n, e in state["users"] if e == email] == [winner_id]
        if loser_username != username:  # the pair shared an email: the loser's own name is nowhere
            assert of(state, loser_username) == ([], [])
    print(f"\n{sharded.topology().sharding}: winners on shards "
          f"{dict(collections.Counter(sharded.expected_shard(u) for _n, _e, u, _l in outcomes))}")


@pytest.mark.parametrize("pause,expected", [
    ("signup-after-meta", "absent"),   # only the pending account (and directory entry) existed: removed
    ("signup-after-data", "present"),  # the user was written on its shard: the account is activated
])
def test_sigkill_midway_leaves_no_orphan_or_duplicate_on_any_shard(sharded, stack_config, controller, pause,
                                                                   expected):
    cfg = stack_config
    app = controller.process("app-1")
    username = unique_name(f"kill{pause.split('-')[-1]}")
    thread, outcome = paused_sign_up(cfg.direct_url(1), username, pause)

    def reached_pause():
        accounts, users = of(everything(sharded), username)
        return accounts and (users if pause == "signup-after-data" else True) and (accounts, users)

    accounts, users = wait_for(reached_pause, timeout=60, what=f"the sign-up to reach {pause}")
    user_id = accounts[0][0]
    shard = sharded.expected_shard(user_id)  # under `directory`: the entry assign() wrote before the pause
    if pause == "signup-after-data":
        assert users == [(shard, user_id)], "the row is written on its own shard only"
    sigkill_app_server(app["pid"])
    thread.join(timeout=30)
    assert "error" in outcome, "the client must not get an answer from a killed server"

    # The reconciler settles it once the dead request's lock is gone: everything consistent again.
    state = wait_for(lambda: settled(sharded), timeout=90, what="the reconciler to settle the sign-up")
    accounts, users = of(state, username)
    if expected == "absent":
        assert (accounts, users) == ([], [])
        if state["directory"] is not None:
            assert user_id not in state["directory"], "the dead sign-up's directory entry is removed too"
    else:
        assert accounts == [(user_id, "active")] and users == [(shard, user_id)]

    wait_for(lambda: (p := controller.process("app-1"))["healthy"] and p["pid"] != app["pid"], timeout=90,
             what="app-1 to be restarted")

    # The client retries the same sign-up: one account, one user on one shard, same id either way.
    retry = requests.post(f"{cfg.api_url}/api/v1/users", timeout=60,
                          json={"username": username, "email": f"{username}@example.org", "password": PASSWORD})
    assert retry.status_code == (201 if expected == "absent" else 200), retry.text
    retried_id = int(retry.json()["data"]["id"])
    if expected == "present":
        assert retried_id == user_id, "a completed sign-up is resumed, not duplicated"
    state = wait_for(lambda: settled(sharded), timeout=90, what="everything consistent after the retry")
    accounts, users = of(state, username)
    assert accounts == [(retried_id, "active")]
    assert users == [(sharded.expected_shard(retried_id), retried_id)]
    # And a second sign-up for the name, from another client, is refused on every shard.
    other = requests.post(f"{cfg.api_url}/api/v1/users", timeout=60,
                          json={"username": username, "email": f"other_{os.getpid()}_{username}@example.org"[:60],
                                "password": PASSWORD + "2"})
    assert other.status_code == 409, other.text
    print(f"\n{sharded.topology().sharding} {pause}: user {user_id} was bound for shard {shard}; "
          f"retry {retry.status_code} -> user {retried_id} on shard {users[0][0]}")
