def test_envelope_through_caddy(http, api_url):
    response = http.get(f"{api_url}/users?limit=3", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"data", "meta"}
    assert set(body["meta"]) == {"timestamp", "version", "request_id"}
    assert body["meta"]["request_id"] == response.headers["X-Request-Id"]
    assert len(body["data"]["results"]) == 3
    assert response.headers["X-App-Server"] in {"app-1", "app-2"}
