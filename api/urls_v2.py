"""The v2 routes, mounted at /api/v2/ (workbench/urls.py): v1's views with v2's representation
(api/views/v2.py). Routes only v1 has (admin/) stay there."""
from django.core.exceptions import ImproperlyConfigured
from django.urls import path

from api.urls import urlpatterns as v1_urlpatterns  # importing it registers the id64 converter too
from api.views import v2

# Each v2 route is a v1 route under the other prefix: v1's Link to its successor relies on it.
_missing = [route for route, _ in v2.VIEWS if route not in {str(p.pattern) for p in v1_urlpatterns}]
if _missing:
    raise ImproperlyConfigured(f"v2 routes with no v1 twin: {', '.join(_missing)}")

urlpatterns = [path(route, view.as_view()) for route, view in v2.VIEWS]
