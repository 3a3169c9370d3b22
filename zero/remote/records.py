"""Small JSON records zero keeps in a remote beside the data (the marker, the
writer lease): a frozen dataclass of plain fields with a ``format`` number,
read strictly, so a damaged or foreign object is ObjectCorrupt, never guessed at."""

from __future__ import annotations

import dataclasses
import json
from typing import Callable, TypeVar

from zero.errors import ObjectCorrupt, ObjectMissing
from zero.remote.base import Remote

T = TypeVar("T")

_PLAIN = {"str": str, "int": int, "float": float, "bool": bool}


def decode(kind: type[T], blob: bytes, key: str, what: str, newest_format: int) -> T:
    """``kind`` from JSON, each field converted by its annotated type; refused when
    a field is missing (one with a default may be: written before it existed) or of
    the wrong shape, or the format is newer than this zero."""
    try:
        fields = json.loads(blob)
        record = kind(**{field.name: _PLAIN[field.type](fields[field.name]) for field in dataclasses.fields(kind)
                         if field.name in fields or field.default is dataclasses.MISSING})
    except (ValueError, KeyError, TypeError):
        raise ObjectCorrupt(f"the {what} {key} is not a zero {what} (damaged, or written by something else)") \
            from None
    if record.format > newest_format:
        raise ObjectCorrupt(f"the {what} {key} has format {record.format}, newer than this zero knows "
                            f"({newest_format}); upgrade zero")
    return record


def read(remote: Remote, key: str, decode_blob: Callable[[bytes, str], T]) -> T | None:
    """The record at ``key``, or None when there is none. RemoteUnavailable passes
    through: an unreachable remote is not an empty one."""
    try:
        return decode_blob(remote.get(key), key)
    except ObjectMissing:
        return None


def encode(record) -> bytes:
    return json.dumps(dataclasses.asdict(record), sort_keys=True).encode()
