"""Publication figures of the seeds' plots (matplotlib, the optional ``figures`` extra).

Presentation only: every number drawn comes from core (the corpus views of a results directory,
the engines' result types of a live run, ``core/compare.py``); nothing here computes an analysis.
``FIGURES`` names them without importing matplotlib; ``horizon.tui.figures.plots`` holds one
function per figure (each returns a matplotlib Figure), ``horizon.tui.figures.export`` writes them
(``save_figure`` for one, as the app would; ``export`` for a set, with an ``index.html``).
"""

from __future__ import annotations

# id -> (title, what it needs). The ids are the file names' stems.
FIGURES: dict[str, tuple[str, str]] = {
    "fig01-norm-growth": ("Mean resid_pre norm per layer, with the fitted growth rate", "norms"),
    "fig02-norm-distribution": ("Distribution of resid_pre norms per layer", "per-position norms"),
    "fig03-position-norms": ("resid_pre norm per position, one prompt", "per-position norms"),
    "fig04-sublayer-norms": ("attn_out and mlp_out norms beside the residual stream", "norms"),
    "fig05-weights": ("Per-head ||W_OV||_F, ||b_O|| and attn_out per layer", "a live model (weights)"),
    "fig06-mlp-random": ("MLP output on random inputs and neuron activation rates", "a live model (weights)"),
    "fig07-loss-vs-k": ("Loss against the enforced horizon k", "scan"),
    "fig08-layer-k-matrix": ("Loss increase, layer x k", "scan --by-layer"),
    "fig09-cosine": ("Median mean-centred cosine per layer, per truncation length", "truncate"),
    "fig10-categories": ("Median cosine per token category", "truncate"),
    "fig11-attention-distance": ("Mean attention distance, layers x heads", "attention"),
    "fig12-horizon-vs-depth": ("Effective horizon against depth, over models", "scan"),
    "fig13-horizon-vs-growth": ("Effective horizon against norm growth rate, over models",
                                "norms and scan"),
    "fig14-cosine-drop-vs-depth": ("Relative depth where the median cosine first falls below a level, over models",
                                   "truncate"),
}

FORMATS = ("svg", "png", "pdf")
X_AXES = ("layer", "depth")
