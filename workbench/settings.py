"""Django settings: everything comes from the environment (django-environ) and the stack config."""
import os
import time
from datetime import timedelta
from pathlib import Path

import environ

from workbench.stack import config as stack_config

BASE_DIR = Path(__file__).resolve().parent.parent
STACK = stack_config.load()
env = environ.Env()


def _secret(filename: str, env_name: str) -> str:
    """No secret ships with the code: each is made on first use (the first `up`) and kept in the
    data dir, unless the environment gives it."""
    if env.str(env_name, default=""):
        return env.str(env_name)
    import secrets

    path = STACK.data_dir / filename
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # "x": exactly one process creates it; a process that loses the race reads the winner's.
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(secrets.token_urlsafe(50))
        except FileExistsError:
            pass
    for _ in range(50):  # the winner may not have written it yet
        key = path.read_text().strip()
        if key:
            return key
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty")


SECRET_KEY = _secret("django-secret.key", "DJANGO_SECRET_KEY")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
APP_SERVER_NAME = env.str("WORKBENCH_APP_SERVER", default="local")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",  # only the OAuth pages' browser sessions (api/gateway/oauth.py)
    "oauth2_provider",
    "rest_framework",
    "drf_spectacular",
    "api",
    "workbench",
]

MIDDLEWARE = [
    "api.gateway.middleware.GatewayMiddleware",
    "api.gateway.oauth.BrowserSessionMiddleware",  # sessions and request.user under /api/v1/oauth/ only
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "workbench.urls"
WSGI_APPLICATION = "workbench.wsgi.application"
APPEND_SLASH = False
USE_TZ = True
TIME_ZONE = "UTC"

TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
}]


def _database(url: str) -> dict:
    db = env.db_url_config(url)
    # Django's backend plus the live pooling toggle, emulation and per-node counters.
    db["ENGINE"] = "api.routing.backend"
    # A psycopg pool per node and worker, used while the topology's `pool` is on. It starts empty
    # (min_size 0) and is resized to the topology's `pool_max` when that changes.
    db["OPTIONS"] = {"pool": {"min_size": 0, "max_size": 8, "timeout": 10}}
    db["CONN_MAX_AGE"] = 0
    db["TEST"] = {"NAME": f"test_{db['NAME']}"}
    return db


# `default` is the meta database (accounts, global uniqueness, the shard directory). Users and
# posts live on shards: shard 1's primary is `primary`, shard k's is `shard-k`; each streams to
# the replicas the topology asks for. api.routing.db.Router picks the node.
def _data_databases() -> dict:
    from api.routing.shards import MAX_REPLICAS, MAX_SHARDS, primary_alias, replica_alias
    out = {}
    for k in range(1, MAX_SHARDS + 1):
        out[primary_alias(k)] = _database(STACK.shard_url(k))
        for i in range(1, MAX_REPLICAS + 1):
            out[replica_alias(k, i)] = {**_database(STACK.shard_replica_url(k, i)),
                                        "TEST": {"MIRROR": primary_alias(k)}}
    return out


DATABASES = {"default": _database(STACK.meta_db_url), **_data_databases()}
DATABASE_ROUTERS = ["api.routing.db.Router"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "api.Account"
# The test suite signs up hundreds of users, and PBKDF2 costs about 0.2 s of CPU each on these
# machines: the tests' stack hashes new passwords with MD5 instead (tests/conftest.py sets this).
# Never set it for real use. Existing PBKDF2 hashes still verify.
if env.bool("WORKBENCH_TEST_FAST_PASSWORD_HASHING", default=False):
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher",
                        "django.contrib.auth.hashers.PBKDF2PasswordHasher"]

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": STACK.cache_url,
        # A healthy cache answers in well under 1 ms: 0.25 s trips only on a dead or hung one, and
        # then api.caching.valkey's breaker skips the cache for a while (see there).
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.25, "SOCKET_TIMEOUT": 0.25},
    }
}
VALKEY_STATE_URL = STACK.state_url


def _networks(name: str, default: list[str]) -> tuple:
    import ipaddress

    from django.core.exceptions import ImproperlyConfigured
    try:
        return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in env.list(name, default=default))
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from None


# The rate limiter's client IP (api/gateway/ratelimit.py): X-Forwarded-For is believed only from these
# addresses or networks (comma-separated). By default the address Caddy connects to the app servers
# from, on loopback; behind another proxy, or with Caddy on another machine, list its address here.
TRUSTED_PROXIES = _networks("WORKBENCH_TRUSTED_PROXIES", ["127.0.0.1"])

# Bodies above this size get 413 before any parsing.
MAX_BODY_BYTES = env.int("WORKBENCH_MAX_BODY_BYTES", default=64 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_BODY_BYTES

# Avatars (api.avatars): an image body up to 2 MB, and at most this many pixels once decoded.
AVATAR_MAX_BYTES = 2 * 1024 * 1024
AVATAR_MAX_PIXELS = env.int("WORKBENCH_AVATAR_MAX_PIXELS", default=4096 * 4096)

# Blobs go through Django's storage API. By default they are files under the data directory, which
# Caddy serves at /media/ (workbench/stack/caddy.py). External mode: with WORKBENCH_S3_BUCKET set,
# the `avatars` storage is any S3-compatible service (django-storages' S3 backend).
MEDIA_ROOT = STACK.media_dir
MEDIA_URL = "/media/"


def _avatar_storage() -> dict:
    bucket = env.str("WORKBENCH_S3_BUCKET", default="")
    if not bucket:
        return {"BACKEND": "django.core.files.storage.FileSystemStorage"}
    public_url = env.str("WORKBENCH_S3_PUBLIC_URL", default="")  # a CDN or public bucket host
    options = {
        "bucket_name": bucket,
        "endpoint_url": env.str("WORKBENCH_S3_ENDPOINT_URL", default="") or None,
        "region_name": env.str("WORKBENCH_S3_REGION", default="") or None,
        "access_key": env.str("WORKBENCH_S3_ACCESS_KEY_ID", default="") or None,
        "secret_key": env.str("WORKBENCH_S3_SECRET_ACCESS_KEY", default="") or None,
        # Names are content-hashed: an object never changes, so every cache may keep it.
        "object_parameters": {"CacheControl": "public, max-age=31536000, immutable"},
        "file_overwrite": True,
    }
    if public_url:
        options.update(custom_domain=public_url.removeprefix("https://").removeprefix("http://").rstrip("/"),
                       url_protocol="https:" if not public_url.startswith("http://") else "http:",
                       querystring_auth=False)
    return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}


STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "avatars": _avatar_storage(),
}

# JWTs (api/gateway/auth.py): HS256 with a key made on the first `up` (never shipped); the decoder
# accepts only this algorithm, so `alg: none` and algorithm swaps are refused.
SIMPLE_JWT = {
    "ALGORITHM": "HS256",
    "SIGNING_KEY": _secret("jwt-signing.key", "WORKBENCH_JWT_SIGNING_KEY"),
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("WORKBENCH_JWT_ACCESS_MINUTES", default=15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=1),
    "USER_ID_FIELD": "user_id",
    "USER_ID_CLAIM": "user_id",
    "LEEWAY": 0,
    "UPDATE_LAST_LOGIN": False,
}

# OAuth 2.0 (api/gateway/oauth.py, django-oauth-toolkit; its tables and the sessions' are in meta).
# Access tokens are the JWTs above, for as long; refresh tokens stay opaque and live in meta.
OAUTH2_PROVIDER = {
    "ACCESS_TOKEN_GENERATOR": "api.gateway.oauth.access_token_generator",
    "REFRESH_TOKEN_GENERATOR": "oauthlib.oauth2.rfc6749.tokens.random_token_generator",
    "ACCESS_TOKEN_EXPIRE_SECONDS": int(SIMPLE_JWT["ACCESS_TOKEN_LIFETIME"].total_seconds()),
    "REFRESH_TOKEN_EXPIRE_SECONDS": 24 * 3600,
    "OAUTH2_VALIDATOR_CLASS": "api.gateway.oauth.Validator",
    "OAUTH2_SERVER_CLASS": "api.gateway.oauth.S256Server",
    # Each scope stands for a role (api.gateway.auth.SCOPE_ROLES), never above the account's own.
    "SCOPES": {"read": "Read profiles and posts (read-only: no write at all).",
               "write": "Write your own profile and posts (a member).",
               "moderate": "Edit and delete any member's posts (a moderator account).",
               "admin": "Everything, and the topology (an admin account)."},
    "DEFAULT_SCOPES": ["read"],
    "PKCE_REQUIRED": True,
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
    "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
    "ROTATE_REFRESH_TOKEN": True,
}
LOGIN_URL = "/api/v1/oauth/login"
LOGIN_REDIRECT_URL = "/api/docs"
# The session and CSRF cookies are sent only to the OAuth pages, never to the API.
SESSION_COOKIE_PATH = CSRF_COOKIE_PATH = "/api/v1/oauth/"
SESSION_COOKIE_AGE = 3600

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": ["api.gateway.envelope.EnvelopeRenderer"],
    "DEFAULT_PARSER_CLASSES": ["api.gateway.parsers.StrictJSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["api.gateway.rbac.OwnerOrRole"],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "api.gateway.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_VERSIONING_CLASS": None,
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "api.gateway.envelope.JSONOnlyNegotiation",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Scalable API Workbench",
    "DESCRIPTION": "The users/posts API of the workbench. Every response is wrapped in "
                   "{data, meta}; errors are RFC 9457 application/problem+json. /api/v2/ serves the "
                   "same resources as /api/v1/ with another representation: timestamps in Unix epoch "
                   "milliseconds instead of RFC 3339, and a post's `author` object instead of its "
                   "`user_id`.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # The gateway's own headers and answers (the rate limiter's) on every operation it limits.
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "api.gateway.openapi.document_rate_limits",
                             "api.gateway.openapi.document_auth",
                             "api.gateway.openapi.document_errors",
                             "api.views.v2.document_v1_lifecycle",
                             # The envelope, sign-up's retry, the profile view, links: as answered.
                             "api.gateway.openapi_contract.document_envelope",
                             "api.gateway.openapi_contract.document_links"],
}

# One structlog JSON line per request (api/logs.py), a file per app server under the data dir's logs/
# (not gunicorn's stdout, app-k.log, which keeps start-up and errors). "" turns it off; processes
# that are no app server (tests in-process, management commands) write none unless told to.
REQUEST_LOG_FILE = env.str("WORKBENCH_REQUEST_LOG", default=(
    str(STACK.log_dir / f"{APP_SERVER_NAME}.requests.jsonl") if env.str("WORKBENCH_APP_SERVER", default="") else ""))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("WORKBENCH_LOG_LEVEL", default="WARNING")},
}
