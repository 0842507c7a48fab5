"""What every API view shares: the version in the envelope and conditional GETs (ETag)."""
import hashlib
import json

from rest_framework.response import Response
from rest_framework.views import APIView


class ApiView(APIView):
    api_version = "v1"

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
