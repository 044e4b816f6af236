"""Small helpers shared by the zoo families (argument checks)."""

from __future__ import annotations

from typing import Any, Collection, Optional

# Depth-like arguments set how many modules a factory builds one by one in Python: a bound keeps a
# typo or a forged file (depth=2**31) from hanging the build long before any memory runs out.
MAX_DEPTH = 10_000


def check_int(name: str, value: Any, *, minimum: int = 1, maximum: Optional[int] = None,
              choices: Optional[Collection[int]] = None) -> int:
    """Return ``value`` if it is an int in [``minimum``, ``maximum``] (and in ``choices``); else ValueError."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an int <= {maximum}, got {value!r}")
    if choices is not None and value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_prob(name: str, value: Any) -> float:
    """Return ``value`` as float if it is a probability in [0, 1), else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    return float(value)
