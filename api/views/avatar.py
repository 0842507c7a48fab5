"""PUT|GET|DELETE /api/v1/users/{id}/avatar: an image up to 2 MB per user, stored as a content-hashed
blob (api/avatars.py). The blob itself is served by the edge (Caddy, /media/...) or the S3 service,
never by an app server."""
from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response

from api import avatars
from api.caching import behind

from .base import ApiView

AVATAR_TYPES = ", ".join(avatars.MEDIA_TYPES)


class AvatarView(ApiView):
    """The user's avatar: PUT the image's bytes as the body, GET redirects to the blob."""

    @extend_schema(
        operation_id="users_avatar_put",
        request={media: OpenApiTypes.BINARY for media in avatars.MEDIA_TYPES},
        responses={200: inline_serializer("Avatar", {
            "url": serializers.URLField(), "content_type": serializers.CharField(),
            "bytes": serializers.IntegerField(), "width": serializers.IntegerField(),
            "height": serializers.IntegerField()})},
        description=f"The raw image as the body ({AVATAR_TYPES}), at most 2 MB. The type is judged "
                    "from the bytes, not Content-Type: 415 for anything that does not decode as one of "
                    "those formats, 413 beyond 2 MB or beyond the pixel limit. The URL is content-hashed.")
    def put(self, request, user_id):
        stream = request.stream
        data = stream.read(settings.AVATAR_MAX_BYTES + 1) if stream is not None else b""
        name, picture = avatars.avatar_set(user_id=user_id, data=data)
        behind.mark("sync")
        url = request.build_absolute_uri(avatars.url_of(name))
        return Response({"url": url, "content_type": picture.media_type, "bytes": len(data),
                         "width": picture.width, "height": picture.height},
                        headers={"Content-Location": url, **behind.headers()})

    @extend_schema(operation_id="users_avatar_get", responses={
        302: OpenApiResponse(description="`Location` is the content-hashed image, served with a "
                                         "year-long immutable Cache-Control."),
        404: OpenApiResponse(description="No such user, or the user has no avatar.")})
    def get(self, request, user_id):
        name = avatars.avatar_get(user_id=user_id)
        response = HttpResponse(status=status.HTTP_302_FOUND)
        response["Location"] = request.build_absolute_uri(avatars.url_of(name))
        response["Cache-Control"] = "no-cache"  # this redirect changes with each upload; its target never does
        return response

    @extend_schema(operation_id="users_avatar_delete", responses={204: None})
    def delete(self, request, user_id):
        avatars.avatar_delete(user_id=user_id)
        behind.mark("sync")
        return Response(status=status.HTTP_204_NO_CONTENT, headers=behind.headers())
