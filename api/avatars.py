"""User avatars: images up to 2 MB, kept as content-hashed blobs through Django's storage API.

Where the blobs live is the `avatars` entry of settings.STORAGES: the local filesystem under the
data directory (`<data dir>/media/avatars/`, served by Caddy at `/media/` with a year-long
immutable Cache-Control), or any S3-compatible service through django-storages when
WORKBENCH_S3_BUCKET is set. A blob's name is `avatars/<user id>/<sha256 of the bytes>.<ext>`: new
bytes get a new URL, so a URL never needs invalidating anywhere. The user's row on its shard
(`api_user.avatar`) holds the name of the current one.

The type is decided from the bytes, never from Content-Type: the magic number must be PNG, JPEG,
WebP or GIF, Pillow must open it as that format, its pixel count must be within
AVATAR_MAX_PIXELS (a few KB of PNG can declare a 20000x20000 image: a decompression bomb), and
every pixel must decode (a PNG signature in front of anything else fails here).

Every change of a user's avatar blobs (upload, delete, the user's deletion) runs under the user's
account lock in meta (services.account_lock), so two uploads can never delete each other's blob
while the row points at it. A failure between steps can leave an orphan blob, never a row naming
a missing blob: the blob is written before the row names it and deleted after the row stops
naming it. `manage.py avatars_sweep` removes orphans.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from PIL import Image

from api import selectors, services
from api.caching import writes as cache
from api.gateway.errors import BodyRejected, NotFound
from api.models import User
from api.routing import db, placement

log = logging.getLogger(__name__)

# Pillow format -> (file extension, media type). Also the media types the gateway lets through.
FORMATS = {"PNG": ("png", "image/png"), "JPEG": ("jpg", "image/jpeg"),
           "WEBP": ("webp", "image/webp"), "GIF": ("gif", "image/gif")}
MEDIA_TYPES = tuple(media for _, media in FORMATS.values())
PREFIX = "avatars"


@dataclass(frozen=True)
class Picture:
    format: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return FORMATS[self.format][0]

    @property
    def media_type(self) -> str:
        return FORMATS[self.format][1]


def sniff(data: bytes) -> str | None:
    """The image format the magic number says, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def inspect(data: bytes) -> Picture:
    """The picture in `data`, or BodyRejected: 413 when too large (bytes or pixels), 415 when it
    is not a whole PNG, JPEG, WebP or GIF image."""
    if len(data) > settings.AVATAR_MAX_BYTES:
        raise BodyRejected(413, f"The image is {len(data)} bytes; the limit is {settings.AVATAR_MAX_BYTES}.",
                           "body-too-large")
    fmt = sniff(data)
    if fmt is None:
        raise BodyRejected(415, "The body is not a PNG, JPEG, WebP or GIF image (judged by its bytes, "
                                "not its Content-Type).", "unsupported-media-type")
    limit = settings.AVATAR_MAX_PIXELS
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            width, height = img.size
            if width * height > limit:
                raise _too_many_pixels(width, height, limit)
            img.verify()  # structure and checksums, without decoding
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            img.load()  # every pixel of the first frame: a truncated or corrupt image fails here
    except Image.DecompressionBombError:
        raise _too_many_pixels(width, height, limit) from None
    except BodyRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken input
        raise BodyRejected(415, f"The body starts like a {fmt} image but does not decode as one "
                                f"({type(exc).__name__}).", "unsupported-media-type") from None
    return Picture(fmt, width, height)


def _too_many_pixels(width: int, height: int, limit: int) -> BodyRejected:
    return BodyRejected(413, f"The image is {width}x{height} pixels; the limit is {limit} pixels.",
                        "image-too-large")


def storage():
    return storages["avatars"]


def blob_name(user_id: int, data: bytes, picture: Picture) -> str:
    return f"{PREFIX}/{user_id}/{hashlib.sha256(data).hexdigest()}.{picture.extension}"


def url_of(name: str) -> str:
    """The blob's URL: `/media/avatars/...` (served by Caddy) or the S3 service's."""
    return storage().url(name)


# --- writes (views call these; they follow services.py's conventions) ----------------------------

def avatar_set(*, user_id: int, data: bytes) -> tuple[str, Picture]:
    """Store the image and make it the user's avatar. Returns (blob name, picture)."""
    picture = inspect(data)
    selectors.user_get(user_id=user_id)  # a 404 before any blob is written for nobody
    name = blob_name(user_id, data, picture)
    with services.account_lock(user_id, wait=True):
        _save(name, data, picture.media_type)
        try:
            old = _point_row_at(user_id, name)
        except NotFound:
            _delete_quietly(name)
            raise
        if old and old != name:
            _delete_quietly(old)
    return name, picture


def avatar_delete(*, user_id: int) -> None:
    """Forget the user's avatar and delete its blob. Deleting an absent avatar is no error."""
    with services.account_lock(user_id, wait=True):
        old = _point_row_at(user_id, None)
        if old:
            _delete_quietly(old)


def avatar_get(*, user_id: int) -> str:
    """The current blob's name, or NotFound."""
    user = selectors.user_get(user_id=user_id)
    if not user.avatar:
        raise NotFound("avatar", f"User {user_id} has no avatar.")
    return user.avatar


def delete_user_blobs(user_id: int) -> None:
    """Every blob of a deleted user (services.user_delete calls it once the rows are gone). Never
    raises: the user's deletion has committed; a blob left behind is an orphan for the sweep."""
    try:
        for name in _names_of(user_id):
            storage().delete(name)
        _remove_empty_dir(user_id)
    except Exception as exc:  # noqa: BLE001 - the storage may be a remote service
        log.warning("avatar blobs of deleted user %s were left behind (%s); `manage.py avatars_sweep` "
                    "removes them", user_id, exc)


def sweep() -> dict:
    """Delete every blob no user row names: those of deleted users and of failed or superseded
    uploads. Returns counts. Safe while the API runs: each user is swept under its account lock."""
    out = {"users": 0, "deleted": 0}
    try:
        dirs, _ = storage().listdir(PREFIX)
    except FileNotFoundError:
        return out
    for entry in dirs:
        if not entry.isdigit():
            continue
        user_id = int(entry)
        out["users"] += 1
        with services.account_lock(user_id, wait=True):
            try:
                current = placement.read(user_id, lambda: _current_on_primary(user_id), NotFound)
            except NotFound:
                current = None
            for name in _names_of(user_id):
                if name != current:
                    storage().delete(name)
                    out["deleted"] += 1
            if current is None:
                _remove_empty_dir(user_id)
    return out


def _current_on_primary(user_id: int) -> str | None:
    rows = list(User.objects.using(db.write_alias()).filter(id=user_id).values_list("avatar", flat=True))
    if not rows:
        raise NotFound("user_id", f"No user {user_id}.")
    return rows[0]


def _save(name: str, data: bytes, media_type: str) -> None:
    blobs = storage()
    if blobs.exists(name):
        return  # the same bytes: content-hashed names never change meaning
    content = ContentFile(data)
    content.content_type = media_type  # S3 backends store it as the object's Content-Type
    saved = blobs.save(name, content)
    if saved != name:  # a backend that renames instead of overwriting raced with itself
        blobs.delete(saved)


def _point_row_at(user_id: int, name: str | None) -> str | None:
    """Set the user's avatar; return the one it replaced. NotFound if there is no such user."""
    def update():
        rows = User.objects.using(db.write_alias()).select_for_update().filter(id=user_id)
        old = rows.values_list("avatar", flat=True)
        found = list(old)
        if not found:
            raise NotFound("user_id", f"No user {user_id}.")
        if found[0] != name:
            User.objects.filter(id=user_id).update(avatar=name)
            cache.user_changed(user_id)  # the query cache holds the row
        return found[0]

    return placement.write(user_id, update)


def _names_of(user_id: int) -> list[str]:
    try:
        _, files = storage().listdir(f"{PREFIX}/{user_id}")
    except FileNotFoundError:
        return []
    return [f"{PREFIX}/{user_id}/{f}" for f in files]


def _remove_empty_dir(user_id: int) -> None:
    try:
        path = storage().path(f"{PREFIX}/{user_id}")
    except NotImplementedError:
        return  # an object store has no directories
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty (an upload won a race) or already gone


def _delete_quietly(name: str) -> None:
    try:
        storage().delete(name)
    except Exception as exc:  # noqa: BLE001
        log.warning("avatar blob %s was left behind (%s); `manage.py avatars_sweep` removes it", name, exc)

