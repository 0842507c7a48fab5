"""The automatic failover's watcher, as pure logic over the data nodes' reports (no stack): one
outage gives one failover, even while reports sampled before it finished still show the old
primary down (a second failover once fenced the freshly promoted primary 0.8 s after the first)."""
import time
from types import SimpleNamespace

from workbench.stack import failover


def watcher(monkeypatch, grace_s=0.2):
    calls = []

    def fake_run(ctl, shard, reason):
        time.sleep(0.3)   # a failover takes longer than the grace, as a real one does
        calls.append((shard, reason))

    monkeypatch.setattr(failover, "run", fake_run)
    group = SimpleNamespace(number=1, primary="primary")
    dn = SimpleNamespace(topology=SimpleNamespace(failover=SimpleNamespace(auto=True, grace_s=grace_s)),
                         last_report=None, running_groups=lambda: [group])
    return failover.Watcher(SimpleNamespace(data_nodes=dn)), dn, calls


def report(healthy: bool, at: float):
    return SimpleNamespace(at=at, nodes={"primary": {"healthy": healthy}})


def test_one_outage_one_failover_while_old_reports_still_say_down(monkeypatch):
    w, dn, calls = watcher(monkeypatch)
    sampled = time.time()
    dn.last_report = report(False, sampled)
    w.check()                                  # down: the grace starts
    time.sleep(0.25)
    w.check()                                  # past the grace: fail over
    assert len(calls) == 1 and calls[0][1].startswith("auto: down for"), calls
    for _ in range(4):                         # the report still predates the failover
        time.sleep(0.1)
        w.check()
    assert len(calls) == 1, calls
    dn.last_report = report(True, time.time())  # the promoted primary answers
    w.check()
    assert len(calls) == 1


def test_a_new_outage_after_the_failover_is_failed_over_again(monkeypatch):
    w, dn, calls = watcher(monkeypatch)
    dn.last_report = report(False, time.time())
    w.check()
    time.sleep(0.25)
    w.check()
    assert len(calls) == 1
    time.sleep(0.01)
    dn.last_report = report(False, time.time())  # sampled after it: the new primary is down too
    w.check()
    time.sleep(0.25)
    w.check()
    assert len(calls) == 2, calls


def test_nothing_happens_with_auto_off_or_within_the_grace(monkeypatch):
    w, dn, calls = watcher(monkeypatch, grace_s=5)
    dn.last_report = report(False, time.time())
    w.check()
    time.sleep(0.2)
    w.check()
    assert calls == []
    dn.topology.failover.auto = False
    w.check()
    assert calls == [] and w.down_since == {}
