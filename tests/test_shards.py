"""The shard placement strategies (api/routing/shards.py), as pure logic: placement, evenness over
ids shaped like the real generator's, movement when the shard count changes, and properties of the
ring (hypothesis). The live sharded stack comes with the sharding issue; these need no stack."""
import collections
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.routing import ids, shards

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
