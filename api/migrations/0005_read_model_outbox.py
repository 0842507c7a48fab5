"""The read model's transactional outbox (api.models.Outbox), on every data shard (the router
sends the `outbox` model to the shard primaries only, like users and posts)."""
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("api", "0004_fence_lock")]

    operations = [
        migrations.CreateModel(
            name="Outbox",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("user_id", models.BigIntegerField()),
                ("kind", models.CharField(max_length=16)),
                ("committed_at", models.DateTimeField()),
            ],
            options={"db_table": "rm_outbox"},
        ),
    ]
