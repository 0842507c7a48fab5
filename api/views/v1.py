"""Version 1 of the users/posts API (the seed's endpoints). Views validate, call a service or a
selector, and shape the answer; all logic lives in services.py and selectors.py."""
import struct

import redis

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response

from api import readmodel, selectors, services
from api.caching import behind, reads
from api.gateway.errors import FieldError
from api.pagination import PageParams, encode_cursor, next_url, page_params, time_range
from api.serializers import PostSearchResultSerializer, PostSerializer, UserSerializer, UserUpdateSerializer

from .base import ApiView, CachedResponse

LIST_PARAMS = [
    OpenApiParameter("limit", int, description="Page size, 1 to 100 (default 20)."),
    OpenApiParameter("cursor", str, description="Opaque; take it from the previous page's `next`."),
]
TIME_PARAMS = [
    OpenApiParameter("since", str, description="ISO 8601 date-time with offset; posts created at or after."),
    OpenApiParameter("until", str, description="ISO 8601 date-time with offset; posts created at or before."),
]


def _page(serializer_class, name):
    return inline_serializer(name, {"results": serializer_class(many=True), "next": serializers.URLField(allow_null=True)})


def _validated(serializer_class, request, *, partial=False):
    serializer = serializer_class(data=request.data, partial=partial)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class UserListView(ApiView):
    @extend_schema(operation_id="users_list", parameters=LIST_PARAMS, responses=_page(UserSerializer, "UserPage"))
    def get(self, request):
        page = page_params(request.query_params, ("id",))
        rows = selectors.user_list(page=page)
        return Response({"results": UserSerializer(rows[: page.limit], many=True).data,
                         "next": next_url(request, rows, page.limit, lambda u: (u.id,))})

    @extend_schema(request=UserSerializer, responses={201: UserSerializer})
    def post(self, request):
        data = _validated(UserSerializer, request)
        user, created = services.user_sign_up(**data)
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(UserSerializer(user).data, status=code,
                        headers={"Location": f"/api/v1/users/{user.id}", **behind.headers()})


VIEWS = ("profile",)


class UserDetailView(ApiView):
    @extend_schema(operation_id="users_get", responses=UserSerializer, parameters=[OpenApiParameter(
        "view", str, enum=VIEWS, description=(
            "`profile`: the user with their latest 10 posts, `{\"user\", \"latest_posts\"}`. With the "
            "topology's `read_model` on it is the read model's document in the state Valkey "
            "(`X-Read-Model: hit`, or `miss` when it was built from SQL just now; `X-Read-Model-Age-Ms` "
            "says how long ago the document was written); with it off, it is built from SQL "
            "(`X-Read-Model: off`)."))])
    def get(self, request, user_id):
        view = request.query_params.get("view")
        if view is not None:
            if view not in VIEWS:
                raise FieldError("view", f"Unknown view {view[:40]!r}; known: {', '.join(VIEWS)} "
                                         "(or none, for the user alone).")
            return self._profile(user_id)
        return self.cached(reads.user_entry(user_id),
                           lambda: UserSerializer(selectors.user_get(user_id=user_id)).data)

    def _profile(self, user_id):
        """GET /users/{id}?view=profile: from the read model when it is on (api/readmodel.py)."""
        if not readmodel.enabled():
            readmodel.COUNTERS.count("off")
            return Response(readmodel.from_sql(user_id), headers={"X-Read-Model": "off"})
        try:
            found = readmodel.lookup(user_id)
        except redis.RedisError:
            readmodel.COUNTERS.count("down")  # the state Valkey is down: the SQL path answers
            return Response(readmodel.from_sql(user_id), headers={"X-Read-Model": "down"})
        if found is None:
            readmodel.COUNTERS.count("miss")
            return Response(readmodel.fill(user_id), headers={"X-Read-Model": "miss"})
        data, etag, age_ms, as_of = found
        readmodel.COUNTERS.count("hit")
        response = CachedResponse(reads.Hit(etag, data))
        response["X-Read-Model"] = "hit"
        response["X-Read-Model-Age-Ms"] = f"{age_ms:.0f}"
        return response

    @extend_schema(request=UserUpdateSerializer, responses=UserSerializer)
    def put(self, request, user_id):
        return self._update(request, user_id, partial=False)

    @extend_schema(request=UserUpdateSerializer, responses=UserSerializer)
    def patch(self, request, user_id):
        return self._update(request, user_id, partial=True)

    def _update(self, request, user_id, partial):
        changes = _validated(UserUpdateSerializer, request, partial=partial)
        user = services.user_update(user_id=user_id, changes=changes)
        return Response(UserSerializer(user).data, headers=behind.headers())

    @extend_schema(responses={204: None})
    def delete(self, request, user_id):
        services.user_delete(user_id=user_id)
        return Response(status=status.HTTP_204_NO_CONTENT, headers=behind.headers())


class PostListView(ApiView):
    @extend_schema(operation_id="posts_list", parameters=LIST_PARAMS + TIME_PARAMS, responses=_page(PostSerializer, "PostPage"))
    def get(self, request, user_id):
        page = page_params(request.query_params, ("time", "id"), extra={"since", "until"})
        since, until = time_range(request.query_params)

        def build():
            rows = selectors.post_list(user_id=user_id, page=page, since=since, until=until)
            return {"results": PostSerializer(rows[: page.limit], many=True).data,
                    "next": next_url(request, rows, page.limit, _post_key)}

        return self.cached(reads.posts_entry(user_id, _page_query(request, page)), build)

    @extend_schema(request=PostSerializer, responses={201: PostSerializer})
    def post(self, request, user_id):
        data = _validated(PostSerializer, request)
        post = services.post_create(user_id=user_id, **data)
        return Response(PostSerializer(post).data, status=status.HTTP_201_CREATED,
                        headers={"Location": f"/api/v1/users/{user_id}/posts/{post.id}", **behind.headers()})


def _post_key(post):
    return post.created_at.isoformat(), post.id


def _page_query(request, page) -> str:
    """What a posts page's bytes depend on, for its cache key: its absolute URL, with the cursor in
    its canonical form. Not less: `next` is an absolute URL that repeats the query as it was sent,
    so two spellings of one query (or two hosts) are two different representations."""
    params = request.query_params.copy()
    if page.after:
        params["cursor"] = encode_cursor((page.after[0].isoformat(), page.after[1]))
    return request.build_absolute_uri(request.path) + "?" + params.urlencode()


class PostDetailView(ApiView):
    @extend_schema(operation_id="posts_get", responses=PostSerializer)
    def get(self, request, user_id, post_id):
        return Response(PostSerializer(selectors.post_get(user_id=user_id, post_id=post_id)).data)

    @extend_schema(request=PostSerializer, responses=PostSerializer)
    def put(self, request, user_id, post_id):
        return self._update(request, user_id, post_id, partial=False)

    @extend_schema(request=PostSerializer, responses=PostSerializer)
    def patch(self, request, user_id, post_id):
        return self._update(request, user_id, post_id, partial=True)

    def _update(self, request, user_id, post_id, partial):
        changes = _validated(PostSerializer, request, partial=partial)
        post = services.post_update(user_id=user_id, post_id=post_id, changes=changes)
        return Response(PostSerializer(post).data, headers=behind.headers())

    @extend_schema(responses={204: None})
    def delete(self, request, user_id, post_id):
        services.post_delete(user_id=user_id, post_id=post_id)
        return Response(status=status.HTTP_204_NO_CONTENT, headers=behind.headers())


SEARCH_MAX_CHARS = 200
MAX_FLOAT4_BITS = 0x7F7FFFFF  # the largest finite float4; ts_rank is never negative


class PostSearchView(ApiView):
    """Global full-text search: every shard is asked (scatter-gather), and their best matches are
    merged by rank. The cursor holds the last hit's (rank, id); each shard resumes strictly after
    it, so pages neither repeat nor skip a post, whichever shards the hits came from."""

    @extend_schema(
        operation_id="search_posts",
        parameters=[OpenApiParameter("q", str, required=True, description=(
            f"Text to search for, 1 to {SEARCH_MAX_CHARS} characters, in web search syntax: words, "
            '"quoted phrases", `or`, and `-` to exclude a word. English stemming and stop words.')),
            *LIST_PARAMS,
            OpenApiParameter("X-Shards-Queried", int, OpenApiParameter.HEADER, response=True,
                             description="How many shards the search was sent to (all in use).")],
        responses={200: OpenApiResponse(_page(PostSearchResultSerializer, "PostSearchPage"), description=(
            "Matching posts of every user, best first (rank, then id, descending). `X-Shards-Queried` "
            "says how many shards were asked; `X-DB-Node` names the node that answered on each."))},
        description="PostgreSQL full-text search (`to_tsvector('english', title || ' ' || body)`, "
                    "served by a GIN index on every shard), ranked by `ts_rank`.")
    def get(self, request):
        q = _search_text(request.query_params)
        page = page_params(request.query_params, ("id", "id"), extra={"q"})
        if page.after:
            bits, last_id = page.after
            if bits > MAX_FLOAT4_BITS:
                raise FieldError("cursor", "Not a cursor this API issued; use the `next` URL of a previous page.")
            page = PageParams(page.limit, (_float4(bits), last_id))
        rows, shards = selectors.post_search(q=q, page=page)
        return Response({"results": PostSearchResultSerializer(rows[: page.limit], many=True).data,
                         "next": next_url(request, rows, page.limit, lambda p: (_float4_bits(p.rank), p.id))},
                        headers={"X-Shards-Queried": str(shards)})


def _search_text(query) -> str:
    q = query.get("q")
    if q is None or not q.strip():
        raise FieldError("q", f"Required: the text to search for, 1 to {SEARCH_MAX_CHARS} characters.")
    if len(q) > SEARCH_MAX_CHARS:
        raise FieldError("q", f"At most {SEARCH_MAX_CHARS} characters; got {len(q)}.")
    if "\x00" in q:
        raise FieldError("q", "Must not contain NUL characters.")
    return q


# A search cursor keeps the rank as its float4 bit pattern, an integer: exact (no decimal
# rounding), and for ranks >= 0 it orders like the rank.
def _float4_bits(rank: float) -> int:
    return struct.unpack(">I", struct.pack(">f", rank))[0]


def _float4(bits: int) -> float:
    return struct.unpack(">f", struct.pack(">I", bits))[0]
