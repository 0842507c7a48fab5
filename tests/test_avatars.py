"""Avatars and the edge: PUT|GET|DELETE /users/{id}/avatar through Caddy on the real stack, the
blobs in the data directory's media/ served by Caddy with immutable caching, and static/ with
Cache-Control, ETag and compression. Images are made with Pillow in this process."""
import hashlib
import io
import re
import subprocess
import sys
import uuid

import pytest
from PIL import Image

from conftest import assert_problem
from workbench.stack.config import PROJECT_DIR

IMMUTABLE = "public, max-age=31536000, immutable"


def image_bytes(fmt: str, size=(48, 32), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def put_avatar(http, api_url, user_id, body: bytes, content_type="image/png"):
    return http.put(f"{api_url}/users/{user_id}/avatar", data=body, headers={"Content-Type": content_type},
                    timeout=30)


def avatar_location(http, api_url, user_id) -> str:
    response = http.get(f"{api_url}/users/{user_id}/avatar", allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    assert response.headers["Cache-Control"] == "no-cache"
    return response.headers["Location"]


def blob_path(stack_config, url: str):
    return stack_config.media_dir / url.split("/media/", 1)[1]


def uploaded(http, api_url, stack_config, user_id) -> str:
    """Upload a PNG; its URL, once its blob is on disk."""
    response = put_avatar(http, api_url, user_id, image_bytes("PNG"))
    assert response.status_code == 200, response.text
    url = response.json()["data"]["url"]
    assert blob_path(stack_config, url).exists()
    return url


def test_png_upload_is_served_by_the_edge_under_a_content_hashed_url(http, api_url, new_user, stack_config):
    user = new_user()
    png = image_bytes("PNG")
    response = put_avatar(http, api_url, user["id"], png)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["content_type"], data["bytes"], data["width"], data["height"]) == ("image/png", len(png), 48, 32)
    digest = hashlib.sha256(png).hexdigest()
    assert re.search(rf"/media/avatars/{user['id']}/{digest}\.png$", data["url"]), data["url"]

    location = avatar_location(http, api_url, user["id"])
    assert location == data["url"]
    assert blob_path(stack_config, location).read_bytes() == png

    blob = http.get(location, timeout=10)
    assert blob.status_code == 200
    assert blob.content == png
    assert blob.headers["Content-Type"] == "image/png"
    assert blob.headers["Cache-Control"] == IMMUTABLE
    assert blob.headers["X-Content-Type-Options"] == "nosniff"
    assert "X-App-Server" not in blob.headers  # Caddy answered, not an app server
    assert blob.headers["Last-Modified"]
    etag = blob.headers["ETag"]
    again = http.get(location, headers={"If-None-Match": etag}, timeout=10)
    assert again.status_code == 304 and again.content == b""


def test_new_bytes_get_a_new_url_and_the_old_blob_goes(http, api_url, new_user, stack_config):
    user = new_user()
    first = uploaded(http, api_url, stack_config, user["id"])
    # The type comes from the bytes: a JPEG declared as PNG is stored and served as a JPEG.
    jpeg = image_bytes("JPEG", size=(40, 40), color=(10, 90, 200))
    response = put_avatar(http, api_url, user["id"], jpeg, content_type="image/png")
    assert response.status_code == 200, response.text
    second = response.json()["data"]
    assert second["content_type"] == "image/jpeg" and second["url"].endswith(".jpg")
    assert second["url"] != first
    assert avatar_location(http, api_url, user["id"]) == second["url"]
    blob = http.get(second["url"], timeout=10)
    assert blob.content == jpeg and blob.headers["Content-Type"] == "image/jpeg"
    assert not blob_path(stack_config, first).exists()
    old = http.get(first, timeout=10)
    assert old.status_code == 404 and "Cache-Control" not in old.headers  # a 404 is never immutable


@pytest.mark.parametrize("fmt,media", [("WEBP", "image/webp"), ("GIF", "image/gif")])
def test_webp_and_gif_are_accepted(http, api_url, new_user, fmt, media):
    user = new_user()
    response = put_avatar(http, api_url, user["id"], image_bytes(fmt), content_type=media)
    assert response.status_code == 200, response.text
    url = response.json()["data"]["url"]
    assert http.get(url, timeout=10).headers["Content-Type"] == media


def test_oversized_body_is_413(http, api_url, new_user):
    user = new_user()
    body = image_bytes("PNG") + b"\0" * (2 * 1024 * 1024)
    assert_problem(put_avatar(http, api_url, user["id"], body), 413, "(body)")


@pytest.mark.parametrize("body", [
    b"hello, I am plain text pretending to be a picture\n" * 10,
    b"\x89PNG\r\n\x1a\n" + b"this is no image at all, just text after the signature" * 20,
    image_bytes("PNG", size=(200, 200))[:300],  # a real PNG, cut short
], ids=["text", "png-signature-then-garbage", "truncated-png"])
def test_bodies_that_are_not_images_are_415(http, api_url, new_user, stack_config, body):
    user = new_user()
    assert_problem(put_avatar(http, api_url, user["id"], body), 415, "(body)")
    assert not (stack_config.media_dir / "avatars" / user["id"]).exists() or \
        not any((stack_config.media_dir / "avatars" / user["id"]).iterdir())


def test_a_non_image_content_type_is_415(http, api_url, new_user):
    user = new_user()
    response = put_avatar(http, api_url, user["id"], image_bytes("PNG"), content_type="text/plain")
    assert_problem(response, 415, "Content-Type")


def test_a_decompression_bomb_is_refused_before_decoding(http, api_url, new_user, stack_config):
    out = io.BytesIO()
    Image.new("1", (12000, 12000)).save(out, format="PNG", optimize=True)  # 144 Mpx in a few KB
    assert len(out.getvalue()) < 2 * 1024 * 1024
    user = new_user()
    assert_problem(put_avatar(http, api_url, user["id"], out.getvalue()), 413, "(body)")
    assert not (stack_config.media_dir / "avatars" / user["id"]).exists()


def test_unknown_user_and_missing_avatar_are_404(http, api_url, new_user):
    unknown = 999_999_999_999
    assert_problem(put_avatar(http, api_url, unknown, image_bytes("PNG")), 404, "user_id")
    assert_problem(http.get(f"{api_url}/users/{unknown}/avatar", timeout=10), 404, "user_id")
    assert_problem(http.delete(f"{api_url}/users/{unknown}/avatar", timeout=10), 404, "user_id")
    user = new_user()
    assert_problem(http.get(f"{api_url}/users/{user['id']}/avatar", timeout=10), 404, "avatar")


def test_delete_avatar_removes_the_blob(http, api_url, new_user, stack_config):
    user = new_user()
    url = uploaded(http, api_url, stack_config, user["id"])
    assert http.delete(f"{api_url}/users/{user['id']}/avatar", timeout=10).status_code == 204
    assert not blob_path(stack_config, url).exists()
    assert http.get(url, timeout=10).status_code == 404
    assert_problem(http.get(f"{api_url}/users/{user['id']}/avatar", timeout=10), 404, "avatar")
    assert http.delete(f"{api_url}/users/{user['id']}/avatar", timeout=10).status_code == 204  # idempotent


def test_deleting_the_user_deletes_the_blob(http, api_url, new_user, stack_config):
    user = new_user()
    url = uploaded(http, api_url, stack_config, user["id"])
    assert http.delete(f"{api_url}/users/{user['id']}", timeout=10).status_code == 204
    assert not blob_path(stack_config, url).exists()
    assert not (stack_config.media_dir / "avatars" / user["id"]).exists()
    assert http.get(url, timeout=10).status_code == 404


def test_the_sweep_deletes_orphan_blobs_only(http, api_url, new_user, stack_config):
    user = new_user()
    url = uploaded(http, api_url, stack_config, user["id"])
    orphan = blob_path(stack_config, url).with_name("0" * 64 + ".png")  # an upload that died midway
    orphan.write_bytes(b"x")
    gone = stack_config.media_dir / "avatars" / "424242424242" / ("1" * 64 + ".png")  # a deleted user's
    gone.parent.mkdir(parents=True, exist_ok=True)
    gone.write_bytes(b"x")
    done = subprocess.run([sys.executable, "manage.py", "avatars_sweep"], cwd=PROJECT_DIR, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not orphan.exists() and not gone.exists() and not gone.parent.exists()
    assert blob_path(stack_config, url).exists()
    assert http.get(url, timeout=10).status_code == 200


@pytest.fixture
def static_files():
    """Two stylesheets in the project's static/, one with a content hash in its name."""
    root = PROJECT_DIR / "static"
    root.mkdir(exist_ok=True)
    text = "".join(f".rule-{i} {{ color: #{i:06x}; margin: {i}px; }}\n" for i in range(200))
    tag = uuid.uuid4().hex[:12]
    plain = root / f"test-{tag}.css"
    hashed = root / f"test-{tag}.{hashlib.sha256(text.encode()).hexdigest()[:12]}.css"
    for path in (plain, hashed):
        path.write_text(text)
    try:
        yield text, plain.name, hashed.name
    finally:
        plain.unlink(missing_ok=True)
        hashed.unlink(missing_ok=True)


def test_static_files_get_cache_control_etag_and_compression(http, stack, static_files):
    text, plain, hashed = static_files
    base = stack["api_url"] + "/static/"
    response = http.get(base + plain, headers={"Accept-Encoding": "identity"}, timeout=10)
    assert response.status_code == 200 and response.text == text
    assert response.headers["Cache-Control"] == "public, no-cache"  # may change: revalidate
    assert "Content-Encoding" not in response.headers
    etag = response.headers["ETag"]
    again = http.get(base + plain, headers={"If-None-Match": etag, "Accept-Encoding": "identity"}, timeout=10)
    assert again.status_code == 304

    assert http.get(base + hashed, timeout=10).headers["Cache-Control"] == IMMUTABLE

    gz = http.get(base + plain, headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert gz.headers["Content-Encoding"] == "gzip" and gz.text == text  # requests decodes gzip
    assert "Accept-Encoding" in gz.headers.get("Vary", "")
    zstd = http.get(base + plain, headers={"Accept-Encoding": "zstd"}, stream=True, timeout=10)
    assert zstd.headers["Content-Encoding"] == "zstd"
    raw = zstd.raw.read(decode_content=False)
    assert raw.startswith(b"\x28\xb5\x2f\xfd") and len(raw) < len(text) / 3  # a zstd frame, compressed
