"""Data models. User and Post live on the data primary; Account lives in `meta` (see routing.db)."""
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager
from django.db import models


class User(models.Model):
    """The API's user resource. Its id is a 64-bit snowflake from api.routing.ids."""
    id = models.BigIntegerField(primary_key=True)
    username = models.CharField(max_length=30, unique=True)
    email = models.CharField(max_length=254, unique=True)
    name = models.CharField(max_length=100, blank=True, default="")
    bio = models.TextField(blank=True, default="")
    post_count = models.IntegerField(default=0)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    # The storage name of the current avatar blob (api.avatars), content-hashed; null: none.
    avatar = models.CharField(max_length=200, null=True, blank=True)

    class Meta:
        db_table = "api_user"


class Post(models.Model):
    id = models.BigIntegerField(primary_key=True)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="posts", db_index=False)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "api_post"
        indexes = [
            # Serves a user's posts newest first and the ?since=&until= time range in one index scan.
            models.Index(fields=["user", "-created_at", "-id"], name="api_post_user_time"),
        ]


class AccountManager(BaseUserManager):
    def get_by_natural_key(self, username):
        return self.get(username=username)


class Account(AbstractBaseUser):
    """Credentials and role, in `meta`. It is also the global uniqueness index of usernames and
    emails, which stays correct once users are spread over shards.

    Sign-up writes it in two steps (pending, then active) around the data write; see services.
    """
    PENDING, ACTIVE, DELETING = "pending", "active", "deleting"
    ROLES = [("member", "member"), ("moderator", "moderator"), ("admin", "admin")]

    user_id = models.BigIntegerField(primary_key=True)
    username = models.CharField(max_length=30, unique=True)
    email = models.CharField(max_length=254, unique=True)
    role = models.CharField(max_length=16, choices=ROLES, default="member")
    state = models.CharField(max_length=16, default=ACTIVE)
    # Fingerprint of the sign-up request, so an identical retry resumes instead of conflicting.
    signup_fingerprint = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    USERNAME_FIELD = "username"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = ["email"]
    objects = AccountManager()

    class Meta:
        db_table = "meta_account"
        indexes = [models.Index(fields=["state", "created_at"], name="meta_account_state")]


class ShardFence(models.Model):
    """One row on every shard: which users this shard owns. It is the truth a write checks in its
    own transaction (api/routing/placement.py): a user with id <= moved_upto is placed by the
    `new_*` mapping, any other by the `old_*` one. At rest both mappings are the topology's and
    moved_upto is the largest id; a reshard moves moved_upto up batch by batch (or down, to roll
    back). A write that reads it FOR SHARE cannot interleave with a batch being moved, which
    holds it FOR UPDATE."""
    id = models.SmallIntegerField(primary_key=True, default=1)
    job = models.BigIntegerField(default=0)
    old_strategy = models.CharField(max_length=16, default="hash")
    old_shards = models.SmallIntegerField(default=1)
    new_strategy = models.CharField(max_length=16, default="hash")
    new_shards = models.SmallIntegerField(default=1)
    moved_upto = models.BigIntegerField(default=(1 << 63) - 1)

    class Meta:
        db_table = "shard_fence"


class ShardDirectory(models.Model):
    """The `directory` strategy's lookup table, in `meta`: its single point of failure. `shard` is
    where a user lives; `next_shard` is where a running reshard puts it."""
    user_id = models.BigIntegerField(primary_key=True)
    shard = models.SmallIntegerField(null=True)
    next_shard = models.SmallIntegerField(null=True)

    class Meta:
        db_table = "meta_shard_directory"
        indexes = [models.Index(fields=["shard"], name="meta_shard_directory_shard")]


class ReshardJob(models.Model):
    """A reshard, in `meta`: what it moves from and to, how far it got, and what it found. The
    shards' fences are the truth about ownership; this row is the record, and the batch in
    flight (batch_lo..batch_hi) lets a resumed or rolled-back job redo it (api/routing/reshard.py)."""
    MOVING, ROLLING_BACK, DONE, ROLLED_BACK = "moving", "rolling_back", "done", "rolled_back"

    id = models.BigAutoField(primary_key=True)
    from_strategy = models.CharField(max_length=16)
    from_shards = models.SmallIntegerField()
    to_strategy = models.CharField(max_length=16)
    to_shards = models.SmallIntegerField()
    state = models.CharField(max_length=16, default=MOVING)
    moved_upto = models.BigIntegerField(default=0)
    batch_lo = models.BigIntegerField(null=True)
    batch_hi = models.BigIntegerField(null=True)
    users_total = models.BigIntegerField(default=0)
    users_seen = models.BigIntegerField(default=0)
    users_moved = models.BigIntegerField(default=0)
    posts_moved = models.BigIntegerField(default=0)
    batches = models.IntegerField(default=0)
    before = models.JSONField(default=dict)   # rows and checksums per table when it started
    after = models.JSONField(default=dict)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True)
    seconds = models.FloatField(null=True)

    class Meta:
        db_table = "meta_reshard_job"


class Outbox(models.Model):
    """The read model's transactional outbox, on every shard (api/readmodel.py): one row per write
    that changes a user's profile document, inserted in that write's own transaction, so a row
    exists exactly when its write committed. The relay (`manage.py relay_outbox`) rebuilds the
    user's document from PostgreSQL, then deletes the rows it covered. `committed_at` is
    clock_timestamp() at the insert, the write's last statement: its commit time, near enough to
    measure how stale the documents run."""
    id = models.BigAutoField(primary_key=True)
    user_id = models.BigIntegerField()
    kind = models.CharField(max_length=16)
    committed_at = models.DateTimeField()

    class Meta:
        db_table = "rm_outbox"


class Workspace(models.Model):
    """A member's own work from the dashboard's interview pages, in `meta`: one JSON document per
    account and kind (the Practice page's notes, the Clarify page's answers, the Estimate page's
    assumptions). `version` goes up by one on every write, so a client that sends the version it
    read cannot overwrite a change it has not seen (api/workspace.py). A workshop's learners
    (issue 14) keep theirs here too, under their own accounts."""
    KINDS = ("notes", "clarify", "estimate", "baseline")

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="workspaces")
    kind = models.CharField(max_length=16)
    data = models.JSONField(default=dict)
    version = models.IntegerField(default=0)
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "meta_workspace"
        constraints = [models.UniqueConstraint(fields=["account", "kind"], name="meta_workspace_account_kind")]
