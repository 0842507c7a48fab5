"""The user's current avatar blob (api.avatars): a nullable column, so adding it rewrites no rows."""
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("api", "0005_read_model_outbox")]

    operations = [
        migrations.AddField(model_name="user", name="avatar",
                            field=models.CharField(blank=True, max_length=200, null=True)),
    ]
