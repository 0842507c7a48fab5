"""The response envelope of the seed: {"data": ..., "meta": {timestamp, version, request_id}}.
Problem documents are rendered bare, as RFC 9457 asks."""
from datetime import datetime, timezone

from rest_framework.renderers import JSONRenderer


class EnvelopeRenderer(JSONRenderer):
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None):
        context = renderer_context or {}
        response = context.get("response")
        if response is None or getattr(response, "is_problem", False) or response.status_code >= 400:
            return super().render(data, accepted_media_type, renderer_context)
        if response.status_code in (204, 304):
            return b""
        request = context.get("request")
        view = context.get("view")
        meta = {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "version": getattr(view, "api_version", "v1"),
            "request_id": getattr(request, "request_id", None),
        }
        return super().render({"data": data, "meta": meta}, accepted_media_type, renderer_context)


class JSONOnlyNegotiation:
    """The API speaks JSON only; an Accept header never turns a request into a 406."""

    def select_parser(self, request, parsers):
        for parser in parsers:
            if request.content_type.split(";")[0].strip() == parser.media_type:
                return parser
        return None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
