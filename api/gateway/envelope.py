"""The response envelope of the seed: {"data": ..., "meta": {timestamp, version, request_id}}.
Problem documents are rendered bare, as RFC 9457 asks.

The envelope is put together from two separately rendered parts, `data` and `meta`. The bytes are
the same as rendering the whole dict at once (compact JSON: no whitespace between the parts), and
it lets a cache hit send `data` bytes stored earlier (api.caching) with a fresh `meta`: the slow
path and the fast path share this one splice, so their bytes can differ only in `meta`.
"""
import hashlib
import json
from datetime import datetime, timezone

from rest_framework.renderers import JSONRenderer

from api import timing, tracing


def etag_for(data) -> str:
    """The ETag of a representation. It covers `data` only: meta's timestamp and request id change
    on every response."""
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return f'"{digest[:32]}"'


class EnvelopeRenderer(JSONRenderer):
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None):
        with timing.timed("render"), tracing.span("render"):
            return self._render(data, accepted_media_type, renderer_context)

    def _render(self, data, accepted_media_type, renderer_context):
        context = renderer_context or {}
        response = context.get("response")
        if response is None or getattr(response, "is_problem", False) or response.status_code >= 400:
            return super().render(data, accepted_media_type, renderer_context)
        if response.status_code in (204, 304):
            return b""
        request = context.get("request")
        view = context.get("view")
        now = datetime.now(timezone.utc)
        stamp = getattr(view, "meta_timestamp", None)  # v2 says how it writes times (api/versioning.py)
        meta = {
            "timestamp": stamp(now) if stamp else now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "version": getattr(view, "api_version", "v1"),
            "request_id": getattr(request, "request_id", None),
        }
        rendered = getattr(response, "rendered_data", None)  # a cache hit's, or rendered once for a fill
        if rendered is None:
            rendered = render_data(data)
        return b'{"data":' + rendered + b',"meta":' + render_data(meta) + b"}"


_renderer = EnvelopeRenderer()


def render_data(value) -> bytes:
    """One part of the envelope, rendered as the whole envelope would render it (compact JSON)."""
    if value is None:
        return b"null"  # JSONRenderer renders a bare None as an empty body
    return JSONRenderer.render(_renderer, value)


class JSONOnlyNegotiation:
    """The API speaks JSON only; an Accept header never turns a request into a 406."""

    def select_parser(self, request, parsers):
        for parser in parsers:
            if request.content_type.split(";")[0].strip() == parser.media_type:
                return parser
        return None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
