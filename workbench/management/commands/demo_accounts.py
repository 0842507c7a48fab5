"""Create the demo accounts once, with fresh random passwords saved (0600) in the data dir."""
import json
import secrets

from django.conf import settings
from django.core.management.base import BaseCommand

from api.models import Account
from api.services import user_sign_up

DEMO = [("admin", "admin"), ("demo", "member")]


class Command(BaseCommand):
    help = "Create the demo admin and member accounts if they do not exist."

    def handle(self, *args, **options):
        path = settings.STACK.credentials_file
        try:
            saved = {a["username"]: a for a in json.loads(path.read_text())["accounts"]}
        except (FileNotFoundError, ValueError, KeyError):
            saved = {}
        accounts = []
        for username, role in DEMO:
            entry = saved.get(username)
            account = Account.objects.filter(username=username, state=Account.ACTIVE).first()
            if account is None:
                password = secrets.token_urlsafe(12)
                user, _ = user_sign_up(username=username, email=f"{username}@workbench.local",
                                       password=password, name=f"Demo {role}", role=role)
                entry = {"username": username, "role": role, "password": password, "user_id": str(user.id)}
                self.stdout.write(f"created demo {role} {username}")
            elif entry is None:  # the account exists but its password was lost: set a new one
                entry = {"username": username, "role": role, "password": secrets.token_urlsafe(12),
                         "user_id": str(account.user_id)}
                account.set_password(entry["password"])
                account.save(update_fields=["password"])
            accounts.append(entry)
        path.write_text(json.dumps({"accounts": accounts}, indent=2))
        path.chmod(0o600)
