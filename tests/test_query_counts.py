"""In-process (pytest-django, on the stack's PostgreSQL servers): a request runs a fixed number of
SQL queries whatever the page size. No N+1."""
from contextlib import ExitStack

import pytest
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.db import connections
from django.utils import timezone

from api import services
from api.models import Post, User
from api.routing import ids

pytestmark = pytest.mark.django_db(databases=["default", "primary"])

# Fixed costs on the data primary: one SELECT for a page of users, or for one user or post;
# the user's existence plus one SELECT for a page of posts.
USER_LIST_QUERIES = 1
POST_LIST_QUERIES = 2
DETAIL_QUERIES = 1


@pytest.fixture
def client():
    return Client(HTTP_HOST="127.0.0.1")


@pytest.fixture
def data():
    """150 users, the first of them with 150 posts; one of each made by the services."""
    author, _ = services.user_sign_up(username="author", email="author@example.org", password=None)
    services.post_create(user_id=author.id, title="by the service", body="")
    now = timezone.now()
    User.objects.bulk_create([
        User(id=ids.next_id(), username=f"qc{i}", email=f"qc{i}@example.org", post_count=0,
             created_at=now, updated_at=now)
        for i in range(149)
    ])
    Post.objects.bulk_create([
        Post(id=ids.next_id(), user_id=author.id, title=f"p{i}", body="x" * 50, created_at=now, updated_at=now)
        for i in range(149)
    ])
    User.objects.filter(id=author.id).update(post_count=150)
    assert User.objects.count() == 150 and Post.objects.filter(user_id=author.id).count() == 150
    return author


def get(client, url):
    response = client.get(url)
    assert response.status_code == 200, response.content[:500]
    return response.json()["data"]


def count_queries(client, url):
    """(queries on primary, queries on meta, data) of one GET."""
    with ExitStack() as stack:
        primary = stack.enter_context(CaptureQueriesContext(connections["primary"]))
        meta = stack.enter_context(CaptureQueriesContext(connections["default"]))
        data = get(client, url)
    return len(primary), len(meta), data


def test_user_list_is_a_fixed_number_of_queries(client, data, django_assert_num_queries):
    with django_assert_num_queries(USER_LIST_QUERIES, using="primary"):
        one = get(client, "/api/v1/users?limit=1")
    with django_assert_num_queries(USER_LIST_QUERIES, using="primary"):
        hundred = get(client, "/api/v1/users?limit=100")
    with django_assert_num_queries(USER_LIST_QUERIES, using="primary"):
        default = get(client, "/api/v1/users")
    assert (len(one["results"]), len(hundred["results"]), len(default["results"])) == (1, 100, 20)
    # The next page, through the cursor, costs the same.
    with django_assert_num_queries(USER_LIST_QUERIES, using="primary"):
        second = get(client, hundred["next"].replace("http://127.0.0.1", ""))
    assert len(second["results"]) == 50 and second["next"] is None
    # Reads never touch meta.
    with django_assert_num_queries(0, using="default"):
        get(client, "/api/v1/users?limit=100")


def test_post_list_is_a_fixed_number_of_queries(client, data, django_assert_num_queries):
    base = f"/api/v1/users/{data.id}/posts"
    with django_assert_num_queries(POST_LIST_QUERIES, using="primary"):
        one = get(client, f"{base}?limit=1")
    with django_assert_num_queries(POST_LIST_QUERIES, using="primary"):
        hundred = get(client, f"{base}?limit=100")
    assert (len(one["results"]), len(hundred["results"])) == (1, 100)
    with django_assert_num_queries(POST_LIST_QUERIES, using="primary"):
        rest = get(client, hundred["next"].replace("http://127.0.0.1", ""))
    assert len(rest["results"]) == 50 and rest["next"] is None
    since = hundred["results"][-1]["created_at"]
    with django_assert_num_queries(POST_LIST_QUERIES, using="primary"):
        ranged = get(client, f"{base}?limit=100&since={since.replace('+', '%2B')}&until=2999-01-01T00:00:00Z")
    assert len(ranged["results"]) >= 1
    with django_assert_num_queries(0, using="default"):
        get(client, f"{base}?limit=100")


@pytest.mark.parametrize("template", ["/api/v1/users?limit={n}", "/api/v1/users/{user}/posts?limit={n}"])
def test_same_count_for_every_page_size(client, data, template):
    counts = {}
    for n in (1, 2, 20, 99, 100):
        primary, meta, page = count_queries(client, template.format(n=n, user=data.id))
        assert len(page["results"]) == n
        counts[n] = (primary, meta)
    assert len(set(counts.values())) == 1, counts
    assert counts[1][1] == 0, "a read touched meta"


def test_details_are_one_query(client, data, django_assert_num_queries):
    post = Post.objects.filter(user_id=data.id).order_by("-id").first()
    with django_assert_num_queries(DETAIL_QUERIES, using="primary"):
        assert get(client, f"/api/v1/users/{data.id}")["post_count"] == 150
    with django_assert_num_queries(DETAIL_QUERIES, using="primary"):
        assert get(client, f"/api/v1/users/{data.id}/posts/{post.id}")["id"] == str(post.id)


def test_unknown_ids_cost_at_most_one_query(client, data, django_assert_max_num_queries):
    with django_assert_max_num_queries(1, using="primary"):
        assert client.get("/api/v1/users/1/posts?limit=100").status_code == 404
    with django_assert_max_num_queries(0, using="primary"):
        assert client.get(f"/api/v1/users/{2**63}").status_code == 404
