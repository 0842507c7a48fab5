"""Admin endpoints. Until the gateway has accounts and roles, "admin" means a request bearing the
stack controller's token (the one in the data directory)."""
import re
from datetime import datetime, timezone

import redis
from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions
from rest_framework.response import Response

from api import errors, profiling, queries
from api.gateway.errors import Conflict, FieldError, NotFound, Unavailable
from api.gateway.rbac import Forbidden
from api.pagination import MAX_LIMIT, parse_limit, time_range
from api.routing.ids import MAX_ID
from workbench import topology

from .base import ApiView
from .v1 import TIME_PARAMS


class AdminView(ApiView):
    """Admins only: an admin's token, or the controller's (the gateway decided who it is)."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        principal = getattr(request, "principal", None)
        if principal is None:
            raise exceptions.NotAuthenticated("Send `Authorization: Bearer <token>`: an admin's access token, or "
                                              "the controller token in the data directory's controller.token.")
        if not principal.is_admin:
            raise Forbidden(f"Only an admin may use the admin endpoints, not a {principal.role}.",
                            field="Authorization")

    def get_authenticate_header(self, request):
        return 'Bearer realm="workbench-admin"'  # without one, DRF would turn the 401 into a 403

    PARAMS: tuple[str, ...] = ()  # the query parameters this endpoint takes

    def query(self, request):
        """The request's query parameters, once none of them is one this endpoint does not take."""
        for name in request.query_params:
            if name not in self.PARAMS:
                raise FieldError(name, f"Unknown query parameter; this endpoint takes {', '.join(self.PARAMS) or 'none'}.")
        return request.query_params


def whole_number(query, name: str, high: int, default: int, source: str = "") -> int:
    """An integer query parameter from 1 to `high`, or `default` when it is absent; `source` says
    where `high` comes from, in the error."""
    raw = query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= high:
        raise FieldError(name, f"Must be an integer from 1 to {high}{source}.")
    return int(raw)


class TopologyView(AdminView):
    """The live topology: GET reads it, PUT replaces it (absent fields take defaults), PATCH merges
    into it (nested objects key by key). Every accepted change is one new version."""

    @extend_schema(operation_id="admin_topology_get", responses=OpenApiTypes.OBJECT)
    def get(self, request):
        return self._answer(lambda s: s.read())

    @extend_schema(operation_id="admin_topology_put", request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    def put(self, request):
        return self._answer(lambda s: s.replace(request.data, self._who(request)))

    @extend_schema(operation_id="admin_topology_patch", request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    def patch(self, request):
        return self._answer(lambda s: s.patch(request.data, self._who(request)))

    @staticmethod
    def _who(request) -> str:
        principal = request.principal
        who = "controller token" if principal.user_id is None else f"admin {principal.user_id}"
        return f"api ({who}) via {settings.APP_SERVER_NAME}"

    @staticmethod
    def _answer(action) -> Response:
        try:
            doc = action(topology.store())
        except topology.TopologyError as exc:
            detail = {}
            for name, message in exc.errors:
                detail.setdefault(name, []).append(message)
            raise exceptions.ValidationError(detail) from None
        except topology.Conflict as exc:
            raise Conflict("(body)", str(exc)) from None
        except redis.RedisError as exc:
            raise Unavailable(f"The state Valkey is unavailable: {type(exc).__name__}.") from None
        topology.remember(doc)  # so this response's X-Topology-Version already shows a write
        return Response(doc.to_dict(topology.report()))


class NodesView(AdminView):
    """The data nodes as the controller last sampled them: health, replication state, replay lag in
    ms and WAL bytes, connections, queries answered; what runs, and what the controller is doing."""

    @extend_schema(operation_id="admin_nodes_get", responses=OpenApiTypes.OBJECT)
    def get(self, request):
        try:
            report = topology.report()
        except redis.RedisError as exc:
            raise Unavailable(f"The state Valkey is unavailable: {type(exc).__name__}.") from None
        age = datetime.now(timezone.utc).timestamp() - report.at if report.at else None
        return Response({**report.to_dict(), "age_s": round(age, 3) if age is not None else None,
                         "fresh": report.fresh()})


class ExplainView(AdminView):
    """`EXPLAIN (ANALYZE, BUFFERS)` of the hot queries for one user, on the node the router picks
    for this read: a user by id, the user's first posts page (newest first), and the user's posts
    in [since, until]. Says whether the supporting index exists there and whether each plan uses
    it, so the plans and timings can be compared with the topology's index toggle on and off."""
    PARAMS = ("user_id", "since", "until", "limit")

    @extend_schema(operation_id="admin_explain", responses=OpenApiTypes.OBJECT, parameters=[
        OpenApiParameter("user_id", int, required=True, description="The user whose queries are explained."),
        *TIME_PARAMS,
        OpenApiParameter("limit", int, description=f"Page size, 1 to {MAX_LIMIT} (default 20)."),
    ], description="Without since and until, the time range is the last "
                   f"{queries.DEFAULT_RANGE.days} days; the answer says which bounds were defaulted.")
    def get(self, request):
        query = self.query(request)
        user_id = _user_id(query.get("user_id"))
        since, until = time_range(query)
        limit = parse_limit(query.get("limit"))
        span = queries.default_range(since, until, datetime.now(timezone.utc))
        try:
            toggle = queries.index_toggle()
        except redis.RedisError as exc:
            toggle = {"field": queries.INDEX_FIELD, "error": f"the state Valkey is unavailable: {type(exc).__name__}"}
        results = queries.explain_hot(user_id, span["since"], span["until"], limit)
        return Response({
            "user_id": user_id, "user_exists": bool(results[0]["rows"]), "limit": limit,
            "time_range": {**span, "since": span["since"].isoformat(), "until": span["until"].isoformat()},
            "supporting_index": {"name": queries.SUPPORTING_INDEX, "table": "api_post",
                                 "columns": queries.INDEX_COLUMNS, "toggle": toggle},
            "queries": results,
        })


class ShardsView(AdminView):
    """The shards for the dashboard: per shard its nodes, users, posts and queries answered (from
    the controller's report); the last reshard; and the key distribution: how the newest user ids
    (up to SAMPLE) spread over `n` shards under each strategy, with the chi-squared statistic of
    each spread and the share of users a reshard from n to n + 1 would move."""
    SAMPLE = 20_000
    PARAMS = ("n",)

    @extend_schema(operation_id="admin_shards_get", responses=OpenApiTypes.OBJECT, parameters=[
        OpenApiParameter("n", int, description="Shard count for the key distribution, 1 to 8 "
                                               "(default: the topology's)."),
    ])
    def get(self, request):
        from api.models import Account, ReshardJob
        from api.routing import shards

        t = topology.current().topology
        n = whole_number(self.query(request), "n", shards.MAX_SHARDS, t.shards)
        try:
            report = topology.report()
        except redis.RedisError as exc:
            raise Unavailable(f"The state Valkey is unavailable: {type(exc).__name__}.") from None
        ids = list(Account.objects.order_by("-user_id").values_list("user_id", flat=True)[: self.SAMPLE])
        distribution = {}
        for strategy in shards.STRATEGIES:
            counts = shards.spread(ids, n, strategy)
            distribution[strategy] = {
                "counts": counts, "chi_squared": round(shards.chi_squared(counts), 2),
                "moved_to_n_plus_1": round(shards.moved_fraction(ids, strategy, n, n + 1), 4)
                if n < shards.MAX_SHARDS else None}
        job = ReshardJob.objects.order_by("-id").first()
        return Response({
            "sharding": t.sharding, "shards": t.shards, "shard_groups": t.shard_groups,
            "per_shard": [_shard_summary(k, t.replicas, report) for k in range(1, t.shard_groups + 1)],
            "key_distribution": {"n": n, "sample": len(ids), "degrees_of_freedom": n - 1,
                                 "strategies": distribution},
            "last_reshard": None if job is None else {
                "id": job.id, "state": job.state, "from": [job.from_strategy, job.from_shards],
                "to": [job.to_strategy, job.to_shards], "batches": job.batches,
                "users_total": job.users_total, "users_moved": job.users_moved,
                "fraction_moved": round(job.users_moved / job.users_total, 4) if job.users_total else None,
                "posts_moved": job.posts_moved, "seconds": job.seconds, "before": job.before, "after": job.after},
        })


class CacheView(AdminView):
    """The caching layers: per layer (L1, the Valkey application cache, the query cache) the
    counters of every app server added up and the hit ratio; the cache Valkey's keys, memory and
    evictions; write-behind's queue; the latest stale-read table (`manage.py stale_probe`)."""

    @extend_schema(operation_id="admin_cache_get", responses=OpenApiTypes.OBJECT)
    def get(self, request):
        from api.caching import stats
        from api.state import state_client

        try:
            data = stats.summary(state_client())
        except redis.RedisError as exc:
            raise Unavailable(f"The state Valkey is unavailable: {type(exc).__name__}.") from None
        return Response({"cache": topology.current().topology.to_dict()["cache"], **data})


class ReadModelView(AdminView):
    """The read model (api/readmodel.py): the `read_model` toggle, the outbox backlog per shard and
    the age of its oldest pending row, staleness (DB commit to document update) p50/p95/max over the
    latest document updates, how many documents exist, the relay's report, and hits and misses."""

    @extend_schema(operation_id="admin_readmodel_get", responses=OpenApiTypes.OBJECT)
    def get(self, request):
        from api import readmodel
        from api.state import state_client

        try:
            return Response(readmodel.status(state_client()))
        except redis.RedisError as exc:
            raise Unavailable(f"The state Valkey is unavailable: {type(exc).__name__}.") from None


def _shard_summary(shard: int, replicas: int, report) -> dict:
    from api.routing.shards import primary_alias, replica_alias

    names = [primary_alias(shard)] + [replica_alias(shard, i) for i in range(1, replicas + 1)]
    primary = report.nodes.get(names[0], {})
    return {"shard": shard, "nodes": names, "healthy": bool(primary.get("healthy")),
            "users": primary.get("users"), "posts": primary.get("posts"),
            "queries": sum(report.nodes.get(name, {}).get("queries", 0) for name in names)}


def _user_id(raw: str | None) -> int:
    if raw in (None, ""):
        raise FieldError("user_id", "Required: the id of the user whose queries to explain.")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_ID:
        raise FieldError("user_id", "Must be a user id: an integer from 0 to 2^63-1.")
    return int(raw)


class ErrorsView(AdminView):
    """Error tracking (api/errors.py): the groups of unhandled exceptions, newest first, each with
    its count, first and last seen, and the last request id; DELETE clears them."""
    PARAMS = ("limit",)

    @extend_schema(operation_id="admin_errors_list", responses=OpenApiTypes.OBJECT, parameters=[
        OpenApiParameter("limit", int, description=f"How many groups, 1 to {errors.MAX_GROUPS} (default 50)."),
    ])
    def get(self, request):
        limit = whole_number(self.query(request), "limit", errors.MAX_GROUPS, 50)
        total, groups = read_state(lambda client: errors.groups(client, limit))
        return Response({"total_groups": total, "max_groups": errors.MAX_GROUPS, "groups": groups})

    @extend_schema(operation_id="admin_errors_clear", responses=OpenApiTypes.OBJECT)
    def delete(self, request):
        return Response({"cleared_groups": read_state(errors.clear)})


class ErrorDetailView(AdminView):
    """One group of unhandled exceptions, with the last stack trace and the innermost frames its
    fingerprint was made of."""

    @extend_schema(operation_id="admin_errors_get", responses=OpenApiTypes.OBJECT)
    def get(self, request, fingerprint: str):
        if not re.fullmatch(f"[0-9a-f]{{{errors.FINGERPRINT_CHARS}}}", fingerprint):
            raise FieldError("fingerprint", f"A fingerprint is {errors.FINGERPRINT_CHARS} lowercase hex digits.",
                             "path")
        group = read_state(lambda client: errors.group(client, fingerprint))
        if group is None:
            raise NotFound("fingerprint", "No error group with this fingerprint (or it was cleared).")
        return Response(group)


class ProfilesView(AdminView):
    """On-demand profiles (api/profiling.py): the last ones stored, newest first, without their trees.
    An admin's request with `X-Workbench-Profile: 1` makes one and names it in `X-Profile-Id`."""

    @extend_schema(operation_id="admin_profiles_list", responses=OpenApiTypes.OBJECT)
    def get(self, request):
        self.query(request)
        return Response({"max_profiles": profiling.MAX_PROFILES, "profiles": read_state(profiling.profiles)})


class ProfileDetailView(AdminView):
    """One profile: the request it ran, its hottest frames, and pyinstrument's call tree as text."""

    @extend_schema(operation_id="admin_profiles_get", responses=OpenApiTypes.OBJECT)
    def get(self, request, profile_id: str):
        if not profiling.ID.match(profile_id):
            raise FieldError("profile_id", "A profile id is 16 lowercase hex digits (the X-Profile-Id header).",
                             "path")
        found = read_state(lambda client: profiling.profile(client, profile_id))
        if found is None:
            raise NotFound("profile_id", f"No stored profile with this id (the last {profiling.MAX_PROFILES} are kept).")
        return Response(found)


def read_state(read):
    """`read(client)` on the state Valkey; its failure is a 503."""
    from api.state import state_client

    try:
        return read(state_client())
    except redis.RedisError as exc:
        raise Unavailable(f"The state Valkey is unavailable: {type(exc).__name__}.") from None
