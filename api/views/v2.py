"""Version 2 of the users/posts API, mounted at /api/v2/ beside v1 (api/urls_v2.py).

No view logic lives here. Each v2 view is its v1 view (api/views/v1.py, avatar.py) with every
handler wrapped: the v1 handler answers, and api/versioning.py turns that answer into v2's
representation on the way out. ROUTES says which shape of `data` each handler answers with, so
the transformation knows what it is looking at; a v1 handler missing from it stops the import.
The OpenAPI schema follows the same way: each v2 operation is its v1 operation, renamed
(`v2_<v1 name>`, tagged `v2` from its path as v1's are `v1`) with v2's response shapes (the serializers below, which only
describe; tests/test_versioning.py checks that they describe what versioning.py makes).
"""
from django.core.exceptions import ImproperlyConfigured
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers

from api import versioning
from api.serializers import PostSearchResultSerializer, PostSerializer, UserSerializer

from . import avatar, v1


def _user_or_profile(request) -> str:
    return "profile" if request.query_params.get("view") == "profile" else "user"


# (route below /api/v2/, the v1 view, the shape of `data` each handler answers with: a name from
# versioning.SHAPES, a function of the request for a handler with two, or None: nothing versioned).
ROUTES = (
    ("users", v1.UserListView, {"get": "user_page", "post": "user"}),
    ("users/<id64:user_id>", v1.UserDetailView,
     {"get": _user_or_profile, "put": "user", "patch": "user", "delete": None}),
    ("users/<id64:user_id>/avatar", avatar.AvatarView, {"get": None, "put": None, "delete": None}),
    ("users/<id64:user_id>/posts", v1.PostListView, {"get": "post_page", "post": "post"}),
    ("users/<id64:user_id>/posts/<id64:post_id>", v1.PostDetailView,
     {"get": "post", "put": "post", "patch": "post", "delete": None}),
    ("search/posts", v1.PostSearchView, {"get": "search_page"}),
)


# --- what v2's shapes look like, for the schema ----------------------------------------------------
EPOCH_MS = "Unix epoch milliseconds (UTC), an integer; v1 writes RFC 3339 here."


class AuthorSerializer(serializers.Serializer):
    """A post's user, embedded in v2 posts."""
    id = serializers.CharField(read_only=True)
    username = serializers.CharField(read_only=True, allow_null=True,
                                     help_text="null only if the user was deleted while the response was made")
    name = serializers.CharField(read_only=True, allow_null=True)


class UserV2Serializer(UserSerializer):
    """A user in v2: as in v1, with times in epoch milliseconds."""
    created_at = serializers.IntegerField(read_only=True, help_text=EPOCH_MS)
    updated_at = serializers.IntegerField(read_only=True, help_text=EPOCH_MS)


class PostV2Serializer(PostSerializer):
    """A post in v2: `author` in place of `user_id`, times in epoch milliseconds."""
    user_id = None
    author = AuthorSerializer(read_only=True, help_text="The post's user, as GET /users/{id} shows it now; "
                                                        "v1 gives only `user_id`.")
    created_at = serializers.IntegerField(read_only=True, help_text=EPOCH_MS)
    updated_at = serializers.IntegerField(read_only=True, help_text=EPOCH_MS)

    class Meta:  # `author` where v1 has `user_id`, after `id`
        fields = ("id", "author", "title", "body", "created_at", "updated_at")

    def get_fields(self):
        fields = super().get_fields()
        return {name: fields[name] for name in self.Meta.fields}


class PostSearchResultV2Serializer(PostV2Serializer):
    """A search hit in v2: the post as in v2, and its rank as in v1."""
    rank = serializers.FloatField(read_only=True)

    class Meta:
        fields = PostV2Serializer.Meta.fields + ("rank",)


V2_OF = {UserSerializer: UserV2Serializer, PostSerializer: PostV2Serializer,
         PostSearchResultSerializer: PostSearchResultV2Serializer}
_pages: dict[str, serializers.Serializer] = {}  # one class per component name, or the schema warns


def _v2_response(response):
    """A v1 operation's documented response, with v2's shapes in place of v1's."""
    if isinstance(response, dict):
        return {code: _v2_response(value) for code, value in response.items()}
    if isinstance(response, OpenApiResponse):
        return OpenApiResponse(_v2_response(response.response), response.description, response.examples)
    if isinstance(response, type) and response in V2_OF:
        return V2_OF[response]
    if isinstance(response, serializers.Serializer) and "results" in response.fields:  # a page (v1._page)
        name = f"{type(response).__name__}V2"
        if name not in _pages:
            child = type(response.fields["results"].child)
            _pages[name] = inline_serializer(name, {"results": V2_OF.get(child, child)(many=True),
                                                    "next": serializers.URLField(allow_null=True)})
        return _pages[name]
    return response


def _v2_parameter(parameter):
    if isinstance(parameter, OpenApiParameter) and parameter.name in ("since", "until"):
        bound = "at or after" if parameter.name == "since" else "at or before (the whole millisecond)"
        return OpenApiParameter(parameter.name, str, description=(
            f"Posts created {bound}: Unix epoch milliseconds, as v2 writes times, or an RFC 3339 "
            "date-time with offset, as v1 takes."))
    return parameter


V2_NOTE = ("v2: the v1 operation with v2's representation. Times are Unix epoch milliseconds (v1: RFC 3339); "
           "a post embeds its `author` (`id`, `username`, `name`) where v1 has `user_id`.")


class V2Schema:
    """Put in front of a v1 handler's schema class: the same operation, as v2."""

    def get_operation_id(self):
        # A name given in v1 (`users_get`) gets the version; one drf-spectacular makes from the path
        # has it already (`v2_users_create`, as v1's is `v1_users_create`).
        name = super().get_operation_id()
        return name if name.startswith("v2_") else f"v2_{name}"

    def get_description(self):
        return "\n\n".join(filter(None, [super().get_description(), V2_NOTE]))

    def get_response_serializers(self):
        return _v2_response(super().get_response_serializers())

    def get_override_parameters(self):
        return [_v2_parameter(p) for p in super().get_override_parameters()]


# --- the views --------------------------------------------------------------------------------------
class V2:  # mixed in front of a v1 view (no docstring: the schema takes the v1 view's)
    api_version = "v2"
    meta_timestamp = staticmethod(versioning.meta_timestamp)

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        versioning.query_times(request)


def _handler(handler, shape):
    def respond(self, request, *args, **kwargs):
        response = handler(self, request, *args, **kwargs)
        return versioning.respond(self, request, response, shape(request) if callable(shape) else shape)

    respond.__name__, respond.__doc__ = handler.__name__, handler.__doc__
    schema = getattr(handler, "kwargs", {}).get("schema") or AutoSchema
    respond.kwargs = {"schema": type(f"V2{schema.__name__}", (V2Schema, schema), {})}
    return respond


def twin(view: type, shapes: dict) -> type:
    """The v2 view of a v1 view: every handler of it wrapped, none added, none left out."""
    handlers = {m for m in view.http_method_names if m not in ("head", "options") and hasattr(view, m)}
    if handlers != set(shapes):
        raise ImproperlyConfigured(f"v2's {view.__name__}: the handlers are {sorted(handlers)}, the shapes "
                                   f"name {sorted(shapes)}; every handler needs its shape (None: unversioned)")
    for shape in shapes.values():
        if not (shape is None or callable(shape) or shape in versioning.SHAPES):
            raise ImproperlyConfigured(f"v2's {view.__name__}: unknown shape {shape!r}")
    namespace = {method: _handler(getattr(view, method), shape) for method, shape in shapes.items()}
    namespace.update(__module__=__name__, __doc__=view.__doc__, __qualname__=view.__name__)
    return type(view.__name__, (V2, view), namespace)


VIEWS = tuple((route, twin(view, shapes)) for route, view, shapes in ROUTES)


# --- v1's lifecycle headers, in the schema (a drf-spectacular postprocessing hook, settings) --------
LIFECYCLE_HEADERS = {
    "Deprecation": {"description": "RFC 9745: when v1 is (or will be) deprecated, `@<Unix seconds>`. Sent while "
                                   "the topology's `versioning.v1_deprecation` is set.",
                    "schema": {"type": "string"}, "example": "@1767225600"},
    "Sunset": {"description": "RFC 8594: when v1 may stop answering, an HTTP-date. Sent while the topology's "
                              "`versioning.v1_sunset` is set.",
               "schema": {"type": "string"}, "example": "Thu, 31 Dec 2026 23:59:59 GMT"},
    "Link": {"description": "With `Deprecation`: the same resource in v2 (rel=\"successor-version\") and the API "
                            "docs (rel=\"deprecation\").", "schema": {"type": "string"},
             "example": '<https://host/api/v2/users/1>; rel="successor-version", '
                        '<https://host/api/docs>; rel="deprecation"; type="text/html"'},
}


def document_v1_lifecycle(result, generator, request, public):
    """Every v1 operation whose path v2 serves too may carry v1's lifecycle headers."""
    result.setdefault("components", {}).setdefault("headers", {}).update(LIFECYCLE_HEADERS)
    paths = result.get("paths", {})
    for path, item in paths.items():
        if not (path.startswith(versioning.V1) and versioning.V2 + path[len(versioning.V1):] in paths):
            continue
        for operation in item.values():
            for response in operation.get("responses", {}).values() if isinstance(operation, dict) else ():
                response.setdefault("headers", {}).update(
                    {name: {"$ref": f"#/components/headers/{name}"} for name in LIFECYCLE_HEADERS})
    return result
