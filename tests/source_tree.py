"""The repository's folders as the packages they are installed as (setup.py's package_dir), for the
checks that read the source the way Python imports it: the import graph and the type check."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> installed package. core/api/ is the top-level package horizon.
PACKAGES = {"core/api": "horizon", "core": "horizon.core", "tui": "horizon.tui"}


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the distribution, by its dotted name."""
    found: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            relative = path.relative_to(root / folder)
            if folder == "core" and relative.parts[0] == "api":
                continue  # installed as horizon, above
            parts = [part for part in relative.with_suffix("").parts if part != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def installed_layout(into: Path, root: Path = ROOT) -> Path:
    """Links under ``into`` laid out as the installed package (into/horizon/core -> core/, ...).

    Tools that resolve ``horizon.core.x`` from files (mypy) need that layout; the editable install's
    import hook is invisible to them.
    """
    package = into / "horizon"
    package.mkdir(parents=True)
    for entry in (root / "core" / "api").iterdir():
        if entry.name != "__pycache__":
            os.symlink(entry, package / entry.name)
    os.symlink(root / "core", package / "core")
    os.symlink(root / "tui", package / "tui")
    return into
