"""Measure the RPO of the WAL archive: what losing the shard-1 primary's disk loses. A benchmark on
a running stack, not a test: it writes a ledger of acknowledged commits, SIGKILLs pg-primary and
hides its data directory (the lost disk) so nothing more reaches the archive, restores the last
backup plus the archive to its end as a drill, counts the acknowledged commits missing, then puts
the directory back for the controller to restart the node. Figures go to docs/reliability.md."""
import os
import shutil
import signal
import statistics
import threading
import time
import uuid

import psycopg
from django.core.management.base import BaseCommand, CommandError

from workbench import parameters
from workbench.stack import backup, config, launcher

LEDGER = "CREATE TABLE IF NOT EXISTS rpo_ledger (run text, seq int, PRIMARY KEY (run, seq))"


class Command(BaseCommand):
    help = "SIGKILL the primary, lose its disk, restore from the archive: the acknowledged writes lost."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--rate", type=float, default=10.0, help="ledger commits per second (default 10)")
        # The checkpointer forces a switch on its own cadence of archive_timeout, and a manual switch
        # (this drill's own, below, or a backup's) puts its next one off by up to one more period:
        # writing for 2.5 periods leaves the kill at an unplanned phase of that cadence.
        parser.add_argument("--seconds", type=float, default=150.0,
                            help="writing time before the kill (default 150, 2.5 x archive_timeout)")
        parser.add_argument("--times", type=int, default=1)

    def handle(self, *args, rate, seconds, times, **options):
        if not (0 < rate <= 500 and 1 <= seconds <= 3600 and 1 <= times <= 10):
            raise CommandError("--rate must be in (0, 500], --seconds in [1, 3600], --times in [1, 10]")
        cfg = config.load()
        if not backup.manifests(cfg):
            raise CommandError("no backup yet: take one first (`python manage.py backup`)")
        timeout = parameters.load().get("backup", {}).get("archive_timeout_s")
        self.stdout.write(f"archive_timeout {timeout}s, {rate:g} commits/s for {seconds:g}s before each kill")
        lost, windows = [], []
        for attempt in range(1, times + 1):
            acked, missing, window = self._once(cfg, rate, seconds)
            lost.append(missing)
            windows.append(window)
            self.stdout.write(f"  #{attempt}: {acked} acknowledged, {missing} lost: the last {window:.1f}s "
                              "before the kill")
        if times > 1:
            self.stdout.write(f"lost: median {statistics.median(lost)}, max {max(lost)}; window: median "
                              f"{statistics.median(windows):.1f}s, max {max(windows):.1f}s")

    def _once(self, cfg, rate, seconds):
        state = launcher.status(cfg)
        if not state:
            raise CommandError("the stack is not running (`python manage.py up`)")
        pid = next((p["pid"] for p in state["processes"] if p["name"] == "pg-primary" and p["healthy"]), None)
        if not pid:
            raise CommandError("pg-primary is not running and healthy")
        url = f"postgres://workbench@127.0.0.1:{cfg.data_pg_port}/postgres"
        run = uuid.uuid4().hex[:8]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(LEDGER)
        # The table reaches the archive before the run: what is lost is the run's commits only.
        backup.archive_now(cfg, [backup.Node("primary", url, "postgres")])
        acks: dict[int, float] = {}
        stop = threading.Event()
        writer = threading.Thread(target=_write, args=(url, run, rate, acks, stop))
        writer.start()
        time.sleep(seconds)
        data_dir = cfg.data_dir / "pg" / "primary"
        lost_disk = data_dir.with_name("primary.lost-disk")
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        data_dir.rename(lost_disk)  # its WAL is gone with the disk: only the archive is left
        stop.set()
        writer.join()
        try:
            result = backup.restore(cfg, to_end=True, out=lambda *_: None)
            restored_url = result.urls["primary"].rsplit("/", 1)[0] + "/postgres"
            with psycopg.connect(restored_url, autocommit=True) as conn:
                kept = {r[0] for r in conn.execute("SELECT seq FROM rpo_ledger WHERE run = %s", (run,))}
        finally:
            backup.discard_drill(cfg)
            if data_dir.exists():  # the supervisor's restarts never make one, but be sure
                shutil.rmtree(data_dir)
            lost_disk.rename(data_dir)
        missing = [s for s in acks if s not in kept]
        # The data-loss window: from the first acknowledged commit lost to the kill.
        window = killed_at - min((acks[s] for s in missing), default=killed_at)
        self._wait_healthy(cfg)
        return len(acks), len(missing), window

    def _wait_healthy(self, cfg, timeout: float = 120.0) -> None:
        """The supervisor restarts it (its backoff has grown meanwhile, up to 30 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = launcher.status(cfg) or {"processes": []}
            if any(p["name"] == "pg-primary" and p["healthy"] for p in state["processes"]):
                return
            time.sleep(0.5)
        raise CommandError(f"pg-primary was not healthy again within {timeout:.0f}s; see `python manage.py status`")


def _write(url: str, run: str, rate: float, acks: dict, stop: threading.Event) -> None:
    """One commit every 1/rate s (open loop: a slow commit does not push the schedule back)."""
    with psycopg.connect(url, autocommit=True) as conn:
        start, seq = time.monotonic(), 0
        while not stop.is_set():
            delay = start + seq / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                conn.execute("INSERT INTO rpo_ledger VALUES (%s, %s)", (run, seq))
            except psycopg.Error:
                return  # the primary is gone
            acks[seq] = time.time()
            seq += 1
