"""Values read from a stored corpus view, which may come from someone else: a finite number, an
integer, a JSON object, or None (or {}) for anything else.
"""

from __future__ import annotations

import math
from typing import Any


def _finite(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mapping(value: Any) -> dict[str, Any]:
    """A stored JSON object, or {} for anything else (a views file may come from someone else)."""
    return value if isinstance(value, dict) else {}
