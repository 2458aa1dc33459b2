"""CRUD routes under /products and /users; every handler uses the session-per-request dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from monitor.demo import crud
from monitor.demo.db import SessionDep
from monitor.demo.models import Product, User
from monitor.demo.schemas import (
    MAX_PAGE,
    ProductCreate,
    ProductPage,
    ProductRead,
    ProductUpdate,
    UserCreate,
    UserPage,
    UserRead,
    UserUpdate,
)

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"at most {MAX_PAGE}")]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]
# Ids are PostgreSQL `integer`: anything outside its range is a 422, not a database error.
RowId = Annotated[int, Path(ge=1, le=2_147_483_647)]

ERRORS: dict[int | str, dict[str, object]] = {
    404: {"description": "No such row"},
    503: {"description": "Database unavailable"},
}

products = APIRouter(prefix="/products", tags=["products"], responses=ERRORS)
users = APIRouter(prefix="/users", tags=["users"], responses=ERRORS)


@products.get("", response_model=ProductPage)
def list_products(session: SessionDep, limit: Limit = 20, offset: Offset = 0) -> ProductPage:
    rows, total = crud.list_rows(session, Product, limit=limit, offset=offset)
    items = [ProductRead.model_validate(row) for row in rows]
    return ProductPage(items=items, limit=limit, offset=offset, total=total)


@products.get("/{product_id}", response_model=ProductRead)
def read_product(session: SessionDep, product_id: RowId) -> Product:
    return crud.get_row(session, Product, product_id)


@products.post("", response_model=ProductRead, status_code=status.HTTP_201_CREATED)
def create_product(session: SessionDep, body: ProductCreate) -> Product:
    return crud.create_row(session, Product, body)


@products.patch("/{product_id}", response_model=ProductRead)
def update_product(session: SessionDep, product_id: RowId, body: ProductUpdate) -> Product:
    return crud.update_row(session, Product, product_id, body)


@products.delete("/{product_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_product(session: SessionDep, product_id: RowId) -> Response:
    crud.delete_row(session, Product, product_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@users.get("", response_model=UserPage)
def list_users(session: SessionDep, limit: Limit = 20, offset: Offset = 0) -> UserPage:
    rows, total = crud.list_rows(session, User, limit=limit, offset=offset)
    items = [UserRead.model_validate(row) for row in rows]
    return UserPage(items=items, limit=limit, offset=offset, total=total)


@users.get("/{user_id}", response_model=UserRead)
def read_user(session: SessionDep, user_id: RowId) -> User:
    return crud.get_row(session, User, user_id)


@users.post(
    "",
    response_model=UserRead,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "Email already registered"}},
)
def create_user(session: SessionDep, body: UserCreate) -> User:
    return crud.create_row(session, User, body)


@users.patch(
    "/{user_id}",
    response_model=UserRead,
    responses={409: {"description": "Email already registered"}},
)
def update_user(session: SessionDep, user_id: RowId, body: UserUpdate) -> User:
    return crud.update_row(session, User, user_id, body)


@users.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_user(session: SessionDep, user_id: RowId) -> Response:
    crud.delete_row(session, User, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
