"""Records back from the plain data `to_dict` made: how worker processes read each other's snapshots.

Driven by the records' own type hints, so a new field needs no code here; unknown keys are
ignored and missing ones take the field's default (a newer or older worker's snapshot still reads).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from functools import cache
from typing import Any, TypeVar, Union

T = TypeVar("T")


class DecodeError(ValueError):
    """The data does not fit the record it should become."""


def from_dict(record_type: type[T], data: Any) -> T:
    """The record of type `record_type` that `to_dict` turned into `data`."""
    value: T = _decode(record_type, data)
    return value


@cache
def _hints(record_type: type) -> dict[str, Any]:
    return typing.get_type_hints(record_type)


def _decode(kind: Any, data: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        options = typing.get_args(kind)
        if data is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _decode(option, data)
            except DecodeError:
                continue
        raise DecodeError(f"{data!r} fits none of {kind}")
    if origin is tuple:
        args = typing.get_args(kind)
        if not isinstance(data, list | tuple):
            raise DecodeError(f"expected a list, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], item) for item in data)
        return tuple(_decode(arg, item) for arg, item in zip(args, data, strict=True))
    if origin is dict:
        key_type, value_type = typing.get_args(kind)
        if not isinstance(data, dict):
            raise DecodeError(f"expected an object, got {type(data).__name__}")
        return {_decode(key_type, k): _decode(value_type, v) for k, v in data.items()}
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        if not isinstance(data, dict):
            raise DecodeError(f"expected an object for {kind.__name__}")
        hints = _hints(kind)
        values = {
            field.name: _decode(hints[field.name], data[field.name])
            for field in dataclasses.fields(kind)
            if field.name in data
        }
        try:
            return kind(**values)
        except TypeError as exc:  # a required field is missing
            raise DecodeError(str(exc)) from None
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(data)
        except ValueError as exc:
            raise DecodeError(str(exc)) from None
    return _scalar(kind, data)


def _scalar(kind: Any, data: Any) -> Any:
    if kind is float:
        if data == "+Inf":  # to_dict writes infinity this way (JSON has none)
            return float("inf")
        if isinstance(data, int | float) and not isinstance(data, bool):
            return float(data)
    elif kind is bool:
        if isinstance(data, bool):
            return data
    elif kind is int:
        if isinstance(data, int) and not isinstance(data, bool):
            return data
    elif kind is str:
        if isinstance(data, str):
            return data
    elif kind is Any or kind is object:
        return data
    raise DecodeError(f"expected {getattr(kind, '__name__', kind)}, got {data!r}")
