"""One check per command-line option, shared by every command (and the sweep's settings).

Each ``check_*`` raises a HorizonError whose message names the option, or returns the value
(normalised where that helps). Checks that need the model (layer counts, context length) take
it as an argument and run right after the load; everything else runs before it, so a bad flag
never waits for a model. New options get their check here, next to the others.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from horizon.core.errors import HorizonError

# ----------------------------------------------------------------------------- plain numbers


def check_at_least(value: int | None, option: str, minimum: int) -> int | None:
    """An integer option with a lower bound (None: not given)."""
    if value is not None and value < minimum:
        raise HorizonError(f"{option} must be at least {minimum}, got {value}")
    return value


def check_count(value: int, option: str) -> int:
    """How many items to list (--outliers, --top): 0 lists none."""
    if value < 0:
        raise HorizonError(f"{option} must be >= 0, got {value}")
    return value


def check_batch_size(value: int, option: str = "--batch-size") -> int:
    check_at_least(value, option, 1)
    return value


def check_batch_size_text(text: str | int, option: str = "--batch-size") -> int | None:
    """--batch-size auto|N: None (chosen from the memory budget) or an integer >= 1."""
    if isinstance(text, int):
        return check_batch_size(text, option)
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise HorizonError(f"{option} takes auto or an integer >= 1, got {text!r}") from None
    return check_batch_size(value, option)


def check_max_memory(text: str) -> int | None:
    """--max-memory SIZE|auto: bytes (2GB, 512MiB, 1.5G), None for auto (a safe share of what is free)."""
    from horizon.core.memory.budget import parse_size

    return parse_size(text)


def check_tol(tol: float) -> float:
    """The effective horizon's tolerance in nats: a finite number >= 0 (NaN would never compare equal)."""
    if not isinstance(tol, int | float) or not math.isfinite(tol) or tol < 0:
        raise HorizonError(f"--tol must be a number >= 0 (and finite), got {tol}")
    return float(tol)


def check_max_tokens(value: int | None, option: str = "--max-tokens") -> int | None:
    """The token cap of every command (--max-tokens; --truncate-to is its old, hidden name)."""
    if value is not None and value < 2:
        raise HorizonError(f"{option} must be at least 2 (BOS and one token)")
    return value


def check_truncate_to(value: int | None) -> int | None:
    """The single-prompt commands' token cap: the same --max-tokens check (the old name)."""
    return check_max_tokens(value)


def parse_int_list(text: str, option: str, minimum: int = 0) -> list[int]:
    """'1,5,10' -> [1, 5, 10] with a clear error naming the option."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise HorizonError(f"{option} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise HorizonError(f"{option} is empty")
    if any(value < minimum for value in values):
        raise HorizonError(f"{option} values must be >= {minimum}, got {text!r}")
    return values


# ----------------------------------------------------------------------------- against the model


def max_k(n_layers: int, unit: str = "layer") -> int:
    """The largest useful horizon: k = L+1 layers (K = 2L+2) or 2L+1 sublayers, the clean model."""
    return n_layers + 1 if unit == "layer" else 2 * n_layers + 1


def check_k(k: int, n_layers: int | None = None, unit: str = "layer", option: str = "--k") -> int:
    """A horizon k >= 1, and (once the model is known) at most the one that is the clean model."""
    if k < 1:
        raise HorizonError(f"{option} must be at least 1, got {k}")
    if n_layers is not None and k > max_k(n_layers, unit):
        raise HorizonError(f"{option} {k} is out of range: this model has {n_layers} layers, so k runs "
                           f"1..{max_k(n_layers, unit)} in {unit}s (the last is already the clean model)")
    return k


def check_ks(ks: Sequence[int] | None, n_layers: int | None = None, unit: str = "layer") -> list[int] | None:
    if ks is None:
        return None
    for k in ks:
        check_k(k, n_layers, unit, option="--ks")
    return list(ks)


def check_start_layer(value: int, n_layers: int | None = None, option: str = "--start-layer") -> int:
    """A start layer S in 0..L (the final readout counts as layer L)."""
    if value < 0:
        raise HorizonError(f"{option}: the start layer must be >= 0, got {value}")
    if n_layers is not None and value > n_layers:
        raise HorizonError(f"{option} {value} is out of range: this model has {n_layers} layers, so the start "
                           f"layer runs 0..{n_layers} (layer {n_layers} is the final readout)")
    return value


def check_start_layers(values: Sequence[int], n_layers: int | None = None) -> list[int]:
    for value in values:
        check_start_layer(value, n_layers, option="--start-layers")
    return list(values)


def check_layer_row(value: int | None, n_layers: int | None, option: str) -> int | None:
    """A residual row 0..L (L = the final residual), e.g. --outlier-layer."""
    if value is None:
        return None
    if value < 0:
        raise HorizonError(f"{option} must be >= 0, got {value}")
    if n_layers is not None and value > n_layers:
        raise HorizonError(f"{option} must be in 0..{n_layers} (the last is the final residual), got {value}")
    return value


def check_lengths(lengths: Sequence[int], n_ctx: int | None = None, option: str = "--lengths") -> list[int]:
    """Truncation lengths c >= 1; once the context is known, c <= n_ctx - 2 (BOS and one earlier token)."""
    for length in lengths:
        if length < 1:
            raise HorizonError(f"{option} values must be >= 1, got {length}")
        if n_ctx is not None and length > n_ctx - 2:
            raise HorizonError(f"{option} {length} is out of range: a prompt holds at most {n_ctx} tokens here, so "
                               f"a truncation length runs 1..{n_ctx - 2} (BOS and one earlier token come first)")
    return list(lengths)


# ----------------------------------------------------------------------------- placement

DEVICE_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE = re.compile(r"^(cpu|mps|meta|(cuda|xpu|npu)(:\d+)?|\d+)$")


def check_device_map(value: str | None) -> str | None:
    """--device-map: an accelerate strategy (auto, balanced, ...) or one device (cpu, cuda, cuda:1)."""
    if value is None:
        return None
    if value in DEVICE_MAP_NAMES:
        return value
    if not _DEVICE.match(value):
        raise HorizonError(f"--device-map {value!r} is neither a placement strategy ({', '.join(DEVICE_MAP_NAMES)}) "
                           "nor a device (cpu, cuda, cuda:N)")
    if value.startswith("cuda") or value.isdigit():
        import torch

        index = int(value.split(":")[1]) if ":" in value else int(value) if value.isdigit() else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise HorizonError(f"--device-map {value}: torch sees {torch.cuda.device_count()} CUDA device(s) here")
    return value


def check_n_devices(value: int | None) -> int | None:
    return check_at_least(value, "--n-devices", 1)


# ----------------------------------------------------------------------------- horizon: choices, ablation, one layer

SOURCES = ("recursive", "clean")
FINALS = ("window", "full")
UNITS = ("layer", "sublayer")


def check_horizon_choices(unit: str, source: str, final: str) -> None:
    """--unit, --source and --final of patch and scan."""
    for value, choices, option in ((unit, UNITS, "--unit"), (source, SOURCES, "--source"), (final, FINALS, "--final")):
        if value not in choices:
            raise HorizonError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


def parse_fit(text: str | None) -> tuple[int, int] | None:
    """--fit '12:29' -> (12, 29), an inclusive layer window; checked against L after loading (``check_fit``)."""
    if text is None:
        return None
    parts = text.split(":")
    if len(parts) != 2:
        raise HorizonError(f"--fit takes A:B (two layer indices), got {text!r}")
    try:
        start, stop = int(parts[0]), int(parts[1])
    except ValueError:
        raise HorizonError(f"--fit takes integer layers A:B, got {text!r}") from None
    if start < 0 or stop <= start:
        raise HorizonError(f"--fit {text} is not a window: it needs 0 <= A < B")
    return start, stop


def check_fit(text: str | None, window: tuple[int, int] | None, n_layers: int) -> None:
    """--fit's window against the model: its last layer at most L (the final residual)."""
    if window is not None and window[1] > n_layers:
        raise HorizonError(f"--fit {text} is out of range: layers run 0..{n_layers - 1}, and {n_layers} is the final "
                           "residual")

ABLATIONS = ("zero", "mean")
DEFAULT_LENGTHS = (1, 5, 10)  # the truncation lengths c of the CLI, the app, a sweep and the API


def check_ablation(value: str) -> str:
    """--ablation: outputs outside the window count as zero, or as their clean means."""
    if value not in ABLATIONS:
        raise HorizonError(f"--ablation must be one of {', '.join(ABLATIONS)}, got {value!r}")
    return value


def check_only_layer(text: str | None, n_layers: int | None = None, start_layer_given: bool = False) -> int | None:
    """--only-layer N|final: the layer (0..L; final = L, the readout) whose readers alone get the horizon.

    Before the load (``n_layers`` None) only its form and its exclusivity with --start-layer are
    checked; after it, the layer is returned (None: not given).
    """
    if text is None:
        return None
    if start_layer_given:
        raise HorizonError("--only-layer and --start-layer are exclusive: give one of them")
    if text.strip().lower() == "final":
        return n_layers
    try:
        value = int(text)
    except ValueError:
        raise HorizonError(f"--only-layer takes a layer number or 'final', got {text!r}") from None
    if value < 0:
        raise HorizonError(f"--only-layer must be >= 0, got {value}")
    if n_layers is not None and value > n_layers:
        raise HorizonError(f"--only-layer {value} is out of range: this model has {n_layers} layers, so it runs "
                           f"0..{n_layers} (or final; layer {n_layers} is the final readout)")
    return value
