"""Register an OAuth 2.0 client (api/gateway/oauth.py) and print its id and secret, once: only a hash
of the secret is kept (in meta).

    python manage.py oauth_client --name reporter --grant client-credentials --owner alice
    python manage.py oauth_client --name mobile --grant authorization-code --public \\
        --owner alice --redirect-uri http://127.0.0.1:8765/callback

A client-credentials client acts as its owner (the token's role is the lower of the scope's and
the owner's); it is always confidential. An authorization-code client acts for whichever user signs
in and consents, with PKCE (S256) required; `--public` makes one with no secret (a mobile or
single-page app), otherwise it is confidential.
"""
import json

from django.core.management.base import BaseCommand, CommandError
from oauth2_provider.generators import generate_client_secret
from oauth2_provider.models import get_application_model

from api.models import Account

GRANTS = {"client-credentials": "client-credentials", "authorization-code": "authorization-code"}


class Command(BaseCommand):
    help = "Register an OAuth 2.0 client and print its client id and secret (shown only once)."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="the application's name, shown on the consent page")
        parser.add_argument("--grant", required=True, choices=sorted(GRANTS))
        parser.add_argument("--owner", required=True, help="username of the owning account (the principal "
                                                           "of a client-credentials token)")
        parser.add_argument("--redirect-uri", action="append", default=[],
                            help="an exact redirect URI (authorization code; repeat for several)")
        parser.add_argument("--public", action="store_true",
                            help="authorization code only: a public client (no secret; PKCE protects it)")
        parser.add_argument("--json", action="store_true", dest="as_json", help="print JSON instead of text")

    def handle(self, *args, name, grant, owner, redirect_uri, public, as_json=False, **options):
        Application = get_application_model()
        if not name.strip() or len(name) > 255:
            raise CommandError("--name must be 1 to 255 characters.")
        account = Account.objects.filter(username=owner).first()
        if account is None:
            raise CommandError(f"No account is named {owner!r}.")
        if account.state != Account.ACTIVE:
            raise CommandError(f"The account {owner!r} is not active.")
        authorization_code = grant == "authorization-code"
        if authorization_code and not redirect_uri:
            raise CommandError("An authorization-code client needs at least one --redirect-uri.")
        if not authorization_code and (redirect_uri or public):
            raise CommandError("--redirect-uri and --public are for authorization-code clients only.")
        for uri in redirect_uri:
            if not uri.startswith(("http://", "https://")) or " " in uri:
                raise CommandError(f"Not an http(s) redirect URI: {uri!r}.")
        secret = "" if public else generate_client_secret()
        app = Application(
            name=name.strip(), user=account,
            client_type=Application.CLIENT_PUBLIC if public else Application.CLIENT_CONFIDENTIAL,
            authorization_grant_type=(Application.GRANT_AUTHORIZATION_CODE if authorization_code
                                      else Application.GRANT_CLIENT_CREDENTIALS),
            redirect_uris=" ".join(redirect_uri), client_secret=secret, algorithm="")
        try:
            app.full_clean()
        except Exception as exc:  # a ValidationError: say what, never a traceback
            raise CommandError(f"The client is not valid: {exc}") from None
        app.save()
        out = {"client_id": app.client_id, "client_secret": secret or None, "grant": grant,
               "client_type": app.client_type, "owner": owner, "redirect_uris": redirect_uri}
        if as_json:
            self.stdout.write(json.dumps(out))
            return
        self.stdout.write(f"client_id:     {app.client_id}")
        self.stdout.write(f"client_secret: {secret or '(none: a public client)'}")
        if secret:
            self.stdout.write("The secret is shown only this once; only its hash is kept.")
