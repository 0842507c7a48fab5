"""The injected round trip per data node (api/routing/emulation.round_trip_ms), as pure logic: the
region hop goes to replica N of every shard, as the replay delay does (topology.replica_delays_ms)."""
from api.routing import emulation
from api.routing.shards import replica_alias
from workbench.topology import Emulation


def test_the_remote_replica_is_replica_n_of_every_shard(monkeypatch):
    monkeypatch.setattr(emulation, "chaos_slow_ms", lambda node: 0.0)
    far = Emulation(enabled=False, rtt_ms=1.0, remote_replica=2, region_rtt_ms=65.0)
    for shard in (1, 2, 3):
        assert emulation.round_trip_ms(replica_alias(shard, 2), far) == 65.0
        assert emulation.round_trip_ms(replica_alias(shard, 1), far) == 0.0
    assert emulation.round_trip_ms("primary", far) == 0.0
    assert emulation.round_trip_ms("shard-2", far) == 0.0
    near = Emulation(enabled=True, rtt_ms=1.0, remote_replica=2, region_rtt_ms=65.0)
    assert emulation.round_trip_ms(replica_alias(2, 2), near) == 66.0
    assert emulation.round_trip_ms(replica_alias(2, 1), near) == 1.0
