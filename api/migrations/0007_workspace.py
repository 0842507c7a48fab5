"""Each member's workspace documents (api.models.Workspace), in meta only (api/routing/db.py)."""
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("api", "0006_user_avatar")]

    operations = [
        migrations.CreateModel(
            name="Workspace",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("kind", models.CharField(max_length=16)),
                ("data", models.JSONField(default=dict)),
                ("version", models.IntegerField(default=0)),
                ("updated_at", models.DateTimeField()),
                ("account", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="workspaces",
                                              to="api.account")),
            ],
            options={"db_table": "meta_workspace"},
        ),
        migrations.AddConstraint(
            model_name="workspace",
            constraint=models.UniqueConstraint(fields=("account", "kind"), name="meta_workspace_account_kind"),
        ),
    ]
