import json

from django.core.management.base import BaseCommand, CommandError

from workbench.stack import config, launcher
from workbench.stack.binaries import BinaryNotFound


class Command(BaseCommand):
    help = "Start the workbench: PostgreSQL, Valkey, app servers, Caddy and the dashboard."
    requires_system_checks = []

    def handle(self, *args, **options):
        cfg = config.load()
        try:
            state = launcher.up(cfg, out=self.stdout.write)
        except (launcher.StackError, BinaryNotFound) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write("")
        self.stdout.write(f"API          {state['api_url']}/api/v1/users")
        self.stdout.write(f"API docs     {state['api_url']}/api/docs")
        self.stdout.write(f"Dashboard    {state['dashboard_url']}")
        self.stdout.write(f"Controller   {state['controller_url']}  (token in {cfg.token_file})")
        try:
            creds = json.loads(cfg.credentials_file.read_text())
            for account in creds["accounts"]:
                self.stdout.write(f"Demo {account['role']:<8}{account['username']} / {account['password']}")
        except (FileNotFoundError, ValueError, KeyError):
            pass
        self.stdout.write("Status: python manage.py status   Stop: python manage.py down")
