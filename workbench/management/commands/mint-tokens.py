"""`python manage.py mint-tokens`: one access token per active account, in bulk, for load tests.

Signing a token costs microseconds; logging in costs a password hash (about 0.2 s here), and bulk-
seeded users have no password at all. So the operator (whoever holds the data directory's signing
key: an admin) mints tokens for every account at once; the load generator then writes as each
post's owner (workbench/loadgen/runs.py reads the file, and runs this command when it is missing
or about to expire). The file holds live credentials: it is written owner-only (0600).
"""
import json
import os
import time
from datetime import timedelta

from django.core.management.base import BaseCommand

from api.gateway import auth
from api.models import Account
from api.routing.db import META
from workbench.loadgen.runs import tokens_file
from workbench.stack import config


class Command(BaseCommand):
    help = "Mint one access token per active account (for load tests) into the data directory."

    def add_arguments(self, parser):
        parser.add_argument("--lifetime-hours", type=float, default=24.0, help="how long the tokens stay valid")
        parser.add_argument("--limit", type=int, default=0, help="at most this many accounts (0: all)")

    def handle(self, *args, **options):
        hours = options["lifetime_hours"]
        if not 0 < hours <= 24 * 7:
            raise SystemExit("--lifetime-hours must be above 0 and at most a week")
        started = time.perf_counter()
        accounts = Account.objects.using(META).filter(state=Account.ACTIVE).order_by("user_id")
        if options["limit"]:
            accounts = accounts[: options["limit"]]
        lifetime = timedelta(hours=hours)
        tokens = {str(user_id): auth.access_token(user_id, role, lifetime=lifetime)
                  for user_id, role in accounts.values_list("user_id", "role").iterator(chunk_size=5000)}
        path = tokens_file(config.load())
        tmp = path.with_suffix(".tmp")
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump({"expires_at": time.time() + lifetime.total_seconds(), "tokens": tokens}, f)
        os.replace(tmp, path)
        self.stdout.write(f"minted {len(tokens):,} tokens valid for {hours:g} h in "
                          f"{time.perf_counter() - started:.1f} s: {path}")
