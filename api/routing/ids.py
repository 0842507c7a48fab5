"""64-bit time-ordered ids, unique across processes and shards (snowflake layout).

    | 1 bit 0 | 41 bits ms since EPOCH | 10 bits generator | 12 bits sequence |

Each process leases its own generator number in the `state` Valkey, so two live processes
never share one: ids stay unique however data is later spread over shards. 41 bits of
milliseconds last about 69 years from EPOCH_MS.
"""
from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone

EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
GENERATOR_BITS = 10
SEQUENCE_BITS = 12
MAX_GENERATOR = (1 << GENERATOR_BITS) - 1
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
MAX_ID = (1 << 63) - 1
LEASE_SECONDS = 3600
# Generator 1023 is kept for bulk seeding, which makes ids from past timestamps.
SEED_GENERATOR = MAX_GENERATOR


def compose(ms: int, generator: int, sequence: int) -> int:
    return ((ms - EPOCH_MS) << (GENERATOR_BITS + SEQUENCE_BITS)) | (generator << SEQUENCE_BITS) | sequence


def timestamp_ms(snowflake: int) -> int:
    return (snowflake >> (GENERATOR_BITS + SEQUENCE_BITS)) + EPOCH_MS


def created_at(snowflake: int) -> datetime:
    return datetime.fromtimestamp(timestamp_ms(snowflake) / 1000, tz=timezone.utc)


class Generator:
    def __init__(self, generator: int, clock=time.time):
        if not 0 <= generator <= MAX_GENERATOR:
            raise ValueError(f"generator {generator} is outside 0..{MAX_GENERATOR}")
        self.generator = generator
        self._clock = clock
        self._last_ms = -1
        self._sequence = 0
        self._lock = threading.Lock()

    def next_id(self) -> int:
        with self._lock:
            ms = int(self._clock() * 1000)
            if ms < self._last_ms:
                # The clock stepped back: never reuse a past millisecond, wait it out instead.
                time.sleep((self._last_ms - ms) / 1000)
                ms = max(int(self._clock() * 1000), self._last_ms)
            if ms == self._last_ms:
                self._sequence = (self._sequence + 1) & MAX_SEQUENCE
                if self._sequence == 0:  # 4096 ids in this millisecond: move to the next one
                    while ms <= self._last_ms:
                        ms = int(self._clock() * 1000)
            else:
                self._sequence = 0
            self._last_ms = ms
            return compose(ms, self.generator, self._sequence)


def lease_generator(client, owner: str | None = None) -> int:
    """Take a generator number no other live process holds (SET NX with a TTL in `state`)."""
    owner = owner or f"{os.uname().nodename}:{os.getpid()}"
    for _ in range(MAX_GENERATOR):
        candidate = client.incr("workbench:idgen:next") % MAX_GENERATOR  # never SEED_GENERATOR
        if client.set(f"workbench:idgen:lease:{candidate}", owner, nx=True, ex=LEASE_SECONDS):
            return candidate
    raise RuntimeError("every id generator number is leased")


_generator: Generator | None = None
_generator_pid: int | None = None
_generator_lock = threading.Lock()
_lease_renewed = 0.0


def next_id() -> int:
    """An id from this process's generator, leasing (and renewing) its number as needed."""
    global _generator, _generator_pid, _lease_renewed
    from api.state import state_client

    with _generator_lock:
        # A forked worker must not inherit its parent's generator number.
        if _generator is None or _generator_pid != os.getpid():
            _generator = Generator(lease_generator(state_client()))
            _generator_pid = os.getpid()
            _lease_renewed = time.monotonic()
        elif time.monotonic() - _lease_renewed > LEASE_SECONDS / 3:
            # If the lease vanished (say, `state` lost it), take it again or move to a free number.
            client = state_client()
            key = f"workbench:idgen:lease:{_generator.generator}"
            if not client.expire(key, LEASE_SECONDS) and not client.set(key, "renewed", nx=True, ex=LEASE_SECONDS):
                _generator = Generator(lease_generator(client))
            _lease_renewed = time.monotonic()
        generator = _generator
    return generator.next_id()
