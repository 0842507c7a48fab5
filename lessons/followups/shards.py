"""Follow-up: "How do you keep data consistent across shards?" Live: a reshard under a measured
load (the shard count changes online; afterwards every acknowledged write is looked for), then
uniqueness across shards (the same username twice; one user's email taken by a user on another
shard), then the shard count is put back. The load and its ledger are workbench/loadgen/faults.py's
fault run with `manage.py reshard` as the fault (api/routing/reshard.py), saved as a run."""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import pandas as pd
import streamlit as st

from api.routing.shards import MAX_SHARDS
from lessons.followups import child
from lessons.widgets import metrics

KEY = "shards"
TITLE = "How do you keep data consistent across shards?"
QUESTION = ("Users and their posts are spread over several databases. How do you keep a username unique, "
            "and how do you move data to more shards without losing or doubling a write? Try it: the shard "
            "count changes under a measured load, and the same username and email are tried on two shards.")
ANSWER = """
**Avoid cross-shard transactions by choosing the shard key.** Everything one request touches
should live on one shard: here a user and all their posts share the user's shard (the post's URL
carries the user id), so a post creation is one local transaction. Reads that span shards (lists,
search) scatter and gather, and accept that each shard answers at its own instant.

**Global invariants need a global owner.** A unique username or email cannot be checked by a
shard's own index: two sign-ups with the same name get different ids and land on different
shards. Here `meta` holds a global uniqueness index (the account table): the sign-up reserves the
name there first, and only then writes the user on its shard, with a small state machine
(pending -> active) and a reconciler so that a request that dies midway leaves no orphan and no
duplicate. The price: `meta` is on the sign-up path (a single point of failure unless replicated).
Alternatives: a unique-key service, or a shard chosen *by* the unique key for a lookup table.

**Moving data (resharding) without losing writes.** Copy in batches; for each batch, briefly fence
the source so the rows stop changing, copy and checksum them on the target, commit the target,
then delete from the source and advance the fence in one transaction. A write that waited on the
fence re-reads it and goes to the new owner. A job row records the batch in flight, so a mover
killed at any point resumes or rolls back. Consistent hashing keeps the share of moved rows near
1/(N+1) when adding a shard; plain `hash % N` moves almost everything.

**Across shards, prefer idempotency and eventual consistency to 2PC.** Multi-shard updates go
through an outbox and idempotent consumers (sagas with compensations), not distributed locks. IDs
are unique without coordination (snowflakes: time, node, sequence). And verify: a ledger of every
acknowledged write, checked after the move, as the experiment does.
"""

DEFAULTS = {"rate": 30, "duration_s": 10, "fault_at_s": 2, "shards": 2}
PASSWORD = "follow-up secret"
PROGRESS = re.compile(r"\]\s+([\d.]+)%\s+([\d,]+)/([\d,]+) users looked at, ([\d,]+) moved, batch (\d+)")


def render() -> None:
    """The controls and the last experiment's results; nothing touches the stack until the button."""
    st.markdown("**The experiment.** A fault run under an open-loop load (80% reads, 20% post creations by "
                "their owners), saved as a run, during which `python manage.py reshard` changes the shard count "
                "online. Afterwards every post the API acknowledged is looked for on the shards. Then, on the new "
                "shards: the same username signed up twice, and a user on one shard asks for the email of a "
                "user on another. Last, the shard count and strategy are put back as they were.")
    cols = st.columns(4)
    shards = cols[0].number_input("Shards during the experiment", 2, MAX_SHARDS, DEFAULTS["shards"], 1,
                                  key="fu_shards_to")
    rate = cols[1].number_input("Rate (req/s)", 5, 200, DEFAULTS["rate"], 5, key="fu_shards_rate")
    duration = cols[2].number_input("Load (s)", 3, 60, DEFAULTS["duration_s"], 1, key="fu_shards_duration")
    start_at = cols[3].number_input("Reshard starts at (s)", 1, 30, DEFAULTS["fault_at_s"], 1,
                                    key="fu_shards_start_at")
    start = st.button("Run the sharding experiment", key="fu_shards_run", type="primary")
    if start and start_at >= duration:
        st.error(f"The reshard ({start_at} s) must start before the load ends ({duration} s): lower **Reshard "
                 "starts at** or lengthen **Load**.")
        start = False
    options = {"shards": shards, "rate": rate, "duration_s": duration, "fault_at_s": start_at}
    child.page(KEY, start, options, duration + 900, draw)


def draw(messages: list[dict], running: bool = False) -> None:
    before = next((m["before"] for m in messages if "before" in m), None)
    if before:
        st.caption(f"Found: {before['sharding']} \u00d7 {before['shards']} shard(s).")
    steps = [m for m in messages if m.get("step") == "reshard"]
    if steps:
        st.markdown("#### Resharding under writes")
        done = next((m for m in steps if m.get("state") == "done"), None)
        moves = [m["reshard"] for m in messages if "reshard" in m]
        if done:
            _reshard_done(done)
        elif running:
            _progress(steps)
        _moves(moves, running and not done)
    unique = next((m["unique"] for m in messages if "unique" in m), None)
    if unique:
        _unique(unique)
    for m in messages:
        if "error" in m:
            st.error(m["error"])
    restored = next((m["restored"] for m in messages if "restored" in m), None)
    if restored:
        text = f"Put back: {restored['sharding']} \u00d7 {restored['shards']} shard(s)"
        if restored["same"]:
            st.success(text + ", as found.")
        else:
            st.warning(text + f"; found {before['sharding']} \u00d7 {before['shards']}. Run `python manage.py "
                              f"reshard --status`, then `reshard --to {before['shards']} --strategy "
                              f"{before['sharding']}`.")
    elif running and any("restoring" in m for m in messages):
        st.info("Putting the shard count back ...")


def _progress(steps: list[dict]) -> None:
    p = next((m["progress"] for m in reversed(steps) if "progress" in m), None)
    child.load_progress(p, "Loading keys and tokens ...")


def _moves(moves: list[dict], running: bool) -> None:
    """The reshard's own progress (and the one that puts the count back), as its command prints it."""
    for phase in ("grow", "restore"):
        mine = [m for m in moves if m["phase"] == phase]
        if not mine:
            continue
        last = mine[-1]
        what = "Reshard" if phase == "grow" else "Putting back"
        if "done" in last:
            (st.caption if last["ok"] else st.error)(f"{what}: {last['text']} ({last['wall_s']:.1f} s wall)")
        elif running or phase == "restore":
            st.progress(min(1.0, last.get("fraction", 0.0)),
                        text=f"{what} {last['args']}: {last.get('seen', 0):,} of {last.get('total', 0):,} users "
                             f"looked at, {last.get('moved', 0):,} moved, batch {last.get('batch', 0)}")


def _reshard_done(done: dict) -> None:
    result = child.saved_run(done["run_id"], "The load during the reshard")
    if result is None:
        return
    f = result["fault"]
    metrics({"Writes lost": f"{f['writes_lost']:,} of {f['acknowledged_writes']:,}",
             "Failed requests": f"{f['failed']:,} of {f['requests']:,}", "Errors by kind": child.error_kinds(f),
             "Availability": f"{f['availability']:.2%}"})
    covered = done.get("covered")
    st.caption("Writes lost: posts the API acknowledged with 201 that no shard holds after the move (the ledger; "
               "ids listed if any). " + (f"The load covered {covered}. " if covered else "")
               + "Measured on this machine, shared CPU.")
    if f["lost_ids"]:
        st.error(f"Acknowledged but missing: {', '.join(map(str, f['lost_ids']))}")
    child.per_second(result)


def _unique(u: dict) -> None:
    st.markdown("#### One username, one email, across shards")
    rows = []
    for key, what in (("first", "sign up a new username"), ("again", "the same username again (new email)"),
                      ("other", "another user, until one lands on a different shard"),
                      ("take_email", "that user asks for the first user's email")):
        r = u.get(key)
        if r:
            rows.append({"step": what, "request": r["request"], "status": r["status"],
                         "shard (X-DB-Node)": r.get("db_node") or "\u2014", "Content-Type": r.get("content_type") or "",
                         "ms": r["ms"]})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    for col, (key, label) in zip(st.columns(2), (
            ("again", "The second sign-up of the same username"),
            ("take_email", "The email change to an address a user on another shard has"))):
        r = u.get(key)
        if r:
            col.markdown(f"{label}: **HTTP {r['status']}**, `{r.get('content_type')}`")
            col.json(r.get("body") or {}, expanded=True)
    st.caption("Each shard's own unique index sees only its own users: the second sign-up got a new id, which "
               "may map to any shard. `meta`'s account table is the one index that sees every shard, so it refuses "
               "the name (and the email) before any shard is written.")


# --- the experiment, in its own process (python -m lessons.followups.shards) -----------------------
class Reshard:
    """`python manage.py reshard ARGS` in a process of its own, its progress relayed as it prints it."""

    def __init__(self, args: list[str], phase: str, emit):
        self.args, self.phase, self.emit = args, phase, emit
        self.proc = None
        self.result: dict | None = None

    def start(self) -> None:
        from workbench.stack import config
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, str(config.PROJECT_DIR / "manage.py"), "reshard", *self.args],
                                     cwd=config.PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)  # text: its \r progress lines split
        self.errors: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            match = PROGRESS.search(line)
            if not match:
                if line.strip():
                    self.errors.append(line.strip())
                continue
            pct, seen, total, moved, batch = match.groups()
            self.emit({"reshard": {"phase": self.phase, "args": " ".join(self.args), "fraction": float(pct) / 100,
                                   "seen": int(seen.replace(",", "")), "total": int(total.replace(",", "")),
                                   "moved": int(moved.replace(",", "")), "batch": int(batch)}})

    def wait(self) -> dict:
        out = self.proc.stdout.read()
        code = self.proc.wait()
        self.reader.join(timeout=5)
        self.ended = time.monotonic()
        text = " ".join(out.split()) if code == 0 else (" ".join(self.errors[-3:]) or f"exit code {code}")
        self.result = {"phase": self.phase, "args": " ".join(self.args), "done": True, "ok": code == 0,
                       "text": text, "wall_s": round(self.ended - self.started, 2)}
        self.emit({"reshard": self.result})
        return self.result

    def run(self) -> dict:
        self.start()
        return self.wait()


def experiment(cfg, options: dict, emit) -> None:
    from workbench.loadgen import faults
    from workbench.loadgen.client import TopologyClient

    topo = TopologyClient(cfg)
    t = topo.settled()["topology"]
    before = {"sharding": t["sharding"], "shards": t["shards"]}
    emit({"before": before})
    if t["reshard_shards"]:
        emit({"error": "A reshard is unfinished on this stack: see `python manage.py reshard --status`, then "
                       "`reshard --resume` or `--rollback`."})
        return
    to = int(options["shards"])
    if to == t["shards"]:
        emit({"error": f"The stack already runs {to} shard(s): choose another count for the experiment."})
        return
    mover = Reshard(["--to", str(to), "--strategy", t["sharding"]], "grow", emit)
    scenario = faults.Scenario("reshard", f"reshard {t['sharding']} \u00d7 {t['shards']} -> \u00d7 {to} online", {},
                               fault=mover.start, recover=mover.wait, hold_s=0.0,
                               target="every acknowledged write on its shard afterwards; no failed request")
    try:
        emit({"step": "reshard", "state": "running"})
        o = faults.run(cfg, scenario, rate=options["rate"], duration_s=options["duration_s"],
                       fault_at_s=options["fault_at_s"], label=f"follow-up: {scenario.what}",
                       on_progress=lambda p: emit({"step": "reshard", "progress": p}))
        load_end = mover.started - (options["fault_at_s"]) + options["duration_s"]
        covered = (f"{min(1.0, max(0.0, (load_end - mover.started) / (mover.ended - mover.started))):.0%} of the "
                   f"reshard's {mover.ended - mover.started:.1f} s" if mover.ended > mover.started else "")
        emit({"step": "reshard", "state": "done", "run_id": o.run_id, "covered": covered})
        if not mover.result["ok"]:
            emit({"error": f"The reshard failed: {mover.result['text']}"})
        elif to >= 2:
            emit({"unique": uniqueness(cfg)})
    finally:
        emit({"restoring": True})
        try:
            restore(cfg, topo, before, emit)
        except Exception as exc:  # noqa: BLE001 - said on the page; the first failure, if any, follows it
            emit({"error": f"Putting the shards back failed ({type(exc).__name__}: {exc}). Put them back by hand: "
                           f"`python manage.py reshard --status`, then `reshard --to {before['shards']} --strategy "
                           f"{before['sharding']}`."})


def uniqueness(cfg) -> dict:
    n = time.time_ns() % 10**9
    name = f"fu{n}"
    email = f"{name}@example.org"
    out = {"first": child.call(cfg, "POST", "/api/v1/users", {"username": name, "email": email, "password": PASSWORD})}
    out["again"] = child.call(cfg, "POST", "/api/v1/users", {"username": name, "email": f"{name}.again@example.org",
                                                       "password": PASSWORD})
    if out["first"]["status"] != 201:
        return out
    for i in range(8):  # each new id lands on a shard by its hash: a few tries find another shard
        other = f"{name}o{i}"
        out["other"] = child.call(cfg, "POST", "/api/v1/users", {"username": other, "email": f"{other}@example.org",
                                                           "password": PASSWORD})
        if out["other"]["status"] != 201 or shard_of(out["other"]) != shard_of(out["first"]):
            break
    if out["other"]["status"] == 201:
        signed = child.call(cfg, "POST", "/api/v1/auth/token", {"username": other, "password": PASSWORD})
        token = (signed.get("body") or {}).get("data", {}).get("access")
        if token:
            uid = out["other"]["body"]["data"]["id"]
            out["take_email"] = child.call(cfg, "PATCH", f"/api/v1/users/{uid}", {"email": email}, token)
    return out


def shard_of(answer: dict) -> str:
    """`shard-2` from `X-DB-Node: shard-2/primary` (just `primary` with one shard)."""
    return (answer.get("db_node") or "").split("/")[0]


def restore(cfg, topo, before: dict, emit) -> None:
    """Finish or roll back an interrupted move, then reshard back to the count and strategy found, and
    wait until the controller has retired the shards no longer used."""
    from workbench.stack import config
    status = subprocess.run([sys.executable, str(config.PROJECT_DIR / "manage.py"), "reshard", "--status"],
                            cwd=config.PROJECT_DIR, capture_output=True, text=True, timeout=60).stdout
    if " moving" in status or " rolling_back" in status:
        Reshard(["--rollback"], "restore", emit).run()
    t = topo.settled()["topology"]
    if (t["sharding"], t["shards"]) != (before["sharding"], before["shards"]):
        Reshard(["--to", str(before["shards"]), "--strategy", before["sharding"]], "restore", emit).run()
    t = topo.settled(timeout=300)["topology"]
    emit({"restored": {"sharding": t["sharding"], "shards": t["shards"], "reshard_shards": t["reshard_shards"],
                       "same": (t["sharding"], t["shards"], t["reshard_shards"]) ==
                       (before["sharding"], before["shards"], 0)}})


if __name__ == "__main__":
    raise SystemExit(child.main(experiment))
