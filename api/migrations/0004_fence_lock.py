"""Writes check a shard's fence under a shared advisory lock instead of a row lock (FOR SHARE wrote
a lock record and dirtied the fence's page on every write); a reshard batch takes the lock
exclusively. The function takes the lock and then reads the fence, in one round trip: a volatile
PL/pgSQL function reads with a new snapshot per statement, so it sees a fence committed while
it waited (api/routing/placement.py)."""
from django.db import migrations

FENCE_LOCK = 0x5B5A4E  # api.routing.placement.FENCE_LOCK

CREATE = f"""
CREATE OR REPLACE FUNCTION shard_fence_for_write() RETURNS SETOF shard_fence
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({FENCE_LOCK});
    RETURN QUERY SELECT * FROM shard_fence WHERE id = 1;
END $$
"""


class Migration(migrations.Migration):
    dependencies = [("api", "0003_reshard_job")]

    operations = [
        migrations.RunSQL(CREATE, reverse_sql="DROP FUNCTION IF EXISTS shard_fence_for_write()",
                          hints={"model_name": "shardfence"}),
    ]
