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
import json
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO

from horizon.core.errors import HorizonError
from horizon.core.results import confined
from horizon.core.results.store import WriteError
from horizon.core.sources.compare import FigureInput
from horizon.core.untrusted import visible
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


def _write(figure: Any, target: Path | BinaryIO, fmt: str) -> None:
    """Draw ``figure`` into a file path or an open binary file."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        plots.quiet_warnings()
        figure.savefig(buffer, format=fmt, metadata=METADATA[fmt])
    data = buffer.getvalue()
    if fmt == "svg":  # the DOCTYPE names an external DTD that no viewer needs; the namespaces stay (SVG requires them)
        data = re.sub(rb"<!DOCTYPE[^>]*>\s*", b"", data, count=1)
    if isinstance(target, str | Path):
        Path(target).write_bytes(data)
    else:
        target.write(data)


def save_figure(figure: Any, path: str | Path, fmt: str = "svg") -> Path:
    """Write one figure to ``path`` atomically (WriteError names the path and the cause)."""
    from horizon.core.results.store import atomic_write

    check_format(fmt)
    target = Path(path)
    atomic_write(target, lambda handle: _write(figure, handle, fmt))
    return target


def _suffix(label: str, many: bool) -> str:
    return f"-{plots.gid_part(label)}" if many else ""


def build(inputs: list[FigureInput], x: str = "layer", only: tuple[str, ...] | None = None,
          failed: list[str] | None = None) -> tuple[list[tuple[str, str, Any]], list[tuple[str, str]]]:
    """Every figure the inputs allow, as (file stem, title, Figure), and (stem, reason) for the others.

    Overlaid figures draw every input that has their data; the one-model figures are drawn per
    input (the stem ends with the input's label when there are several). ``failed``: inputs may
    hold views read from a cache someone else wrote; a figure that cannot be drawn from one is
    skipped (named in the reasons) and the input's label is added to ``failed``, for the caller to
    draw again from views computed from the tables. Without it, a drawing error is raised.
    """
    check_x(x)
    figures: list[tuple[str, str, Any]] = []
    skipped: list[tuple[str, str]] = []
    many = len(inputs) > 1

    def draw(function: Any, argument: Any, **options: Any) -> Any:
        with warnings.catch_warnings():
            plots.quiet_warnings()
            return function(argument, **options)

    def failing(item: FigureInput, name: str, exc: Exception) -> None:
        if failed is None:
            raise exc
        if item.label not in failed:
            failed.append(item.label)
        skipped.append((name, f"{item.label}: its stored views cannot be drawn ({type(exc).__name__})"))

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
                try:
                    figures.append((stem, title, draw(function, usable, x=x)))
                except Exception:  # one input's views cannot be drawn: find which, draw the others
                    good = []
                    for item in usable:
                        try:
                            draw(function, [item], x=x)
                            good.append(item)
                        except Exception as exc:
                            failing(item, stem + _suffix(item.label, many), exc)
                    if good:
                        figures.append((stem, title, draw(function, good, x=x)))
            continue
        for item in inputs:
            name = stem + _suffix(item.label, many)
            if plots.has_data(item, need):
                try:
                    figures.append((name, f"{title}: {item.label}", draw(function, item)))
                except Exception as exc:
                    failing(item, name, exc)
            else:
                skipped.append((name, f"{item.label}: needs {needs}"))
    return figures, skipped


def _text(value: object, quote: bool = False) -> str:
    """Outside text (a model name, a reason, a title) for the HTML page: control characters made visible, escaped."""
    return html.escape(visible(value), quote=quote)


def _index(files: list[tuple[str, str]], skipped: list[tuple[str, str]], fmt: str, heading: str) -> str:
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{_text(heading)}</title>",
             "<style>body{font-family:sans-serif;max-width:70em;margin:auto;padding:1em}"
             "figure{margin:2em 0}img{max-width:100%}figcaption{color:#444}</style>",
             "</head><body>", f"<h1>{_text(heading)}</h1>"]
    for name, title in files:
        source = _text(name, quote=True)
        body = (f'<object data="{source}" type="application/pdf" width="100%" height="500">{source}</object>'
                if fmt == "pdf" else f'<img src="{source}" alt="{_text(title, quote=True)}">')
        parts.append(f"<figure>{body}<figcaption>{_text(title)}</figcaption></figure>")
    if skipped:
        parts.append("<h2>Not drawn</h2><ul>")
        parts.extend(f"<li>{_text(name)}: {_text(reason)}</li>" for name, reason in skipped)
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# index.html records the figure files its export wrote (an HTML comment): the next export into the
# folder removes those it does not write again, and nothing else, so that the folder holds what its
# index.html shows plus the user's own files.
LISTING = re.compile(r"<!-- horizon-figures: (\[.*?\]) -->")
FIGURE_NAME = re.compile(r"^fig\d{2}-[A-Za-z0-9._-]+\.(svg|png|pdf)$")


def _earlier_export(root: Path) -> set[str]:
    """The figure files the last export into ``root`` wrote (names checked: no path, our pattern only)."""
    try:
        found = LISTING.search(confined.read_bytes(root, root / "index.html", 1 << 22).decode("utf-8", "replace"))
        listed = json.loads(found.group(1)) if found else []
    except (OSError, ValueError, RecursionError, HorizonError):
        return set()
    return {name for name in listed if isinstance(name, str) and FIGURE_NAME.match(name)} \
        if isinstance(listed, list) else set()


def export(figures: list[tuple[str, str, Any]], skipped: list[tuple[str, str]], out: str | Path,
           fmt: str = "svg", heading: str = "horizon figures") -> list[Path]:
    """Write ``figures`` and ``index.html`` into ``out`` (created); returns the files written.

    Everything is first written into a staging folder inside ``out``; only then is each file
    renamed into place, so a failure (unwritable place, full disk) leaves ``out`` as it was.
    Figures an earlier export wrote there that this one does not are removed (only those: the
    folder's other files are left alone), so ``out`` holds what its index.html shows. Links and
    special files are never written through (core/results/confined.py): such an entry is refused.
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
        written_names = [name for name, _ in names]
        try:
            index.write_text(_index(names, skipped, fmt, heading)
                             + f"<!-- horizon-figures: {json.dumps(written_names)} -->\n", encoding="utf-8")
        except OSError as exc:
            raise WriteError(root / "index.html", exc) from None
        earlier = _earlier_export(root)
        written = []
        for name in [*written_names, "index.html"]:
            try:
                confined.replace(root, staging / name, root / name)
            except OSError as exc:
                raise WriteError(root / name, exc) from None
            written.append(root / name)
        for name in sorted(earlier - set(written_names)):
            with contextlib.suppress(OSError, HorizonError):  # gone already, or no longer ours (a link): left
                confined.unlink(root, root / name)
        return written
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
