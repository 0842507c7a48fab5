"""What a run sends: the rate profile, the mix of requests, and which keys they touch."""
from __future__ import annotations

import bisect
import ipaddress
import os
import random
import re
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

MAX_DURATION_S = 600
MAX_RATE = 50_000
MAX_REQUESTS = 2_000_000
MAX_TIMEOUT_S = 60            # per request; bounds how long a run can wait for its last answers


class WorkloadError(ValueError):
    def __init__(self, field_name: str, detail: str):
        super().__init__(f"{field_name}: {detail}")
        self.field = field_name
        self.detail = detail


@dataclass
class Workload:
    rate: float = 200.0                  # requests per second (open mode)
    duration_s: float = 10.0
    mode: str = "open"                   # open | closed
    connections: int = 16                # closed mode: concurrent loops; open mode: ignored
    read_ratio: float = 0.9              # share of reads; the rest are writes
    popularity: str = "uniform"          # uniform | zipf
    zipf_s: float = 1.1
    # 0: every seeded key; else only this many (after the fixed shuffle): a hot set that fits a cache,
    # for runs that measure the hit path itself.
    hot_keys: int = 0
    # Weights of each request kind among reads, and among writes.
    reads: dict = field(default_factory=lambda: {"user": 0.5, "user_posts": 0.3, "posts_range": 0.1,
                                                 "post": 0.1})
    writes: dict = field(default_factory=lambda: {"create_post": 0.8, "update_user": 0.2})
    spike: dict | None = None            # {"at_s", "for_s", "factor"}: rate x factor for a while
    source_ips: int = 1                  # spread connections over this many 127.x.y.z addresses
    processes: int = 0                   # 0: as many as the rate needs (PER_PROCESS_RATE each)
    timeout_s: float = 10.0
    max_requests: int = MAX_REQUESTS
    # Writes always carry their owner's token (mint-tokens); with this, reads of a user carry it too
    # (the cost of verifying a token on every request).
    signed_reads: bool = False
    # A header carrying the user id of each request's path (e.g. X-User-Id), as clients of a load
    # balancer that hashes on that header send it (topology lb_policy=header); None sends none.
    user_header: str | None = None
    path: str | None = None              # fixed path for calibration runs (overrides the mix)
    target: str | None = None            # base URL; default the stack's entry point (Caddy)
    seed: int = 1

    def validate(self) -> "Workload":
        # Types first: a JSON body can carry anything, and a wrong type must be a 400 naming the
        # field, not an exception deeper down (or a run that fails in the generator process).
        for name in ("rate", "duration_s", "read_ratio", "zipf_s", "timeout_s", "connections", "source_ips",
                     "processes", "max_requests", "seed", "hot_keys"):
            kind = (int, float) if name in ("rate", "duration_s", "read_ratio", "zipf_s", "timeout_s") else int
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise WorkloadError(name, "a number" if kind is not int else "an integer")
        if not isinstance(self.signed_reads, bool):
            raise WorkloadError("signed_reads", "true or false")
        for name in ("path", "target", "user_header"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise WorkloadError(name, "a string")
        for name in ("reads", "writes"):
            mix = getattr(self, name)
            if not isinstance(mix, dict) or not all(isinstance(v, (int, float)) for v in mix.values()):
                raise WorkloadError(name, "an object of numeric weights")
        if self.spike is not None and not isinstance(self.spike, dict):
            raise WorkloadError("spike", "an object {at_s, for_s, factor}")
        if not 0 < self.timeout_s <= MAX_TIMEOUT_S:
            raise WorkloadError("timeout_s", f"between 0 and {MAX_TIMEOUT_S} s")
        if self.mode not in ("open", "closed"):
            raise WorkloadError("mode", "open or closed")
        if not 0 < self.rate <= MAX_RATE:
            raise WorkloadError("rate", f"between 0 and {MAX_RATE} requests/s")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise WorkloadError("duration_s", f"between 0 and {MAX_DURATION_S} s")
        if not 0 <= self.read_ratio <= 1:
            raise WorkloadError("read_ratio", "between 0 and 1")
        if self.popularity not in ("uniform", "zipf"):
            raise WorkloadError("popularity", "uniform or zipf")
        if not 0 < self.zipf_s <= 5:
            raise WorkloadError("zipf_s", "between 0 and 5")
        if not 1 <= self.connections <= 1024:
            raise WorkloadError("connections", "between 1 and 1024")
        if not 1 <= self.source_ips <= 4096:
            raise WorkloadError("source_ips", "between 1 and 4096")
        if not 0 <= self.processes <= 16:
            raise WorkloadError("processes", "between 0 and 16")
        if not 0 <= self.hot_keys <= 10_000_000:
            raise WorkloadError("hot_keys", "between 0 (all keys) and 10,000,000")
        if not 1 <= self.max_requests <= MAX_REQUESTS:
            raise WorkloadError("max_requests", f"between 1 and {MAX_REQUESTS}")
        for name, mix, known in (("reads", self.reads, READ_KINDS), ("writes", self.writes, WRITE_KINDS)):
            unknown = set(mix) - set(known)
            if unknown or any(w < 0 for w in mix.values()) or not sum(mix.values()) > 0:
                raise WorkloadError(name, f"weights >= 0 over {sorted(known)}, not all zero")
        if self.spike:
            for key in ("at_s", "for_s", "factor"):
                if not isinstance(self.spike.get(key), (int, float)) or not self.spike[key] >= 0:
                    raise WorkloadError(f"spike.{key}", "a number >= 0")
            if self.rate * self.spike["factor"] > MAX_RATE:
                raise WorkloadError("spike.factor", f"the spike rate must stay under {MAX_RATE}/s")
        if self.user_header is not None and not re.fullmatch(r"[A-Za-z0-9-]{1,64}", self.user_header):
            raise WorkloadError("user_header", "an HTTP header name: 1 to 64 of A-Z a-z 0-9 -")
        if self.path is not None and not self.path.startswith("/"):
            raise WorkloadError("path", "an absolute path such as /healthz")
        if self.target is not None:
            check_target(self.target)
        return self

    @classmethod
    def from_dict(cls, data: dict) -> "Workload":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise WorkloadError(sorted(unknown)[0], "unknown workload field")
        return cls(**data).validate()

    def to_dict(self) -> dict:
        return asdict(self)


READ_KINDS = ("user", "user_posts", "posts_range", "post", "users_page", "user_profile", "search", "large_page")
# The words seeded post bodies are made of (24 of them each; workbench/management/commands/seed.py).
# Each is in most posts, so a search for several (every one must match) still ranks thousands of
# posts on every shard: a slow request (about 0.2-0.35 s here) next to a 5 ms point read.
SEED_WORDS = ("scaling cache replica shard latency queue token bucket primary failover index cursor "
              "throughput budget region edge proxy snapshot stream backlog capacity").split()
SEARCH_TERMS = 8
WRITE_KINDS = ("create_post", "update_user", "update_post")


def phases(w: Workload) -> list[tuple[float, float, float]]:
    """[(start_s, end_s, rate)] covering the run; the spike is a phase of its own."""
    if not w.spike or w.spike["for_s"] <= 0:
        return [(0.0, w.duration_s, w.rate)]
    at = min(w.spike["at_s"], w.duration_s)
    end = min(at + w.spike["for_s"], w.duration_s)
    parts = [(0.0, at, w.rate), (at, end, w.rate * w.spike["factor"]), (end, w.duration_s, w.rate)]
    return [p for p in parts if p[1] > p[0]]


def arrivals(w: Workload, part: int = 0, parts: int = 1):
    """Intended send offsets (seconds from start) of this process's share: every parts-th arrival
    of the one global schedule, so the processes together send exactly the asked profile."""
    index = 0
    for start, end, rate in phases(w):
        k = 0
        while True:
            t = start + k / rate
            if t >= end or index >= w.max_requests:
                break
            if index % parts == part:
                yield t
            index += 1
            k += 1


class Zipf:
    """Ranks 0..n-1 with P(rank k) proportional to 1/(k+1)^s, by inverse CDF."""

    def __init__(self, n: int, s: float):
        total, cdf = 0.0, []
        for k in range(1, n + 1):
            total += 1.0 / k ** s
            cdf.append(total)
        self.cdf = [c / total for c in cdf]

    def sample(self, rng: random.Random) -> int:
        return min(bisect.bisect_left(self.cdf, rng.random()), len(self.cdf) - 1)


class Keys:
    """The seeded ids a workload draws from; with zipf, rank 0 is the hottest key. Ranks map to
    ids through a fixed shuffle, so the hot keys are not simply the oldest rows."""

    def __init__(self, users: list[int], posts: list[tuple[int, int]], w: Workload):
        if not users:
            raise WorkloadError("keys", "the stack has no users: seed it first")
        rng = random.Random(w.seed)
        self.users = users[:]
        rng.shuffle(self.users)
        self.posts = posts[:]
        rng.shuffle(self.posts)
        if w.hot_keys:
            self.users, self.posts = self.users[:w.hot_keys], self.posts[:w.hot_keys]
        self.zipf_users = Zipf(len(self.users), w.zipf_s) if w.popularity == "zipf" else None
        self.zipf_posts = Zipf(len(self.posts), w.zipf_s) if w.popularity == "zipf" and self.posts else None

    def user(self, rng: random.Random) -> int:
        i = self.zipf_users.sample(rng) if self.zipf_users else rng.randrange(len(self.users))
        return self.users[i]

    def post(self, rng: random.Random) -> tuple[int, int]:
        """(user_id, post_id) of a post."""
        i = self.zipf_posts.sample(rng) if self.zipf_posts else rng.randrange(len(self.posts))
        return self.posts[i]


def _pick(rng: random.Random, weights: dict) -> str:
    kinds = [k for k, v in weights.items() if v > 0]
    return rng.choices(kinds, [weights[k] for k in kinds])[0]


def next_request(w: Workload, keys: Keys | None, rng: random.Random, seq: int) -> tuple[str, str, str, dict | None]:
    """(kind, method, path, json body) of one request."""
    if w.path:
        return "fixed", "GET", w.path, None
    if rng.random() < w.read_ratio:
        kind = _pick(rng, w.reads)
        if kind == "user":
            return kind, "GET", f"/api/v1/users/{keys.user(rng)}", None
        if kind == "user_profile":  # the user and their latest posts (the read model, when it is on)
            return kind, "GET", f"/api/v1/users/{keys.user(rng)}?view=profile", None
        if kind == "users_page":
            return kind, "GET", "/api/v1/users?limit=20", None
        if kind == "large_page":  # the largest page of users the API serves: 100 rows
            return kind, "GET", "/api/v1/users?limit=100", None
        if kind == "search":  # full-text search over every shard (scatter-gather): a slow read
            return kind, "GET", "/api/v1/search/posts?q=" + "+".join(rng.sample(SEED_WORDS, SEARCH_TERMS)), None
        if kind == "user_posts":
            return kind, "GET", f"/api/v1/users/{keys.user(rng)}/posts?limit=20", None
        if kind == "posts_range":
            days = rng.randint(1, 60)
            return kind, "GET", (f"/api/v1/users/{keys.user(rng)}/posts?limit=20"
                                 f"&since={_days_ago(days + 30)}&until={_days_ago(days)}"), None
        user_id, post_id = keys.post(rng)
        return kind, "GET", f"/api/v1/users/{user_id}/posts/{post_id}", None
    kind = _pick(rng, w.writes)
    if kind == "create_post":
        return kind, "POST", f"/api/v1/users/{keys.user(rng)}/posts", {"title": f"load {seq}", "body": "x" * 64}
    if kind == "update_user":
        return kind, "PATCH", f"/api/v1/users/{keys.user(rng)}", {"bio": f"load {seq}"}
    user_id, post_id = keys.post(rng)
    return kind, "PATCH", f"/api/v1/users/{user_id}/posts/{post_id}", {"body": f"load {seq}"}


def _days_ago(days: int) -> str:
    from datetime import datetime, timedelta, timezone
    return (datetime.now(timezone.utc) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_target(url: str, allowed: list[str] | None = None) -> None:
    """Safety: load goes only to loopback, or to hosts the stack's configuration lists for
    external mode (WORKBENCH_LOADGEN_ALLOWED_HOSTS, comma-separated)."""
    if allowed is None:
        allowed = [h for h in os.environ.get("WORKBENCH_LOADGEN_ALLOWED_HOSTS", "").split(",") if h]
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https"):
        raise WorkloadError("target", "an http:// or https:// URL")
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        if host == "localhost":
            return
    if host in allowed:
        return
    raise WorkloadError("target", f"{host!r} is not loopback and not in WORKBENCH_LOADGEN_ALLOWED_HOSTS")


def source_addresses(count: int) -> list[str | None]:
    """Loopback source addresses 127.0.0.1, 127.0.0.2, ...: per-IP limits see many clients."""
    if count <= 1:
        return [None]
    base = int(ipaddress.IPv4Address("127.0.0.1"))
    return [str(ipaddress.IPv4Address(base + i)) for i in range(count)]
