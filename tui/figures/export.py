"""Writing figures: one file per figure, a set of them with an ``index.html``, all or nothing.

``save_figure`` writes one figure atomically (what the app's save key calls). ``build`` makes
every figure the inputs allow and names the ones they do not; ``export`` writes them into a
hidden staging folder inside ``--out`` and renames each file into place only when all were
drawn and written, so an error leaves no half-written figure behind.
"""

from __future__ import annotations

import contextlib
import html
import io
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from horizon.core.compare import FigureInput
from horizon.core.errors import HorizonError
from horizon.core.store import WriteError
from horizon.tui.figures import FIGURES, FORMATS, X_AXES, plots

METADATA: dict[str, dict[str, Any]] = {
    # No timestamp (the same numbers give the same file) and no creator line naming the library.
    "svg": {"Date": None, "Creator": None, "Format": None, "Type": None},
    "pdf": {"CreationDate": None, "ModDate": None, "Creator": None, "Producer": None},
    "png": {"Software": None},
}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise HorizonError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return fmt


def check_x(x: str) -> str:
    if x not in X_AXES:
        raise HorizonError(f"--x {x!r}: choose one of {', '.join(X_AXES)}")
    return x


def _write(figure: Any, path: Path, fmt: str) -> None:
    if fmt != "svg":
        figure.savefig(path, format=fmt, metadata=METADATA[fmt])
        return
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, metadata=METADATA[fmt])
    # The DOCTYPE names an external DTD that no viewer needs; the namespaces stay (SVG requires them).
    path.write_bytes(re.sub(rb"<!DOCTYPE[^>]*>\s*", b"", buffer.getvalue(), count=1))


def save_figure(figure: Any, path: str | Path, fmt: str = "svg") -> Path:
    """Write one figure to ``path`` atomically (WriteError names the path and the cause)."""
    from horizon.core.store import atomic_write

    check_format(fmt)
    target = Path(path)
    atomic_write(target, lambda temp: _write(figure, temp, fmt))
    return target


def _suffix(label: str, many: bool) -> str:
    return f"-{plots.gid_part(label)}" if many else ""


def build(inputs: list[FigureInput], x: str = "layer", only: tuple[str, ...] | None = None,
          ) -> tuple[list[tuple[str, str, Any]], list[tuple[str, str]]]:
    """Every figure the inputs allow, as (file stem, title, Figure), and (stem, reason) for the others.

    Overlaid figures draw every input that has their data; the one-model figures are drawn per
    input (the stem ends with the input's label when there are several).
    """
    check_x(x)
    figures: list[tuple[str, str, Any]] = []
    skipped: list[tuple[str, str]] = []
    many = len(inputs) > 1
    for stem, (function, overlay, need) in plots.PLOTS.items():
        if only is not None and stem not in only:
            continue
        title, needs = FIGURES[stem]
        if overlay:
            usable = [item for item in inputs if plots.has_data(item, need)]
            for item in inputs:
                if item not in usable:
                    skipped.append((stem + _suffix(item.label, many), f"{item.label}: needs {needs}"))
            if stem in plots.ACROSS_MODELS and len(usable) < 2:  # one point per model: nothing to relate
                if usable:
                    skipped.append((stem, f"needs two or more models with {needs}"))
                continue
            if usable:
                figures.append((stem, title, function(usable, x=x)))
            continue
        for item in inputs:
            name = stem + _suffix(item.label, many)
            if plots.has_data(item, need):
                figures.append((name, f"{title}: {item.label}", function(item)))
            else:
                skipped.append((name, f"{item.label}: needs {needs}"))
    return figures, skipped


def _index(files: list[tuple[str, str]], skipped: list[tuple[str, str]], fmt: str, heading: str) -> str:
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(heading)}</title>",
             "<style>body{font-family:sans-serif;max-width:70em;margin:auto;padding:1em}"
             "figure{margin:2em 0}img{max-width:100%}figcaption{color:#444}</style>",
             "</head><body>", f"<h1>{html.escape(heading)}</h1>"]
    for name, title in files:
        source = html.escape(name, quote=True)
        body = (f'<object data="{source}" type="application/pdf" width="100%" height="500">{source}</object>'
                if fmt == "pdf" else f'<img src="{source}" alt="{html.escape(title, quote=True)}">')
        parts.append(f"<figure>{body}<figcaption>{html.escape(title)}</figcaption></figure>")
    if skipped:
        parts.append("<h2>Not drawn</h2><ul>")
        parts.extend(f"<li>{html.escape(name)}: {html.escape(reason)}</li>" for name, reason in skipped)
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def export(figures: list[tuple[str, str, Any]], skipped: list[tuple[str, str]], out: str | Path,
           fmt: str = "svg", heading: str = "horizon figures") -> list[Path]:
    """Write ``figures`` and ``index.html`` into ``out`` (created); returns the files written.

    Everything is first written into a staging folder inside ``out``; only then is each file
    renamed into place, so a failure (unwritable place, full disk) leaves ``out`` as it was.
    """
    check_format(fmt)
    root = Path(out).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".figures-", suffix=".tmp", dir=root))
    except OSError as exc:
        raise WriteError(root, exc) from None
    try:
        names: list[tuple[str, str]] = []
        for stem, title, figure in figures:
            name = f"{stem}.{fmt}"
            try:
                _write(figure, staging / name, fmt)
            except OSError as exc:
                raise WriteError(root / name, exc) from None
            names.append((name, title))
        index = staging / "index.html"
        try:
            index.write_text(_index(names, skipped, fmt, heading), encoding="utf-8")
        except OSError as exc:
            raise WriteError(root / "index.html", exc) from None
        written = []
        for name in [*(name for name, _ in names), "index.html"]:
            try:
                os.replace(staging / name, root / name)
            except OSError as exc:
                raise WriteError(root / name, exc) from None
            written.append(root / name)
        return written
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
