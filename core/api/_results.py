"""The results the API returns: one class per analysis, sharing ``Result``'s face.

Every result has ``to_json()`` (the CLI's ``--json`` payload for a live run; ``horizon report
--json``'s view of the analysis for stored results), ``to_pandas()`` (the analysis's Parquet table,
long format, built by its registry module: core/analyses), ``figure()`` (a matplotlib Figure of
the seeds' plot, through tui/figures/plots.py) and a readable repr (Rich and HTML). ``report`` is
the engine's own result type (core/analyses: NormsReport, ScanResult, TruncationReport ...).
"""

from __future__ import annotations

import copy
import html
import importlib
import warnings
from typing import TYPE_CHECKING, Any, ClassVar, cast

from horizon.core.errors import HorizonError

if TYPE_CHECKING:
    import pandas
    import pyarrow as pa
    from horizon.core.sources.compare import FigureInput
    from matplotlib.figure import Figure


class Result:
    """What every result can do; subclasses give their JSON, their table and their figure input."""

    analysis: ClassVar[str] = ""
    figures: ClassVar[tuple[str, ...]] = ()  # tui/figures/plots.py ids this result draws, the first by default

    def __init__(self, report: Any, payload: dict[str, Any], label: str) -> None:
        self.report = report
        self._payload = payload
        self.label = label

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values (a copy): the CLI's ``--json`` output for the same inputs."""
        return copy.deepcopy(self._payload)

    def to_arrow(self) -> pa.Table:
        """The analysis's table (the columns and types of its Parquet table in a results directory)."""
        raise HorizonError(f"{type(self).__name__} has no table")

    def to_pandas(self) -> pandas.DataFrame:
        """``to_arrow()`` as a pandas DataFrame (long format: one row per prompt, layer, ...)."""
        try:
            import pandas  # noqa: F401  (pyarrow's to_pandas needs it)
        except ImportError:
            raise HorizonError("to_pandas needs pandas: pip install pandas") from None
        return self.to_arrow().to_pandas()

    def figure_input(self) -> FigureInput:
        raise HorizonError(f"{type(self).__name__} has no figure")

    def figure(self, name: str | None = None) -> Figure:
        """The seeds' plot of this result (``name``: one of ``figures``; default the first) as a matplotlib
        Figure. Needs the ``figures`` extra (matplotlib)."""
        if not self.figures:
            raise HorizonError(f"{type(self).__name__} has no figure")
        name = name or self.figures[0]
        if name not in self.figures:
            raise HorizonError(f"figure {name!r}: this result draws {', '.join(self.figures)}")
        try:
            plots = importlib.import_module("horizon.tui.figures.plots")  # matplotlib: the figures extra
        except ImportError:
            raise HorizonError("figures need matplotlib: pip install 'horizon-inspector[figures]'") from None
        function, overlaid, need = plots.PLOTS[name]
        item = self.figure_input()
        if not plots.has_data(item, need):
            raise HorizonError(f"figure {name!r} needs {need}, which this result does not hold")
        with warnings.catch_warnings():
            plots.quiet_warnings()
            return cast("Figure", function([item]) if overlaid else function(item))  # plots is imported by name

    # ------------------------------------------------------------------------- repr

    def summary(self) -> list[str]:
        """A few lines that say what the result holds."""
        return []

    def _title(self) -> str:
        return f"{type(self).__name__} of {self.label}"

    def __repr__(self) -> str:
        return "\n".join([f"<{self._title()}>", *(f"  {line}" for line in self.summary())])

    def __rich__(self) -> Any:
        from rich.panel import Panel
        from rich.text import Text

        return Panel(Text("\n".join(self.summary())), title=Text(self._title()), title_align="left", expand=False)

    def _repr_html_(self) -> str:
        lines = "".join(f"<li>{html.escape(line)}</li>" for line in self.summary())
        return f"<div><strong>{html.escape(self._title())}</strong><ul>{lines}</ul></div>"


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class Norms(Result):
    """``Model.norms``: a NormsReport (``report``), its tokens, and with ``weights=True`` the weight section."""

    analysis = "norms"
    figures = ("fig01-norm-growth", "fig02-norm-distribution", "fig03-position-norms", "fig04-sublayer-norms",
               "fig05-weights", "fig06-mlp-random")

    def __init__(self, report: Any, payload: dict[str, Any], label: str, token_ids: list[list[int]],
                 tokens: list[list[str]], weights: dict[str, Any] | None = None) -> None:
        super().__init__(report, payload, label)
        self.token_ids, self.tokens, self.weights = token_ids, tokens, weights

    def to_arrow(self) -> pa.Table:
        from horizon.core.analyses.norms import report_table

        return report_table(self.report, list(range(len(self.token_ids))), self.token_ids, self.tokens)

    def figure_input(self) -> FigureInput:
        from horizon.core.sources.compare import live_figure_input

        return live_figure_input(self.label, report=self.report, tokens=self.tokens, weights=self.weights)

    def summary(self) -> list[str]:
        growth = self.report.growth
        return [f"{len(self.token_ids)} prompt(s), {self.report.n_positions} positions in the statistics",
                f"growth: {growth.describe()}"]


class Patch(Result):
    """``Model.patch``: a PatchResult (``report``): one enforced horizon against the clean run."""

    analysis = "patch"

    def to_arrow(self) -> pa.Table:
        """Per next-token prediction: prompt, position, the clean and patched losses and the KL."""
        import pyarrow as pa

        per_token = self.report.per_token
        rows = [{"prompt": prompt, "position": position, **{name: values[prompt][position]
                                                            for name, values in per_token.items()}}
                for prompt in range(len(per_token["kl"])) for position in range(len(per_token["kl"][prompt]))]
        return pa.Table.from_pylist(rows)

    def summary(self) -> list[str]:
        result = self.report
        return [f"k = {self._payload['k']} {self._payload['unit']}(s), K = {self._payload['K']} sublayers",
                f"loss {_number(result.loss_clean)} -> {_number(result.loss_patched)} "
                f"(delta {result.delta_loss:+.3f} nats), KL {_number(result.kl, 4)}, "
                f"top-1 agreement {result.top1_agreement:.1%}"]


class Scan(Result):
    """``Model.scan``: a ScanResult (``report``) and, with ``by_layer=True``, the ByLayerResult (``by_layer``)."""

    analysis = "scan"
    figures = ("fig07-loss-vs-k", "fig08-layer-k-matrix")

    def __init__(self, report: Any, payload: dict[str, Any], label: str, by_layer: Any = None) -> None:
        super().__init__(report, payload, label)
        self.by_layer = by_layer

    def to_arrow(self) -> pa.Table:
        """The scan table's rows (with the layer x k matrix's, only_layer >= 0, when scanned by layer).
        One row set per prompt: the table of a single prompt's scan."""
        from horizon.core.analyses.scan import result_table

        if self._payload["n_prompts"] != 1:
            raise HorizonError(f"the scan table holds one row set per prompt, and this scan averages "
                               f"{self._payload['n_prompts']} prompts: scan each prompt on its own, or use "
                               "horizon.sweep")
        return result_table([0], [(self.report, self.by_layer)])

    def figure_input(self) -> FigureInput:
        from horizon.core.sources.compare import live_figure_input

        figure = live_figure_input(self.label, scan=self.report, ablation=self._payload["ablation"])
        if self.by_layer is not None:
            figure.scan = {**(figure.scan or {}), "by_layer": {"layers": list(self.by_layer.layers),
                                                               "ks": list(self.by_layer.ks),
                                                               "delta_loss": self.by_layer.delta_loss}}
        figure.n_layers = self._payload.get("n_layers") or figure.n_layers
        return figure

    def summary(self) -> list[str]:
        horizons = ", ".join(f"start layer {start}: {'none' if k is None else k}"
                             for start, k in self.report.effective_horizon.items())
        return [f"clean loss {_number(self.report.loss_clean)} nats over {self.report.n_tokens} predictions",
                f"{len(self.report.rows)} rows; effective horizon (k in {self.report.unit}s at tol "
                f"{self.report.tol:g}): {horizons}"]


class Truncation(Result):
    """``Model.truncate``: a TruncationReport (``report``)."""

    analysis = "truncate"
    figures = ("fig09-cosine", "fig10-categories")

    def __init__(self, report: Any, payload: dict[str, Any], label: str, n_prompts: int) -> None:
        super().__init__(report, payload, label)
        self.n_prompts = n_prompts

    def to_arrow(self) -> pa.Table:
        from horizon.core.analyses.truncate import report_table

        return report_table(self.report, list(range(self.n_prompts)))

    def figure_input(self) -> FigureInput:
        from horizon.core.sources.compare import live_figure_input

        return live_figure_input(self.label, truncation=self.report)

    def summary(self) -> list[str]:
        last = {c: _number(self.report.median_cos[c][-1]) for c in self.report.lengths}
        return [f"{len(self.report.record_token)} truncated prompts at lengths {list(self.report.lengths)}",
                "median cosine at the final row: " + ", ".join(f"c={c}: {value}" for c, value in last.items())]


class Attention(Result):
    """``Model.attention``: an AttentionReport (``report``)."""

    analysis = "attention"
    figures = ("fig11-attention-distance",)

    def __init__(self, report: Any, payload: dict[str, Any], label: str, n_prompts: int) -> None:
        super().__init__(report, payload, label)
        self.n_prompts = n_prompts

    def to_arrow(self) -> pa.Table:
        """The attention table's rows (one per layer and head) of a single prompt's report."""
        from horizon.core.analyses.attention import report_rows

        if self.n_prompts != 1:
            raise HorizonError("the attention table holds one row set per prompt, and this report averages "
                               f"{self.n_prompts} prompts: run each prompt on its own, or use horizon.sweep")
        return report_rows(self.report, 0)

    def figure_input(self) -> FigureInput:
        from horizon.core.sources.compare import live_figure_input

        return live_figure_input(self.label, attention=self.report)

    def summary(self) -> list[str]:
        ranked = self.report.ranked(no_bos=True)
        layer, head, distance = ranked[0]
        return [f"{self.report.n_layers} layers x {self.report.n_heads} heads, {self.report.n_queries} queries",
                f"most local head: layer {self.report.layer_label(layer)} head {head} "
                f"(mean distance {distance:.2f})"]
