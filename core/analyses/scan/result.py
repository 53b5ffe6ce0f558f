"""The scan's result types and their torch-free helpers: the loss-vs-k curve (ScanResult), the layer x k
matrix (ByLayerResult) and the horizons read off them (engine.py computes them; table.py rebuilds them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from horizon.core.errors import HorizonError


@dataclass
class ScanResult:
    """The loss-vs-enforced-horizon curve, one row per (k, start layer)."""

    rows: list[dict[str, Any]]
    effective_horizon: dict[int, int | None]
    loss_clean: float
    tol: float
    n_tokens: int
    unit: str = "layer"


def effective_horizon(rows: Sequence[dict[str, Any]], start_layer: int, tol: float) -> int | None:
    """The smallest k whose loss increase is <= tol, at one start layer (None: no k qualifies)."""
    qualifying = [row["k"] for row in rows if row["start_layer"] == start_layer and row["delta_loss"] <= tol]
    return min(qualifying) if qualifying else None


@dataclass
class ByLayerResult:
    """The per-layer horizon matrix: row N = the horizon enforced at layer N only (N = L: the final readout).

    Every matrix is [L+1][len(ks)]; ``effective_horizon[N]`` is the smallest k of row N whose loss
    increase is <= tol (None: none of the ks).
    """

    layers: list[int]
    ks: list[int]
    loss: list[list[float]]
    delta_loss: list[list[float]]
    kl: list[list[float]]
    top1_agreement: list[list[float]]
    effective_horizon: list[int | None]
    loss_clean: float
    tol: float
    n_tokens: int
    unit: str = "layer"
    ablation: str = "zero"

    def payload(self) -> dict[str, Any]:
        """The ``by_layer`` JSON object of ``horizon scan --by-layer``."""
        return {"layers": self.layers, "ks": self.ks, "delta_loss": self.delta_loss, "kl": self.kl,
                "loss": self.loss, "top1_agreement": self.top1_agreement,
                "effective_horizon": self.effective_horizon, "tol": self.tol}


BY_LAYER_METRICS = ("loss", "delta_loss", "kl", "top1_agreement")


def row_horizons(ks: Sequence[int], delta_loss: Sequence[Sequence[float]], tol: float) -> list[int | None]:
    """Per row of the matrix, the smallest k whose loss increase is <= tol (None: none)."""
    horizons: list[int | None] = []
    for row in delta_loss:
        qualifying = [k for k, value in zip(ks, row, strict=True) if value <= tol]
        horizons.append(min(qualifying) if qualifying else None)
    return horizons


def join_by_layer(parts: Sequence[ByLayerResult]) -> ByLayerResult:
    """One matrix from parts over disjoint ks of the same prompts (columns side by side, ks in order)."""
    first = parts[0]
    columns = sorted((k, index, column) for index, part in enumerate(parts) for column, k in enumerate(part.ks))
    ks = [k for k, _, _ in columns]
    if len(set(ks)) != len(ks):
        raise HorizonError("the parts of a by-layer matrix overlap in k")
    rows = range(len(first.layers))
    matrices = {
        name: [[getattr(parts[index], name)[row][column] for _, index, column in columns] for row in rows]
        for name in BY_LAYER_METRICS
    }
    horizons = row_horizons(ks, matrices["delta_loss"], first.tol)
    return ByLayerResult(layers=first.layers, ks=ks, effective_horizon=horizons, loss_clean=first.loss_clean,
                         tol=first.tol, n_tokens=first.n_tokens, unit=first.unit, ablation=first.ablation, **matrices)
