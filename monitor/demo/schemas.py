"""Request and response bodies; limits here are what turns bad input into a 422."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# PostgreSQL text cannot hold NUL: refusing it here makes it a 422 instead of a driver error.
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[^\x00]+$"),
]
Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        to_lower=True,
        max_length=254,
        pattern=r"^[^@\s\x00]+@[^@\s\x00]+\.[^@\s\x00]+$",
    ),
]
Price = Annotated[
    Decimal, Field(ge=0, le=Decimal("9999999999.99"), max_digits=12, decimal_places=2)
]
Description = Annotated[str, StringConstraints(max_length=2000, pattern=r"^[^\x00]*$")]

MAX_PAGE = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProductCreate(_Strict):
    name: Name
    price: Price
    description: Description | None = None


class ProductUpdate(_Strict):
    name: Name | None = None
    price: Price | None = None
    description: Description | None = None


class ProductRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    price: Decimal
    description: str | None
    created_at: datetime


class UserCreate(_Strict):
    email: Email
    name: Name


class UserUpdate(_Strict):
    email: Email | None = None
    name: Name | None = None


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    name: str
    created_at: datetime


class Page(BaseModel):
    limit: int
    offset: int
    total: int


class ProductPage(Page):
    items: list[ProductRead]


class UserPage(Page):
    items: list[UserRead]
