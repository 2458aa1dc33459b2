"""Database operations of the sample app; each takes the request's session and commits explicitly."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from monitor.demo.models import Product, User

Row = TypeVar("Row", Product, User)


class NotFound(LookupError):
    """The row does not exist."""


class Conflict(ValueError):
    """A unique constraint refused the write."""


def list_rows(
    session: Session, model: type[Row], *, limit: int, offset: int
) -> tuple[list[Row], int]:
    rows = session.scalars(select(model).order_by(model.id).limit(limit).offset(offset)).all()
    total = session.scalar(select(func.count()).select_from(model)) or 0
    return list(rows), total


def get_row(session: Session, model: type[Row], row_id: int) -> Row:
    row = session.get(model, row_id)
    if row is None:
        raise NotFound(f"{model.__tablename__[:-1]} {row_id} not found")
    return row


def create_row(session: Session, model: type[Row], data: BaseModel) -> Row:
    row = model(**data.model_dump())
    session.add(row)
    _commit(session)
    return row


def update_row(session: Session, model: type[Row], row_id: int, data: BaseModel) -> Row:
    row = get_row(session, model, row_id)
    for field, value in data.model_dump(exclude_unset=True).items():
        setattr(row, field, value)
    _commit(session)
    return row


def delete_row(session: Session, model: type[Row], row_id: int) -> None:
    session.delete(get_row(session, model, row_id))
    _commit(session)


def _commit(session: Session) -> None:
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict("a row with this value already exists") from exc
