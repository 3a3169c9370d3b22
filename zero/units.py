"""Sizes as people write them in config.yml and on the command line."""

from __future__ import annotations

import re
from typing import Any

from zero.errors import ConfigError

# As rclone has it: K, M, G, T, P are powers of 1024, and so are KB/MB/GB and
# KiB/MiB/GiB spelled out: one meaning per letter (docs/decisions.md).
_SIZE_UNITS = {"": 1, "b": 1}
for _power, _letter in enumerate("kmgtp", start=1):
    for _spelling in (_letter, _letter + "b", _letter + "i", _letter + "ib"):
        _SIZE_UNITS[_spelling] = 1024**_power
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
                f"{key}: unknown unit {unit!r} in {value!r}; use B, K, M, G, T (powers of 1024; KiB or KB too)"
            )
        multiplier = _SIZE_UNITS[unit.lower()] if unit else bare_number_unit
        return int(float(number) * multiplier)
    raise ConfigError(f"{key}: expected a size such as 20GB or 500MiB, got {type(value).__name__} {value!r}")


_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(key: str, value: Any, minimum: float = 0.0) -> float:
    """Seconds from a number (seconds) or text like "500ms", "10s", "5m", "1h", "1d" (rclone's spellings);
    "1h30m" too."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration such as 10s, 5m or 1h, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)", value)
        if not parts or re.sub(r"[0-9.\s]|[a-zA-Z]", "", value) or "".join(n + u for n, u in parts) != \
                re.sub(r"\s", "", value):
            raise ConfigError(f"{key}: {value!r} is not a duration; write it like 10s, 5m, 1h or 1h30m")
        seconds = 0.0
        for number, unit in parts:
            if unit.lower() not in _DURATION_UNITS:
                raise ConfigError(f"{key}: unknown unit {unit!r} in {value!r}; use ms, s, m, h or d")
            seconds += float(number) * _DURATION_UNITS[unit.lower()]
    else:
        raise ConfigError(f"{key}: expected a duration such as 10s, 5m or 1h, got {type(value).__name__} {value!r}")
    if seconds < minimum:
        raise ConfigError(f"{key}: must be at least {minimum:g}s (got {value!r})")
    return seconds
