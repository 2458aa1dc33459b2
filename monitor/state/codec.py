"""Records back from the plain data `to_dict` made: how worker processes read each other's snapshots.

Driven by the records' own type hints, so a new field needs no code here; unknown keys are
ignored and missing ones take the field's default (a newer or older worker's snapshot still reads).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar, Union

T = TypeVar("T")


class DecodeError(ValueError):
    """The data does not fit the record it should become."""


def to_plain(record: Any) -> Any:
    """What `records.to_dict` makes of `record`, faster: field names looked up once per type
    (a worker publishes thousands of records a second)."""
    kind = record.__class__
    if kind is str or kind is int or kind is bool or record is None:
        return record
    if kind is float:
        return "+Inf" if record == _INF else record
    names = _field_names(kind)
    if names is not None:
        return {name: to_plain(getattr(record, name)) for name in names}
    if kind is tuple or kind is list:
        return [to_plain(item) for item in record]
    if kind is dict:
        return {str(key): to_plain(value) for key, value in record.items()}
    if isinstance(record, enum.Enum):
        return record.value
    return record


_INF = float("inf")


@cache
def _field_names(kind: type) -> tuple[str, ...] | None:
    if dataclasses.is_dataclass(kind):
        return tuple(f.name for f in dataclasses.fields(kind))
    return None


def from_dict(record_type: type[T], data: Any) -> T:
    """The record of type `record_type` that `to_dict` turned into `data`."""
    kind: Any = record_type  # a class is hashable, which the decoder cache needs
    value: T = _decoder(kind)(data)
    return value


Decoder = Callable[[Any], Any]


@cache
def _decoder(kind: Any) -> Decoder:
    """A function decoding data of `kind`, built once per type (a scrape decodes thousands)."""
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        return _union(list(typing.get_args(kind)))
    if origin is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return _sequence(_decoder(args[0]))
        return _fixed_tuple(tuple(_decoder(arg) for arg in args))
    if origin is dict:
        key_type, value_type = typing.get_args(kind)
        return _mapping(_decoder(key_type), _decoder(value_type))
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        return _record(kind)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return _enum(kind)
    return _SCALARS.get(kind) or _fail(kind)


def _union(options: list[Any]) -> Decoder:
    optional = type(None) in options
    decoders = [_decoder(option) for option in options if option is not type(None)]

    def decode(data: Any) -> Any:
        if data is None and optional:
            return None
        for decoder in decoders:
            try:
                return decoder(data)
            except DecodeError:
                continue
        raise DecodeError(f"{data!r} fits none of {options}")

    return decode


def _sequence(item: Decoder) -> Decoder:
    def decode(data: Any) -> tuple[Any, ...]:
        if not isinstance(data, list | tuple):
            raise DecodeError(f"expected a list, got {type(data).__name__}")
        return tuple([item(value) for value in data])

    return decode


def _fixed_tuple(items: tuple[Decoder, ...]) -> Decoder:
    def decode(data: Any) -> tuple[Any, ...]:
        if not isinstance(data, list | tuple) or len(data) != len(items):
            raise DecodeError(f"expected a list of {len(items)}")
        return tuple(item(value) for item, value in zip(items, data, strict=True))

    return decode


def _mapping(key: Decoder, value: Decoder) -> Decoder:
    def decode(data: Any) -> dict[Any, Any]:
        if not isinstance(data, dict):
            raise DecodeError(f"expected an object, got {type(data).__name__}")
        return {key(k): value(v) for k, v in data.items()}

    return decode


def _record(kind: type) -> Decoder:
    hints = typing.get_type_hints(kind)
    # Built lazily: a record may refer to its own type further down.
    fields: list[tuple[str, Decoder]] = []

    def decode(data: Any) -> Any:
        if not isinstance(data, dict):
            raise DecodeError(f"expected an object for {kind.__name__}")
        if not fields:
            fields.extend((f.name, _decoder(hints[f.name])) for f in dataclasses.fields(kind))
        try:
            return kind(**{name: field(data[name]) for name, field in fields if name in data})
        except TypeError as exc:  # a required field is missing
            raise DecodeError(str(exc)) from None

    return decode


def _enum(kind: type[enum.Enum]) -> Decoder:
    def decode(data: Any) -> Any:
        try:
            return kind(data)
        except ValueError as exc:
            raise DecodeError(str(exc)) from None

    return decode


def _float(data: Any) -> float:
    if data.__class__ is float:
        return float(data)
    if data == "+Inf":  # to_dict writes infinity this way (JSON has none)
        return float("inf")
    if data.__class__ is int:
        return float(data)
    raise DecodeError(f"expected a number, got {data!r}")


def _exact(kind: type) -> Decoder:
    def decode(data: Any) -> Any:
        if data.__class__ is not kind:  # bool is no int here, int no float
            raise DecodeError(f"expected {kind.__name__}, got {data!r}")
        return data

    return decode


def _any(data: Any) -> Any:
    return data


def _fail(kind: Any) -> Decoder:
    raise TypeError(f"no decoder for {kind!r}")


_SCALARS: dict[Any, Decoder] = {
    float: _float,
    int: _exact(int),
    str: _exact(str),
    bool: _exact(bool),
    Any: _any,
    object: _any,
}
