"""The shard placement strategies (api/routing/shards.py), as pure logic: placement, evenness over
ids shaped like the real generator's, movement when the shard count changes, and properties of the
ring and of the router (hypothesis): a fence's owner during and after a reshard, and the data node
names. These need no stack; tests/test_shard_placement.py checks placement on the live stack."""
import collections
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.routing import ids, placement, shards

# Chi-squared critical values at p = 0.001 for 1..7 degrees of freedom: a fair spread fails this
# one time in a thousand.
CHI2_CRIT_001 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}
ANY_ID = st.integers(min_value=0, max_value=ids.MAX_ID)


def one_at_a_time(n: int, seed: int = 7) -> list[int]:
    """Ids as the real generator makes them for users signing up one at a time at a low rate
    (5 to 50 ms apart): each its own millisecond, so sequence 0, from a few leased generators."""
    rng = random.Random(seed)
    clock = {"ms": ids.EPOCH_MS + 700 * 24 * 3600 * 1000}  # late 2026
    gens = [ids.Generator(g, clock=lambda: clock["ms"] / 1000) for g in (3, 4, 17)]  # three app workers
    out = []
    for _ in range(n):
        clock["ms"] += rng.randint(5, 50)
        out.append(rng.choice(gens).next_id())
    return out


def chi_squared(user_ids, n: int, strategy: str) -> tuple[float, collections.Counter]:
    counts = collections.Counter(shards.shard_of(u, n, strategy) for u in user_ids)
    expected = len(user_ids) / n
    return sum((counts.get(s, 0) - expected) ** 2 / expected for s in range(1, n + 1)), counts


def test_the_generator_makes_sequence_0_ids_one_at_a_time():
    made = one_at_a_time(50)
    assert len(set(made)) == 50 and all(u & ids.MAX_SEQUENCE == 0 for u in made)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("strategy", ["hash", "consistent"])
def test_hash_and_consistent_spread_real_ids_evenly(strategy, n):
    stat, counts = chi_squared(one_at_a_time(4000), n, strategy)
    assert stat < CHI2_CRIT_001[n - 1], (stat, counts)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_modulo_puts_every_one_at_a_time_user_on_shard_1_for_powers_of_two(n):
    """The seed's `user_id % N` on snowflakes: for N dividing 4096 it sees only the sequence."""
    _, counts = chi_squared(one_at_a_time(1000), n, "modulo")
    print(f"\nmodulo, {n} shards: {dict(sorted(counts.items()))}")
    assert counts == {1: 1000}


def test_modulo_with_3_shards_spreads_but_is_the_raw_id():
    stat, counts = chi_squared(one_at_a_time(3000), 3, "modulo")
    print(f"\nmodulo, 3 shards: {dict(sorted(counts.items()))}, chi-squared {stat:.1f}")
    assert set(counts) == {1, 2, 3}


@pytest.mark.parametrize("n", [2, 4, 8])
def test_range_puts_every_new_user_on_the_shard_of_now(n):
    _, counts = chi_squared(one_at_a_time(1000), n, "range")
    print(f"\nrange, {n} shards: {dict(sorted(counts.items()))}")
    assert len(counts) == 1  # one hot shard takes every write


@pytest.mark.parametrize("strategy,expected,tolerance", [("consistent", 0.20, 0.06), ("modulo", 0.80, 0.06),
                                                         ("hash", 0.80, 0.04)])
def test_moved_fraction_from_4_to_5_shards(strategy, expected, tolerance):
    rng = random.Random(11)
    sample = [ids.compose(ids.EPOCH_MS + rng.randrange(2**36), rng.randrange(1024), rng.randrange(4096))
              for _ in range(20_000)]
    moved = shards.moved_fraction(sample, strategy, 4, 5)
    print(f"\n{strategy}: {moved:.1%} of users move from 4 to 5 shards")
    assert abs(moved - expected) < tolerance


def test_unknown_strategy_and_bad_counts_are_refused():
    with pytest.raises(ValueError):
        shards.shard_of(1, 4, "nope")
    with pytest.raises(ValueError):
        shards.shard_of(1, 9, "hash")
    assert shards.shard_of(123, 1, "nope-but-one-shard") == 1


@settings(max_examples=300, deadline=None)
@given(user_id=ANY_ID, n=st.integers(1, shards.MAX_SHARDS), strategy=st.sampled_from(shards.STRATEGIES))
def test_every_id_has_exactly_one_shard_in_range(user_id, n, strategy):
    shard = shards.shard_of(user_id, n, strategy)
    assert 1 <= shard <= n and shard == shards.shard_of(user_id, n, strategy)


@settings(max_examples=300, deadline=None)
@given(user_id=ANY_ID, n=st.integers(1, shards.MAX_SHARDS - 1))
def test_adding_a_shard_to_the_ring_only_moves_ids_to_the_new_shard(user_id, n):
    before, after = shards.shard_of(user_id, n, "consistent"), shards.shard_of(user_id, n + 1, "consistent")
    assert after in (before, n + 1)


@settings(max_examples=200, deadline=None)
@given(x=st.integers(0, 2**64 - 1), y=st.integers(0, 2**64 - 1))
def test_the_mixer_is_a_bijection_on_distinct_inputs(x, y):
    assert (shards.mix64(x) == shards.mix64(y)) == (x == y)


# --- the router: fences and node names (api/routing/placement.py, api/routing/shards.py) -----------
PURE = st.sampled_from(shards.STRATEGIES)
SHARD_COUNT = st.integers(1, shards.MAX_SHARDS)
# A fence's progress: anywhere in the id space, and the two ends (nothing moved yet, all moved).
MOVED_UPTO = st.one_of(ANY_ID, st.just(-1), st.just(ids.MAX_ID))


@settings(max_examples=400, deadline=None)
@given(user_id=ANY_ID, old=PURE, old_n=SHARD_COUNT, new=PURE, new_n=SHARD_COUNT, upto=MOVED_UPTO)
def test_a_fence_sends_moved_ids_to_the_new_mapping_and_the_others_to_the_old(user_id, old, old_n, new, new_n,
                                                                            upto):
    fence = placement.Fence(job=7, old_strategy=old, old_shards=old_n, new_strategy=new, new_shards=new_n,
                            moved_upto=upto)
    moved = user_id <= upto
    assert fence.owner(user_id) == (shards.shard_of(user_id, new_n, new) if moved
                                    else shards.shard_of(user_id, old_n, old))


@settings(max_examples=300, deadline=None)
@given(upto=st.integers(0, ids.MAX_ID - 1), old=PURE, old_n=SHARD_COUNT, new=PURE, new_n=SHARD_COUNT)
def test_the_fence_boundary_itself_is_moved_and_the_next_id_is_not(upto, old, old_n, new, new_n):
    fence = placement.Fence(job=1, old_strategy=old, old_shards=old_n, new_strategy=new, new_shards=new_n,
                            moved_upto=upto)
    assert fence.owner(upto) == shards.shard_of(upto, new_n, new)
    assert fence.owner(upto + 1) == shards.shard_of(upto + 1, old_n, old)
    assert fence.job_running  # a boundary below MAX_ID means a reshard is moving rows


@settings(max_examples=300, deadline=None)
@given(user_id=ANY_ID, strategy=PURE, n=SHARD_COUNT)
def test_a_fence_at_rest_owns_exactly_what_shard_of_says(user_id, strategy, n):
    fence = placement.Fence(job=3, old_strategy=strategy, old_shards=n, new_strategy=strategy, new_shards=n)
    assert not fence.job_running
    assert fence.owner(user_id) == shards.shard_of(user_id, n, strategy) == placement.place(user_id, strategy, n)
    # A shard without a fence row reads as the default fence: one shard, which owns everything.
    assert placement.Fence().owner(user_id) == 1 and not placement.Fence().job_running


@settings(max_examples=200, deadline=None)
@given(strategy=PURE, old_n=SHARD_COUNT, new_n=SHARD_COUNT)
def test_a_fence_whose_mapping_changes_is_a_running_job_even_before_any_id_moved(strategy, old_n, new_n):
    fence = placement.Fence(job=2, old_strategy=strategy, old_shards=old_n, new_strategy="hash", new_shards=new_n,
                            moved_upto=-1)
    assert fence.job_running
    assert fence.owner(0) == shards.shard_of(0, old_n, strategy)  # id 0 > -1: nothing moved yet


def test_every_alias_round_trips_through_parse_alias_and_display_name():
    aliases = shards.all_aliases()
    assert len(aliases) == len(set(aliases)) == shards.MAX_SHARDS * (1 + shards.MAX_REPLICAS)
    seen_plain, seen_sharded = set(), set()
    for alias in aliases:
        shard, index = shards.parse_alias(alias)
        assert 1 <= shard <= shards.MAX_SHARDS and 0 <= index <= shards.MAX_REPLICAS
        assert (shards.primary_alias(shard) if index == 0 else shards.replica_alias(shard, index)) == alias
        assert shards.display_name(alias, sharded=False) == alias
        shown = shards.display_name(alias, sharded=True)
        assert shown == f"shard-{shard}/" + (f"replica-{index}" if index else "primary")
        seen_plain.add(alias)
        seen_sharded.add(shown)
    assert len(seen_sharded) == len(aliases)  # no two nodes share a header name
    # Shard 1 keeps its pre-sharding names: `primary`, `replica-i`.
    assert shards.parse_alias("primary") == (1, 0) and shards.parse_alias("replica-3") == (1, 3)
    assert shards.parse_alias("shard-8-replica-4") == (8, 4)


@settings(max_examples=300, deadline=None)
@given(shard=SHARD_COUNT, index=st.integers(0, shards.MAX_REPLICAS))
def test_shard_and_replica_numbers_round_trip_through_their_alias(shard, index):
    alias = shards.primary_alias(shard) if index == 0 else shards.replica_alias(shard, index)
    assert alias in shards.all_aliases()
    assert shards.parse_alias(alias) == (shard, index)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=24) | st.sampled_from(["meta", "default", "shard-x", "replica-", "shard-2-replica",
                                                    "shard-2-copy-1", "pgbouncer"]))
def test_names_that_are_not_aliases_never_raise_and_are_shown_as_they_are(text):
    where = shards.parse_alias(text)
    assert shards.display_name(text, sharded=False) == text
    if where is None:  # meta, pgbouncer, anything else: never renamed
        assert shards.display_name(text, sharded=True) == text
