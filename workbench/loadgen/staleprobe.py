"""The stale-read probe: mixed reads and writes on a few users, counting the reads that miss a write
acknowledged before the read was sent.

Each probe user has exactly one writer thread, which alternates a profile update (its `bio` carries
a version number that only grows) and a new post, and notes when each was acknowledged. Reader
threads read the profiles and first posts pages of random probe users. A read is **stale** when a
write of what it read (the profile, or the user's posts) was acknowledged before the read was sent
and the answer does not show it: a lower bio version, or a page without the newest acknowledged
post. Its **age** is how long before the send that first missing write was acknowledged.

One writer per user keeps the order of writes and of their acknowledgements the same, so "the
newest acknowledged write" is well defined without a clock shared with the server. Everything is
bounded in time and in count, and goes to the stack's entry point on loopback.
"""
from __future__ import annotations

import bisect
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

PAGE = "?limit=10"
MAX_REQUESTS = 200_000


def saved_dir(data_dir: Path) -> Path:
    """Where `manage.py stale_probe` saves its tables: beside the load runs, not among them."""
    return data_dir / "stale-probe"


@dataclass
class Tally:
    reads: int = 0
    stale: int = 0
    ages_ms: list = field(default_factory=list)

    def to_dict(self) -> dict:
        ages = sorted(self.ages_ms)
        return {"reads": self.reads, "stale": self.stale,
                "stale_fraction": round(self.stale / self.reads, 5) if self.reads else None,
                "age_p50_ms": round(ages[len(ages) // 2], 1) if ages else None,
                "age_max_ms": round(ages[-1], 1) if ages else None}


class Acks:
    """One user's acknowledged writes of one kind: (ack time, version), in acknowledgement order."""

    def __init__(self):
        self.times: list[float] = []
        self.versions: list[int] = []

    def add(self, at: float, version: int) -> None:
        self.times.append(at)
        self.versions.append(version)

    def missed(self, sent_at: float, shown) -> float | None:
        """The age (s) at `sent_at` of the oldest write acknowledged before then that `shown(version)`
        says the answer lacks; None if the answer shows every such write."""
        known = bisect.bisect_left(self.times, sent_at)  # writes acknowledged before the send
        first = None
        for i in range(known - 1, -1, -1):  # newest first: versions only grow, so stop at the first shown
            if shown(self.versions[i]):
                break
            first = i
        return None if first is None else sent_at - self.times[first]


@dataclass
class Probe:
    base_url: str                       # the API root, e.g. http://127.0.0.1:8000/api/v1
    users: list[int]
    duration_s: float = 10.0
    readers: int = 4
    write_pause_s: float = 0.25         # each writer waits this long between its writes
    headers: dict = field(default_factory=dict)  # the writers' credential (the operator's)
    seed: int = 1
    stop_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    profile: Tally = field(default_factory=Tally)
    posts: Tally = field(default_factory=Tally)
    writes: int = 0
    errors: dict = field(default_factory=dict)
    sent: int = 0

    def run(self) -> dict:
        self.acks = {u: {"profile": Acks(), "posts": Acks()} for u in self.users}
        self.stop_at = time.monotonic() + self.duration_s
        threads = [threading.Thread(target=self._writer, args=(u,), daemon=True) for u in self.users]
        threads += [threading.Thread(target=self._reader, args=(i,), daemon=True) for i in range(self.readers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=self.duration_s + 30)
        total = Tally(self.profile.reads + self.posts.reads, self.profile.stale + self.posts.stale,
                      self.profile.ages_ms + self.posts.ages_ms)
        return {"profile": self.profile.to_dict(), "posts": self.posts.to_dict(), "all": total.to_dict(),
                "writes": self.writes, "errors": dict(self.errors)}

    def _going(self) -> bool:
        with self.lock:
            self.sent += 1
            return time.monotonic() < self.stop_at and self.sent <= MAX_REQUESTS

    def _error(self, what: str) -> None:
        with self.lock:
            self.errors[what] = self.errors.get(what, 0) + 1

    def _writer(self, user_id: int) -> None:
        acks = self.acks[user_id]
        version = 0
        with requests.Session() as http:
            http.headers.update(self.headers)
            while self._going():
                version += 1
                try:
                    if version % 2:
                        r = http.patch(f"{self.base_url}/users/{user_id}", json={"bio": f"probe {version}"},
                                       timeout=10)
                        if r.status_code == 200:
                            acks["profile"].add(time.monotonic(), version)
                    else:
                        r = http.post(f"{self.base_url}/users/{user_id}/posts",
                                      json={"title": f"probe {version}", "body": "stale-read probe"}, timeout=10)
                        if r.status_code == 201:
                            acks["posts"].add(time.monotonic(), int(r.json()["data"]["id"]))
                except requests.RequestException as exc:
                    self._error(type(exc).__name__)
                    continue
                if r.status_code not in (200, 201):
                    self._error(str(r.status_code))
                else:
                    with self.lock:
                        self.writes += 1
                time.sleep(self.write_pause_s)

    def _reader(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        with requests.Session() as http:
            while self._going():
                user_id = rng.choice(self.users)
                kind = "profile" if rng.random() < 0.5 else "posts"
                url = f"{self.base_url}/users/{user_id}" + ("" if kind == "profile" else f"/posts{PAGE}")
                sent_at = time.monotonic()
                try:
                    r = http.get(url, timeout=10)
                except requests.RequestException as exc:
                    self._error(type(exc).__name__)
                    continue
                if r.status_code != 200:
                    self._error(str(r.status_code))
                    continue
                data = r.json()["data"]
                if kind == "profile":
                    shown_version = _bio_version(data.get("bio", ""))
                    age = self.acks[user_id]["profile"].missed(sent_at, lambda v: v <= shown_version)
                    tally = self.profile
                else:
                    ids = {int(p["id"]) for p in data["results"]}
                    newest = max(ids, default=0)
                    # A post id older than the newest shown is on the page or was pushed off it by newer ones.
                    age = self.acks[user_id]["posts"].missed(sent_at, lambda v: v in ids or v < newest)
                    tally = self.posts
                with self.lock:
                    tally.reads += 1
                    if age is not None:
                        tally.stale += 1
                        tally.ages_ms.append(age * 1000)


def _bio_version(bio: str) -> int:
    head, _, number = bio.partition(" ")
    return int(number) if head == "probe" and number.isdigit() else 0
