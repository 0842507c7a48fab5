"""Request and response shapes. Unknown fields are rejected; ids go out as strings, since 64-bit
integers overflow JavaScript numbers. DRF's CharField already refuses NUL characters."""
from rest_framework import serializers

USERNAME_PATTERN = r"^[a-z0-9_]{3,30}$"


class StrictSerializer(serializers.Serializer):
    """Rejects fields it does not know, and read-only fields sent for writing."""
    fixed_fields: dict = {}  # name -> why it cannot be written here

    def to_internal_value(self, data):
        errors = {}
        if isinstance(data, dict):
            writable = {name for name, field in self.fields.items() if not field.read_only}
            for name in sorted(set(data) - writable):
                if name in self.fixed_fields:
                    errors[name] = [self.fixed_fields[name]]
                else:
                    errors[name] = ["This field is read-only." if name in self.fields else "Unknown field."]
            # DRF's CharField would store a JSON number as its text (5 -> "5", 1e999 -> "inf"); the
            # schema says string, so a number is refused like a list or an object.
            for name in sorted(writable & set(data)):
                if isinstance(self.fields[name], serializers.CharField) and isinstance(data[name], (int, float)) \
                        and not isinstance(data[name], bool):
                    errors[name] = ["Not a valid string."]
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            # Report every fault at once: unknown fields and the known fields' own errors.
            raise serializers.ValidationError({**exc.detail, **errors}) from None
        if errors:
            raise serializers.ValidationError(errors)
        return value


class UserSerializer(StrictSerializer):
    id = serializers.CharField(read_only=True)
    username = serializers.RegexField(USERNAME_PATTERN, max_length=30, error_messages={
        "invalid": "3 to 30 characters of a-z, 0-9 and _."})
    email = serializers.EmailField(max_length=254)
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    bio = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    password = serializers.CharField(write_only=True, min_length=8, max_length=128, trim_whitespace=False,
                                     style={"input_type": "password"},
                                     help_text="Write-only; stored as a hash in `meta`, never returned.")
    post_count = serializers.IntegerField(read_only=True)
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)

    def validate_email(self, value):
        return value.lower()


class UserUpdateSerializer(StrictSerializer):
    """PUT replaces email, name and bio; PATCH changes any of them. The username is fixed at sign-up."""
    email = serializers.EmailField(max_length=254)
    name = serializers.CharField(max_length=100, allow_blank=True)
    bio = serializers.CharField(max_length=2000, allow_blank=True)

    def validate_email(self, value):
        return value.lower()

    fixed_fields = {"username": "The username cannot be changed.",
                    "password": "Passwords are not changed through this endpoint."}


class PostSerializer(StrictSerializer):
    id = serializers.CharField(read_only=True)
    user_id = serializers.CharField(read_only=True)
    title = serializers.CharField(min_length=1, max_length=200)
    body = serializers.CharField(max_length=10_000, allow_blank=True, trim_whitespace=False, required=False,
                                 default="")
    created_at = serializers.DateTimeField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)


class PostSearchResultSerializer(PostSerializer):
    """A search hit: the post, its user's id (the shard key) and its rank, PostgreSQL's ts_rank
    (a float4, as PostgreSQL writes it) of the post for the query; results come best first."""
    rank = serializers.FloatField(source="rank_text", read_only=True)


class PageSerializer(serializers.Serializer):
    """The shape of `data` on every list: a page of results and the next page's URL."""
    next = serializers.URLField(allow_null=True)
