"""Sizes in bytes for people: ``--max-memory``'s argument read (``parse_size``) and bytes written (``format_size``).

KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB and bare K/M/G/T powers of 1024; "auto" is None (the
budget is then chosen from the device's free memory, core/memory/device_budget.py). Part of the memory
budget, whose public face is core/memory/budget.py.
"""

from __future__ import annotations

import re

from horizon.core.errors import HorizonError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int | None:
    """'2GB' -> 2e9 bytes, '512MiB' -> 512 * 2**20, '1.5G' -> 1.5 * 2**30, 'auto' -> None."""
    if text.strip().lower() == "auto":
        return None
    match = _SIZE.match(text)
    if match is None:
        raise HorizonError(f"--max-memory takes a size such as 2GB, 512MiB or 1.5G (or auto), got {text!r}")
    number, prefix, binary, byte = match.groups()
    if binary and not prefix:
        raise HorizonError(f"--max-memory takes a size such as 2GB, 512MiB or 1.5G (or auto), got {text!r}")
    decimal = bool(byte) and not binary and bool(prefix)  # KB, MB, GB: powers of 1000
    base = 1000 if decimal else 1024
    value = int(float(number) * base ** _POWERS[prefix.lower()])
    if value <= 0:
        raise HorizonError(f"--max-memory must be more than 0 bytes, got {text!r}")
    return value


def format_size(n_bytes: float) -> str:
    """Bytes for people: '1.3 GB', '512 MB', '12 KB' (powers of 1000)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n_bytes) >= scale:
            value = n_bytes / scale
            digits = 2 if value < 10 else 1 if value < 100 else 0
            return f"{value:.{digits}f} {unit}"
    return f"{int(n_bytes)} B"
