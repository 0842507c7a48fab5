"""Key names in the `cache` Valkey.

Every key of one user carries the hash tag `{u:ID}`, so the user's entry, its posts pages, its
namespace version and its tombstone land in one Valkey Cluster slot: the scripts in `reads` and
`writes` touch several of them at once, which a cluster (`cache_nodes>1`, later work) allows only
within one slot.

Posts pages are many keys per user (every limit, cursor and time range). Instead of finding and
deleting them, each page key contains the user's namespace version: one INCR of that version on a
write makes every older page key unreachable, and the old entries simply expire.

Unreachable is not gone, though: a deleted user's data must not sit in the cache until a TTL runs
out (the compliance question). So every fill also adds its key to the user's `index` (a set in the
same slot, living as long as the longest entry it names), and a user's deletion removes every key
the index names, the index, the entry and the namespace in the same script (writes._WRITE).
"""
from __future__ import annotations

import hashlib

PREFIX = "wb:c1"  # bump the digit when the stored format changes: old entries become unreachable


def _tag(user_id: int) -> str:
    return f"{PREFIX}:{{u:{user_id}}}"


def user(user_id: int) -> str:
    return f"{_tag(user_id)}:user"


def namespace(user_id: int) -> str:
    """The version that every posts-page key of this user contains."""
    return f"{_tag(user_id)}:ns"


def index(user_id: int) -> str:
    """The keys filled for this user (every posts page, whatever its version): what a deletion purges."""
    return f"{_tag(user_id)}:keys"


def tombstone(user_id: int) -> str:
    """Present for a short while after a write: fills of this user's keys are skipped (see writes)."""
    return f"{_tag(user_id)}:tomb"


def posts_page(user_id: int, version: int, query: str) -> str:
    """One page of the user's posts; `query` is the normalized query (reads.posts_query)."""
    digest = hashlib.blake2b(query.encode(), digest_size=12).hexdigest()
    return f"{_tag(user_id)}:posts:{version}:{digest}"


# Not a key: the pub/sub channel on which every invalidation names its user id, for the per-process
# L1s (api/caching/local.py).
L1_CHANNEL = f"{PREFIX}:l1:invalidated"


def lock(key: str) -> str:
    """The single-flight lock of one entry (reads): same hash tag, so same slot as the entry."""
    return f"{key}:lock"
