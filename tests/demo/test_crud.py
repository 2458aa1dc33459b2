"""CRUD round trips and every bad-input case, against a real PostgreSQL."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


def test_product_round_trip(client: TestClient) -> None:
    created = client.post("/products", json={"name": "Lamp", "price": "19.90"})
    assert created.status_code == 201
    product = created.json()
    assert product["name"] == "Lamp" and product["price"] == "19.90"

    assert client.get(f"/products/{product['id']}").json()["name"] == "Lamp"

    updated = client.patch(f"/products/{product['id']}", json={"price": "21.00"})
    assert updated.status_code == 200
    assert updated.json()["price"] == "21.00" and updated.json()["name"] == "Lamp"

    assert client.delete(f"/products/{product['id']}").status_code == 204
    assert client.get(f"/products/{product['id']}").status_code == 404


def test_user_round_trip(client: TestClient) -> None:
    created = client.post("/users", json={"email": "Ada@Example.org", "name": "Ada"})
    assert created.status_code == 201
    user = created.json()
    assert user["email"] == "ada@example.org"
    assert client.patch(f"/users/{user['id']}", json={"name": "Ada L."}).json()["name"] == "Ada L."
    assert client.delete(f"/users/{user['id']}").status_code == 204
    assert client.delete(f"/users/{user['id']}").status_code == 404


def test_list_is_paged_and_bounded(client: TestClient) -> None:
    for index in range(5):
        assert client.post("/products", json={"name": f"p{index}", "price": 1}).status_code == 201
    page = client.get("/products", params={"limit": 2, "offset": 1}).json()
    assert [item["name"] for item in page["items"]] == ["p1", "p2"]
    assert page["total"] == 5 and page["limit"] == 2 and page["offset"] == 1


@pytest.mark.parametrize("path", ["/products/999999", "/users/999999"])
def test_unknown_id_is_404_json(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/products", {"name": "x"}),  # price missing
        ("post", "/products", {"name": "x", "price": "abc"}),
        ("post", "/products", {"name": "x", "price": -1}),
        ("post", "/products", {"name": "x" * 101, "price": 1}),  # over-long
        ("post", "/products", {"name": "", "price": 1}),
        ("post", "/products", {"name": "x", "price": 1, "unknown": 1}),
        ("post", "/users", {"email": "not-an-email", "name": "x"}),
        ("post", "/users", {"email": "a@b.co", "name": "x" * 101}),
        ("patch", "/products/1", {"price": "1e40"}),
    ],
)
def test_invalid_body_is_422(client: TestClient, method: str, path: str, body: object) -> None:
    response = client.request(method, path, json=body)
    assert response.status_code == 422
    assert response.json()["detail"]


@pytest.mark.parametrize(
    "query",
    [
        "/products?limit=101",
        "/products?limit=0",
        "/products?offset=-1",
        "/users?limit=abc",
        "/products/abc",
        "/products/99999999999",
        "/products/0",
    ],
)
def test_invalid_query_or_path_is_422(client: TestClient, query: str) -> None:
    assert client.get(query).status_code == 422


def test_broken_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/products", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


def test_duplicate_email_is_409(client: TestClient) -> None:
    assert client.post("/users", json={"email": "dup@example.org", "name": "A"}).status_code == 201
    response = client.post("/users", json={"email": "DUP@example.org", "name": "B"})
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]
    # The failed commit was rolled back: the session and the pool are healthy afterwards.
    assert client.get("/users").json()["total"] == 1


def test_session_is_closed_when_the_route_raises(client: TestClient) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    for _ in range(10):
        assert client.get("/products/424242").status_code == 404
        assert client.post("/users", json={"email": "x@example.org", "name": "x"}).status_code in (
            201,
            409,
        )
    assert engine.pool.checkedout() == 0
