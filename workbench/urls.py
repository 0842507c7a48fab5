from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from api import metrics
from api.gateway import oauth
from workbench import health

urlpatterns = [
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", metrics.metrics_view, name="metrics"),  # Prometheus; not routed by Caddy, needs the token
    path("api/schema", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/v1/oauth/", include(oauth.urlpatterns)),  # OAuth 2.0 (django-oauth-toolkit)
    path("api/v1/", include("api.urls")),
    path("api/v2/", include("api.urls_v2")),
]

handler404 = "api.gateway.errors.not_found"
handler500 = "api.gateway.errors.server_error"
handler400 = "api.gateway.errors.bad_request"
