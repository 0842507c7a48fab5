"""What every API view shares: the version in the envelope and conditional GETs (ETag)."""
import hashlib
import json

from rest_framework.response import Response
from rest_framework.views import APIView

from api.gateway.errors import NotFound
from api.routing import db
from api.routing.ids import MAX_ID


class ApiView(APIView):
    api_version = "v1"

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        for name, value in kwargs.items():  # path ids (Int64Converter) past 64 bits match nothing
            if isinstance(value, int) and value > MAX_ID:
                raise NotFound(name, f"No such {name.removesuffix('_id')}: `{name}` is beyond 2^63-1.")

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
            # The tag covers `data` only: meta's timestamp and request id change on every response.
            digest = hashlib.sha256(json.dumps(response.data, sort_keys=True, default=str).encode()).hexdigest()
            etag = f'"{digest[:32]}"'
            response["ETag"] = etag
            tags = _tags(request.headers.get("If-None-Match", ""))
            if etag in tags or "*" in tags:
                not_modified = Response(status=304, headers={"ETag": etag})
                return super().finalize_response(request, not_modified, *args, **kwargs)
        return response


def _tags(header: str) -> set[str]:
    if header.strip() == "*":
        return {"*"}
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}
