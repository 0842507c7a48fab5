"""What every API view shares: the version in the envelope, conditional GETs (ETag), the read
retry on the primary, the application cache's read path (api.caching), and v1's lifecycle
headers (api.versioning)."""
from rest_framework.response import Response
from rest_framework.views import APIView

from api import timing, versioning
from api.caching import reads
from api.gateway import auth
from api.gateway.envelope import etag_for, render_data
from api.gateway.errors import NotFound
from api.routing import db
from api.routing.ids import MAX_ID


class CachedResponse(Response):
    """A cache hit: the stored bytes of `data` and their stored ETag; no serializer runs."""

    def __init__(self, hit: reads.Hit):
        super().__init__()
        self.rendered_data, self.etag = hit.data, hit.etag


class ApiView(APIView):
    api_version = "v1"

    def get_authenticate_header(self, request):
        return auth.CHALLENGE  # a 401 says how to authenticate (without one DRF turns it into a 403)

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        for name, value in kwargs.items():  # path ids (Int64Converter) past 64 bits match nothing
            if isinstance(value, int) and value > MAX_ID:
                raise NotFound(name, f"No such {name.removesuffix('_id')}: `{name}` is beyond 2^63-1.")

    def cached(self, entry: reads.Entry | None, build) -> Response:
        """A hit's stored bytes, or `build()`'s data (filled into the cache once rendered, in
        finalize_response). `entry` is None when this request does not use the cache."""
        if entry is not None:
            hit = reads.lookup(entry)
            if hit is not None:
                return CachedResponse(hit)
        response = Response(build())
        response.cache_entry = entry
        return response

    def handle_exception(self, exc):
        # A read that failed on a replica runs once more, on the primary, so no read fails for it.
        if db.retry_read(exc):
            try:
                return getattr(self, self.request.method.lower())(self.request, *self.args, **self.kwargs)
            except Exception as again:  # noqa: BLE001 - answered like any other error below
                exc = again
        return super().handle_exception(exc)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if request.method in ("GET", "HEAD") and response.status_code == 200 and isinstance(response, Response):
            etag = self.fill_cache(response)
            response["ETag"] = etag
            tags = _tags(request.headers.get("If-None-Match", ""))
            if etag in tags or "*" in tags:
                not_modified = Response(status=304, headers={"ETag": etag})
                response = super().finalize_response(request, not_modified, *args, **kwargs)
        if self.api_version == "v1":
            versioning.v1_lifecycle(request, response)
        return response

    @staticmethod
    def fill_cache(response: Response) -> str:
        """The ETag of a GET's 200; a cache miss's data, rendered once, goes into the cache (those
        bytes are both sent, the envelope splices them, and stored). v2 calls this on v1's answer
        before it transforms it (api/versioning.py), so the cache only ever holds v1's form."""
        etag = getattr(response, "etag", None)
        if etag is None:
            with timing.timed("render"):
                etag = etag_for(response.data)
            entry = getattr(response, "cache_entry", None)
            if entry is not None:
                with timing.timed("render"):
                    response.rendered_data = render_data(response.data)
                reads.fill(entry, response.rendered_data, etag)
            response.etag = etag
        return etag


def _tags(header: str) -> set[str]:
    if header.strip() == "*":
        return {"*"}
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}
