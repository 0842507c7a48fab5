from django.urls import path, register_converter

from api.converters import Int64Converter
from api.views import admin, auth, avatar, ratelimit, traces, v1, workspace

register_converter(Int64Converter, "id64")

urlpatterns = [
    path("users", v1.UserListView.as_view()),
    path("users/<id64:user_id>", v1.UserDetailView.as_view()),
    path("users/<id64:user_id>/avatar", avatar.AvatarView.as_view()),
    path("users/<id64:user_id>/posts", v1.PostListView.as_view()),
    path("users/<id64:user_id>/posts/<id64:post_id>", v1.PostDetailView.as_view()),
    path("search/posts", v1.PostSearchView.as_view()),
    path("me/workspace/<str:kind>", workspace.WorkspaceView.as_view()),
    path("auth/token", auth.TokenView.as_view()),
    path("auth/token/refresh", auth.RefreshView.as_view()),
    path("admin/topology", admin.TopologyView.as_view()),
    path("admin/explain", admin.ExplainView.as_view()),
    path("admin/nodes", admin.NodesView.as_view()),
    path("admin/shards", admin.ShardsView.as_view()),
    path("admin/cache", admin.CacheView.as_view()),
    path("admin/readmodel", admin.ReadModelView.as_view()),
    path("admin/traces", traces.TracesView.as_view()),
    path("admin/traces/<str:trace_id>", traces.TraceDetailView.as_view()),
    path("admin/ratelimit", ratelimit.RateLimitView.as_view()),
    path("admin/errors", admin.ErrorsView.as_view()),
    path("admin/errors/<str:fingerprint>", admin.ErrorDetailView.as_view()),
    path("admin/profiles", admin.ProfilesView.as_view()),
    path("admin/profiles/<str:profile_id>", admin.ProfileDetailView.as_view()),
]
