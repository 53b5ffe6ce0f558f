"""`horizon compare`: one table across results directories, and the overlaid figures (no model, no torch)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from horizon.core.errors import HorizonError
from horizon.tui.cli.app import app
from horizon.tui.cli.common import JsonOpt, console, emit, warn
from horizon.tui.format import number

XOpt = Annotated[str, typer.Option("--x", help="x-axis of the overlaid figures: layer | depth (layer / L).")]
FormatOpt = Annotated[str, typer.Option("--format", help="Figure format: svg | png | pdf.")]


def figures_module() -> Any:
    """The figures package, or one line saying how to install matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise HorizonError("figures need matplotlib: install the figures extra (pip install -e '.[figures]', "
                           "which make install does)") from None
    from horizon.tui.figures import export

    return export


def _cell_horizon(horizons: dict[str, dict[str, Any]] | None) -> str:
    if not horizons:
        return "-"
    return "; ".join(f"{ablation}: " + ", ".join(f"S{start}={'>' if k is None else k}" for start, k in by_start.items())
                     for ablation, by_start in horizons.items())


def _render(table: dict[str, Any]) -> None:
    """The tables; every string in ``table`` is already markup-safe (``sanitize(..., markup=True)``)."""
    from rich.table import Table

    models = Table(title="models compared", title_justify="left")
    for column in ("model", "L", "d_model", "rate", "fit", "r\u00b2", "BOS/mean", "horizon", "corpus", "differs"):
        models.add_column(column, justify="left" if column in ("model", "corpus", "differs", "eff. horizon")
                          else "right")
    cosines = Table(title="median mean-centred cosine (truncated to c tokens)", title_justify="left")
    for column in ("model", "c", "early", "middle", "final"):
        cosines.add_column(column, justify="left" if column == "model" else "right")
    heads = Table(title="heads by mean attention distance, BOS removed (layer, head: distance)", title_justify="left")
    for column in ("model", "most local", "most long-range"):
        heads.add_column(column)
    for row in table["models"]:
        label = row["label"]
        corpus = row["corpus"] or {}
        models.add_row(
            label, str(row["n_layers"]), str(row["d_model"]), number(row["growth_rate"], 3),
            "-" if not row["fit_window"] else f"{row['fit_window'][0]}-{row['fit_window'][1]}",
            number(row["r2"], 2),
            "-" if row["bos_norm_ratio"] is None
            else f"{number(row['bos_norm_ratio'], 3)} @{row['bos_norm_ratio_layer']}",
            _cell_horizon(row["effective_horizon"]),
            f"{corpus.get('name')} ({corpus.get('n_prompts')})",
            "yes" if row["settings_differ"] else "-",
        )
        layers = row["cosine_layers"] or {}
        for c, values in (row["median_cosine"] or {}).items():
            cosines.add_row(label, str(c), *(f"{number(values[where], 3)} (row {layers.get(where)})"
                                              for where in ("early", "middle", "final")))
        if row["most_local_heads"] is not None:
            heads.add_row(label, *(", ".join(f"{e['layer']},{e['head']}: {number(e['mean_distance'], 1)}"
                                             for e in entries or []) or "-"
                                   for entries in (row["most_local_heads"], row["most_long_range_heads"])))
    console.print(models)
    if cosines.row_count:
        console.print(cosines)
    if heads.row_count:
        console.print(heads)


def build_figures(export: Any, loaded: list[Any], live: list[Any], x: str,
                  only: tuple[str, ...] | None = None) -> tuple[list[Any], list[Any]]:
    """Every figure of the directories (and live runs), drawn from their views.

    A stored views cache that cannot be drawn (crafted, or of an older shape) is replaced by the
    views computed from the tables, and the figures drawn again from those.
    """
    from horizon.core.sources import compare

    failed: list[str] = []
    inputs = [compare.figure_input(item) for item in loaded] + live
    figures, skipped = export.build(inputs, x=x, only=only, failed=failed)
    redo = [item for item in loaded if item.label in failed]
    if not redo:
        return figures, skipped
    for item in redo:
        compare.recompute_views(item, "drawn")
    inputs = [compare.figure_input(item) for item in loaded] + live
    return export.build(inputs, x=x, only=only)


@app.command("compare")
def compare_command(
    directories: Annotated[list[str], typer.Argument(help="Results directories written by horizon sweep.")],
    as_json: JsonOpt = False,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Also write the overlaid figures here.")] = None,
    x: XOpt = "layer",
    fmt: FormatOpt = "svg",
) -> None:
    """One table across results directories (growth, BOS, horizons, cosines, heads), and the overlaid figures."""
    from horizon.core.sources import compare
    from horizon.tui.cli.sweep_cmd import sanitize
    from horizon.tui.figures import FORMATS, X_AXES

    if x not in X_AXES:
        raise HorizonError(f"--x {x!r}: choose one of {', '.join(X_AXES)}")
    if fmt not in FORMATS:
        raise HorizonError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    export = figures_module() if out is not None else None
    loaded = compare.load_all(directories)
    written: list[Any] = []
    if export is not None:
        from horizon.tui.figures.plots import COMPARE_FIGURES

        figures, skipped = build_figures(export, loaded, [], x, COMPARE_FIGURES)
        written = export.export(figures, skipped, out, fmt, heading="horizon compare")
    table = sanitize(compare.compare(loaded))
    if written:
        table["figures"] = [str(path) for path in written]
    emit(as_json, table, lambda: _render(sanitize(table, markup=True)))
    for line in table["warnings"]:
        warn(line)
    if written and not as_json:
        console.print(f"{len(written) - 1} figure(s) and index.html written to {written[-1].parent}",
                      markup=False, highlight=False)
