"""The attention analysis's result type: per layer and head, mean attention distance and bucket masses
(engine.py computes an AttentionReport; table.py rebuilds one from the rows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

BUCKETS: tuple[str, ...] = ("0", "1-5", "6-10", ">10")


@dataclass
class AttentionReport:
    """Per layer and head: mean attention distance and bucket masses, with and without BOS."""

    model: str
    token_ids: list[list[int]]
    n_layers: int
    n_heads: int
    has_bos: bool
    n_queries: int
    mean_distance: np.ndarray  # [layer, head]
    mean_distance_no_bos: np.ndarray
    mass: dict[str, np.ndarray]  # bucket -> [layer, head]
    mass_no_bos: dict[str, np.ndarray]
    # Per layer: the sliding-window size of a local-attention layer, None for a global one
    # (Gemma 3: 15 windowed layers, 3 global); empty when unknown (a stored sweep).
    windows: list[int | None] = field(default_factory=list)

    def layer_label(self, layer: int) -> str:
        """``layer``, marked ``global`` or ``w<size>`` when the model mixes windowed and global layers."""
        if len(set(self.windows)) < 2:
            return str(layer)
        window = self.windows[layer]
        return f"{layer} {'global' if window is None else f'w{window}'}"

    def ranked(self, no_bos: bool = True) -> list[tuple[int, int, float]]:
        """(layer, head, mean distance) from the most local head to the most long-range one."""
        values = self.mean_distance_no_bos if no_bos else self.mean_distance
        flat = [(layer, head, float(values[layer, head]))
                for layer in range(self.n_layers) for head in range(self.n_heads)]
        return sorted(flat, key=lambda item: (np.nan_to_num(item[2], nan=np.inf), item[0], item[1]))

    def to_json(self) -> dict[str, Any]:
        """The issue's JSON keys except ``model`` and ``token_ids`` (the command adds those)."""
        return {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "mean_distance": self.mean_distance.tolist(),
            "mean_distance_no_bos": self.mean_distance_no_bos.tolist(),
            "mass": {bucket: values.tolist() for bucket, values in self.mass.items()},
            "mass_no_bos": {bucket: values.tolist() for bucket, values in self.mass_no_bos.items()},
            "sliding_window": list(self.windows),
        }
