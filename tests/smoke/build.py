"""Build the wheel and the sdist of a copy of the repository, and say which files the wheel must hold.

The builds run on a copy so that the checkout gets no build/ or egg-info folders from them, and with
setuptools' PEP 517 hooks in a subprocess of this interpreter (the venv's setuptools, no download).
``python -m tests.smoke.build OUTDIR`` prints the path of a freshly built wheel (make smoke uses it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What a checkout holds besides its sources: never copied into the build, never expected in the wheel.
NOT_SOURCE = (".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache",
              ".ruff_cache")
# Only at the top (as .gitignore's /results/): core/results/ is the store's source.
NOT_SOURCE_AT_TOP = ("results", ".whl", "bench-results.json", "snapshot_report.html")
# Where each source folder goes in the wheel (setup.py's package_dir, the longest prefix first).
PACKAGE_DIRS = (("core/api", "horizon"), ("core", "horizon/core"), ("tui", "horizon/tui"))

_HOOK = "import sys; from setuptools import build_meta as hooks; print(getattr(hooks, sys.argv[1])(sys.argv[2]))"


def copy_tree(destination: Path) -> Path:
    """The repository's sources at ``destination`` (a folder that must not exist yet)."""
    anywhere, at_top = shutil.ignore_patterns(*NOT_SOURCE), shutil.ignore_patterns(*NOT_SOURCE_AT_TOP)

    def ignore(folder: str, names: list[str]) -> set[str]:
        return anywhere(folder, names) | (at_top(folder, names) if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination


def run_hook(hook: str, source: Path, out: Path) -> tuple[Path, str]:
    """Run a PEP 517 hook (build_wheel, build_sdist) in ``source``: the artefact and the build's output."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run([sys.executable, "-c", _HOOK, hook, str(out)], cwd=source, env=env,
                          capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{hook} failed in {source}:\n{log[-4000:]}")
    return out / done.stdout.strip().splitlines()[-1], log


def build_wheel(work: Path) -> tuple[Path, str]:
    """A wheel built straight from a copy of the tree (under ``work``), and the build's output."""
    out = work / "wheel"
    out.mkdir(parents=True)
    return run_hook("build_wheel", copy_tree(work / "src"), out)


def build_sdist_then_wheel(work: Path) -> tuple[Path, Path, str]:
    """The sdist of a copy of the tree, and the wheel built from that sdist unpacked: (sdist, wheel, output)."""
    out = work / "sdist"
    out.mkdir(parents=True)
    sdist, log = run_hook("build_sdist", copy_tree(work / "sdist-src"), out)
    with tarfile.open(sdist) as archive:
        archive.extractall(work / "unpacked", filter="data")
    (unpacked,) = (work / "unpacked").iterdir()
    wheel_out = work / "from-sdist"
    wheel_out.mkdir()
    wheel, wheel_log = run_hook("build_wheel", unpacked, wheel_out)
    return sdist, wheel, log + wheel_log


def expected_files(root: Path = ROOT) -> dict[str, str]:
    """Every file of the package folders (modules and data), as its path in the wheel -> in the repository."""
    expected = {}
    for folder, _ in PACKAGE_DIRS:
        for path in sorted((root / folder).rglob("*")):
            relative = path.relative_to(root).as_posix()
            if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            source, target = next((s, t) for s, t in PACKAGE_DIRS if relative.startswith(s + "/"))
            expected[target + relative.removeprefix(source)] = relative
    return expected


if __name__ == "__main__":
    work = Path(sys.argv[1])
    wheel, _ = build_wheel(work)
    print(wheel)
