"""An analysis added from the test suite, touching no module of the package: "peak", per prompt and
layer the largest resid_pre norm over the prompt's positions (BOS excluded, as in every statistic of
docs/SCIENCE.md s.2) and the position where it is.

Everything an analysis brings lives here: the result type and its store side (this module: SCHEMA,
rows, view, report_from_rows, the cost model and the registry entry ``ANALYSIS``), the engine
(engine.py, hooks through core/capture/), the renderer of its view (render.py), its single-prompt
command (command.py), its app pane (pane.py) and the hooks that give the app's sources its result
(``live``, ``stored``). tests/test_added_analysis.py adds it with one ``register`` call and sees it
through the CLI, the sweep, ``--plan``, ``report``, the results session and the app's tab 8. Nothing here imports torch
at import time: the engine is imported inside ``rows`` and the command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from horizon.core.analyses.base import Analysis, column
from horizon.core.memory import budget

if TYPE_CHECKING:
    from horizon.core.results.store import Results
    from horizon.core.run.runner import Runner

NAME = "peak"
SITE = "resid_pre"
SCHEMA = {"prompt": pa.int32(), "layer": pa.int16(), "position": pa.int32(), "token": pa.string(),
          "peak_norm": pa.float64()}


@dataclass
class PeakReport:
    """``peak[p, l]``: the largest resid_pre norm of prompt p at layer l over its positions (BOS excluded
    when it has one); ``position[p, l]``: where it is (positions count BOS as 0)."""

    n_layers: int
    has_bos: bool
    peak: np.ndarray  # [prompts, layers] float64
    position: np.ndarray  # [prompts, layers] int

    def to_json(self) -> dict[str, Any]:
        return {"site": SITE, "n_layers": self.n_layers, "bos_excluded": self.has_bos,
                "peak_norm": self.peak.tolist(), "position": self.position.astype(int).tolist()}


def rows(worker: Any, indices: list[int], token_ids: list[list[int]], tokens: list[list[str]]) -> pa.Table:
    """One shard's rows: one per prompt (numbered by ``indices``) and layer, under the worker's memory plan."""
    from tests.added_analysis.engine import peak_norms

    plan = worker.plan(NAME, token_ids)
    report = peak_norms(worker.model, token_ids, worker.settings.bos, batch_size=plan.batch_size)
    n_prompts, n_layers = report.peak.shape
    positions = report.position.reshape(-1)
    prompt_rows = np.repeat(np.arange(n_prompts), n_layers)
    return pa.table({
        "prompt": pa.array(np.repeat(np.asarray(indices), n_layers), pa.int32()),
        "layer": pa.array(np.tile(np.arange(n_layers), n_prompts), pa.int16()),
        "position": pa.array(positions, pa.int32()),
        "token": pa.array([tokens[row][position] for row, position in zip(prompt_rows, positions, strict=True)],
                          pa.string()),
        "peak_norm": pa.array(report.peak.reshape(-1), pa.float64()),
    })


def view(results: Results, table: pa.Table, manifest: dict[str, Any], has_bos: bool) -> dict[str, Any]:
    """Per layer, the mean over prompts of their peak norm and the largest peak of the corpus."""
    layer = column(table, "layer").astype(np.int64)
    peak = column(table, "peak_norm").astype(np.float64)
    n_layers = int(layer.max()) + 1
    highest = np.full(n_layers, -np.inf)
    np.maximum.at(highest, layer, peak)
    return {
        "n_prompts": len(np.unique(column(table, "prompt"))),
        "n_layers": n_layers,
        "bos_excluded": has_bos,
        "mean_peak_norm": (np.bincount(layer, weights=peak, minlength=n_layers)
                           / np.bincount(layer, minlength=n_layers)).tolist(),
        "max_peak_norm": highest.tolist(),
    }


def report_from_rows(view: dict[str, Any], table: pa.Table, prompt_numbers: list[int]) -> PeakReport:
    """The PeakReport of the stored prompts ``prompt_numbers`` (in that order) from the table's rows."""
    n_layers = int(view["n_layers"])
    prompt, layer = column(table, "prompt"), column(table, "layer").astype(np.int64)
    row_of = {number: row for row, number in enumerate(prompt_numbers)}
    peak = np.full((len(prompt_numbers), n_layers), np.nan)
    position = np.full((len(prompt_numbers), n_layers), -1, dtype=np.int64)
    rows_here = np.array([row_of.get(int(number), -1) for number in prompt])
    kept = rows_here >= 0
    peak[rows_here[kept], layer[kept]] = column(table, "peak_norm")[kept]
    position[rows_here[kept], layer[kept]] = column(table, "position")[kept]
    return PeakReport(n_layers=n_layers, has_bos=bool(view["bos_excluded"]), peak=peak, position=position)


def live(runner: Runner, token_ids: list[list[int]], has_bos: bool) -> PeakReport:
    """The app's live result (``Query.of("peak")``): every prompt's peaks, planned by the runner as the command's."""
    from tests.added_analysis.engine import peak_norms

    plan = runner.plan(NAME, token_ids)
    with runner.lock:  # hooks go on the shared model's modules: one pass at a time
        return peak_norms(runner.model, token_ids, has_bos, batch_size=plan.batch_size)


def stored(results: Results, prompt_numbers: list[int]) -> PeakReport | None:
    """The app's results-mode result: the stored prompts' peaks from the table (None when it holds no rows)."""
    table = results.table(ANALYSIS.table)
    if table is None or table.num_rows == 0:
        return None
    manifest = results.manifest or {}
    has_bos = bool(manifest.get("bos", {}).get("enabled", True))
    return report_from_rows(view(results, table, manifest, has_bos), table, prompt_numbers)


def expected_rows(lengths: list[int], settings: dict[str, Any], model: dict[str, Any]) -> int:
    return len(lengths) * int(model["n_layers"])


def cost_parts(dims: budget.ModelDims, batch: int, n_tokens: int, *, rows: int, windows: int, vocab_tile: int,
               held_tokens: int, position_chunk: int) -> dict[str, int]:
    """A forward pass without logits, plus the hooks' per-position norms (float32) of every layer."""
    parts = budget.forward_parts(dims, batch, n_tokens, logits=False)
    parts["peak norms"] = dims.n_layers * batch * n_tokens * 4
    return parts


ANALYSIS = Analysis(
    name=NAME, table="peak", schema=SCHEMA, rows=rows, view=view,
    settings=lambda settings, n_layers: {"site": SITE, "reduction": "max over positions, BOS excluded"},
    expected_rows=expected_rows, cost=budget.Cost(parts=cost_parts),
    render="tests.added_analysis.render:render_peak", command="tests.added_analysis.command:peak",
    pane="tests.added_analysis.pane:PeakPane", live=live, stored=stored,
)
