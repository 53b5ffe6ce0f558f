"""Publication figures of the seeds' plots (matplotlib, the optional ``figures`` extra).

Presentation only: every number drawn comes from core (the corpus views of a results directory,
the engines' result types of a live run, ``core/sources/compare.py``); nothing here computes an analysis.
``TABLE`` declares every figure once, without importing matplotlib: its file stem (``fig07-loss-vs-k``;
its name ``loss_vs_k`` is the drawing function's, in ``plots`` and in ``terminal`` alike), title,
what it needs (in words, and as the ``FigureInput`` field it draws), whether it overlays several
models and whether it is drawn over models (one point per model); ``FIGURES``, ``plots.PLOTS``,
``terminal.NEEDS`` and the Compare screen's list are derived from it. ``horizon.tui.figures.plots``
holds one function per figure (each returns a matplotlib Figure), ``horizon.tui.figures.terminal``
the same figures for the terminal, ``horizon.tui.figures.export`` writes them (``save_figure`` for
one, as the app would; ``export`` for a set, with an ``index.html``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from horizon.core.sources.compare import FigureInput


@dataclass(frozen=True)
class Figure:
    """One figure: its file stem, title, what it needs and how it treats several models."""

    stem: str  # the file name's stem, fig<NN>-<name with dashes>; NN is its number
    title: str
    needs: str  # what it needs, in words (an export's skipped list)
    need: str  # the FigureInput field it draws ("by_layer": scan["by_layer"])
    overlaid: bool = False  # one colour per model on one plot
    across: bool = False  # over models: one point per model (drawn from two or more)
    short: str = ""  # the Compare screen's short title ("" = its name in words)

    @property
    def name(self) -> str:
        """``fig01-norm-growth`` -> ``norm_growth``: the drawing function's name in plots and terminal."""
        return self.stem.split("-", 1)[1].replace("-", "_")

    @property
    def number(self) -> int:
        return int(self.stem[3:5])

    @property
    def label(self) -> str:
        """``(7) loss vs k``: the Compare screen's title of an overlaid figure."""
        return f"({self.number}) {self.short or self.name.replace('_', ' ')}"


TABLE: tuple[Figure, ...] = (
    Figure("fig01-norm-growth", "Mean resid_pre norm per layer, with the fitted growth rate", "norms", "norms",
           overlaid=True),
    Figure("fig02-norm-distribution", "Distribution of resid_pre norms per layer", "per-position norms", "samples"),
    Figure("fig03-position-norms", "resid_pre norm per position, one prompt", "per-position norms", "prompt"),
    Figure("fig04-sublayer-norms", "attn_out and mlp_out norms beside the residual stream", "norms", "norms",
           overlaid=True),
    Figure("fig05-weights", "Per-head ||W_OV||_F, ||b_O|| and attn_out per layer", "a live model (weights)",
           "weights"),
    Figure("fig06-mlp-random", "MLP output on random inputs and neuron activation rates", "a live model (weights)",
           "weights"),
    Figure("fig07-loss-vs-k", "Loss against the enforced horizon k", "scan", "scan", overlaid=True),
    Figure("fig08-layer-k-matrix", "Loss increase, layer x k", "scan --by-layer", "by_layer"),
    Figure("fig09-cosine", "Median mean-centred cosine per layer, per truncation length", "truncate", "truncate",
           overlaid=True, short="cosine per layer"),
    Figure("fig10-categories", "Median cosine per token category", "truncate", "truncate"),
    Figure("fig11-attention-distance", "Mean attention distance, layers x heads", "attention", "attention"),
    Figure("fig12-horizon-vs-depth", "Effective horizon against depth, over models", "scan", "scan",
           overlaid=True, across=True),
    Figure("fig13-horizon-vs-growth", "Effective horizon against norm growth rate, over models", "norms and scan",
           "scan", overlaid=True, across=True),
    Figure("fig14-cosine-drop-vs-depth",
           "Relative depth where the median cosine first falls below a level, over models", "truncate", "truncate",
           overlaid=True, across=True),
)

# id -> (title, what it needs). The ids are the file names' stems.
FIGURES: dict[str, tuple[str, str]] = {figure.stem: (figure.title, figure.needs) for figure in TABLE}
BY_NAME: dict[str, Figure] = {figure.name: figure for figure in TABLE}

FORMATS = ("svg", "png", "pdf")
X_AXES = ("layer", "depth")


def has_input(item: FigureInput, need: str) -> bool:
    """Whether a ``FigureInput`` holds what a figure needs (``Figure.need``)."""
    if need == "by_layer":
        return bool((item.scan or {}).get("by_layer"))
    value = getattr(item, need)
    return value is not None and (not isinstance(value, list | dict) or len(value) > 0)
