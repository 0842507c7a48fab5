"""Move the data to a new shard count or strategy, online: `reshard --to N [--strategy S]`.
The only way to change `shards` or `sharding` once data exists (api/routing/reshard.py)."""
import sys
import time

from django.core.management.base import BaseCommand, CommandError

from api.routing import reshard, shards
from workbench import topology

STRATEGIES = (*shards.STRATEGIES, "directory")


class Command(BaseCommand):
    help = "Move users and posts to N shards by a strategy while the API keeps serving."

    def add_arguments(self, parser):
        parser.add_argument("--to", type=int, help=f"shard count, 1..{shards.MAX_SHARDS}")
        parser.add_argument("--strategy", choices=STRATEGIES,
                            help="placement strategy (default: the current one)")
        parser.add_argument("--resume", action="store_true", help="finish an interrupted reshard")
        parser.add_argument("--rollback", action="store_true", help="move an interrupted reshard back")
        parser.add_argument("--status", action="store_true", help="show the last reshard and stop")

    def handle(self, *args, **opts):
        if opts["status"]:
            return self._status()
        started = time.monotonic()
        mover = reshard.Resharder(progress=self._progress)
        try:
            if opts["resume"]:
                job = mover.resume()
            elif opts["rollback"]:
                job = mover.rollback()
            else:
                if opts["to"] is None:
                    raise CommandError("--to N is required (or --resume / --rollback / --status)")
                strategy = opts["strategy"] or topology.store().read().topology.sharding
                job = mover.start(opts["to"], strategy)
        except reshard.ReshardError as exc:
            raise CommandError(str(exc)) from None
        sys.stderr.write("\n")
        self._summary(job, time.monotonic() - started)

    def _progress(self, job) -> None:
        total = max(job.users_total, job.users_seen, 1)
        done = min(job.users_seen / total, 1.0)
        bar = "#" * int(done * 30)
        sys.stderr.write(f"\r[{bar:<30}] {done:6.1%}  {job.users_seen:,}/{total:,} users looked at, "
                         f"{job.users_moved:,} moved, batch {job.batches}")
        sys.stderr.flush()

    def _summary(self, job, seconds: float) -> None:
        fraction = job.users_moved / job.users_total if job.users_total else 0.0
        before, after = job.before, job.after
        same = before.get("users_sum") == after.get("users_sum") and before.get("posts_sum") == after.get("posts_sum")
        self.stdout.write(
            f"reshard #{job.id} {job.state}: {job.from_strategy} x {job.from_shards} -> "
            f"{job.to_strategy} x {job.to_shards} in {seconds:.1f} s, {job.batches} batches\n"
            f"  users moved: {job.users_moved:,} of {job.users_total:,} ({fraction:.1%}); posts moved: "
            f"{job.posts_moved:,}\n"
            f"  every batch: source and target checksums of the moved rows matched\n"
            f"  before: {before.get('users', 0):,} users, {before.get('posts', 0):,} posts\n"
            f"  after:  {after.get('users', 0):,} users, {after.get('posts', 0):,} posts; checksums "
            f"{'equal' if same else 'differ (the API took writes meanwhile)'}")

    def _status(self) -> None:
        from api.models import ReshardJob
        job = ReshardJob.objects.order_by("-id").first()
        if job is None:
            self.stdout.write("no reshard has run")
            return
        self._summary(job, job.seconds or 0.0)
