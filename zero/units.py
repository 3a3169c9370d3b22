"""Sizes as people write them in config.yml and on the command line."""

from __future__ import annotations

import re
from typing import Any

from zero.errors import ConfigError

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "tib": 1024**4,
    "p": 1000**5, "pb": 1000**5, "pib": 1024**5,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(key: str, value: Any, bare_number_unit: int = 1) -> int:
    """A size in bytes from a number (times ``bare_number_unit``) or a string like "500MiB"."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size such as 20GB or 500MiB, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"{key}: a size cannot be negative (got {value}); give a positive size such as 20GB")
        return int(value * bare_number_unit)
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if not match:
            if value.strip().startswith("-"):
                raise ConfigError(f"{key}: a size cannot be negative (got {value!r}); give a positive size such as 20GB")
            raise ConfigError(f"{key}: {value!r} is not a size; write it like 20GB, 500MiB or 4194304")
        number, unit = match.groups()
        if unit.lower() not in _SIZE_UNITS:
            raise ConfigError(
                f"{key}: unknown unit {unit!r} in {value!r}; use B, KiB, MiB, GiB, TiB or KB, MB, GB, TB"
            )
        multiplier = _SIZE_UNITS[unit.lower()] if unit else bare_number_unit
        return int(float(number) * multiplier)
    raise ConfigError(f"{key}: expected a size such as 20GB or 500MiB, got {type(value).__name__} {value!r}")
