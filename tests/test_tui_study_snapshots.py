"""Snapshot tests of the figures over models on the Compare screen ((12)-(14)), in snapshots/.

Three tiny models of different depth swept with the same settings, as ``horizon study`` sweeps
them: tiny-llama (4 layers), tiny-gpt2 (3) and a 2-layer Qwen2 from a local model directory
(tests/families.py, given by its relative path ``tiny-qwen2`` so that its label is the same on
every machine). With three models Spearman's rho has a value (n = 3), and the cosine figure has
both placed and left-out models. Each figure at 80x24 and at 160x48. Update them with
``pytest tests/test_tui_study_snapshots.py --snapshot-update`` (the whole module).

As in tests/test_tui_compare_snapshots.py: the same sweeps in float64 must draw the same
pictures, and every recorded choice (digits, plotted values, each effective horizon's loss
increase against tol, each median cosine against the level, the order of the growth rates that
decides rho) must lie farther from its boundary than SAFETY times its float32 error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from horizon.core.model.loader import load_model
from horizon.core.sources.results_session import ResultsSession
from horizon.core.sweep.sweep import SweepSettings, run_sweep
from horizon.tui.app import HorizonApp
from horizon.tui.screens.compare import FIGURES
from syrupy.assertion import SnapshotAssertion

from tests.families import save_family_dir
from tests.figure_sweeps import CORPUS
from tests.snapshot_dir import SNAPSHOT_DIR
from tests.test_tui_compare_snapshots import choices
from tests.test_tui_snapshots import RECORD_SAFETY, SAFETY, assert_far_from_boundaries, settle_then

MODELS = ("tiny-llama", "tiny-gpt2", "tiny-qwen2")  # tiny-qwen2: a directory, by its relative path
SETTINGS = SweepSettings(shard_size=4, tol=0.004)  # one set of settings for all, as a study


@contextmanager
def inside(directory: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(previous)


def sweep_all(root: Path, dtype: torch.dtype) -> list[Path]:
    """The three models swept into ``root``/<model> (the labels show on screen: fixed)."""
    save_family_dir("qwen2", root / "tiny-qwen2")
    directories = []
    with inside(root):  # the Qwen2 directory's spec, and so its label, is "tiny-qwen2"
        for spec in MODELS:
            out = root / "results" / spec
            model = load_model(spec, device="cpu", dtype=dtype)
            assert run_sweep(CORPUS, out, model, SETTINGS, device="cpu").complete
            directories.append(out)
    return directories


@pytest.fixture(scope="module")
def float32_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return sweep_all(tmp_path_factory.mktemp("study32"), torch.float32)


@pytest.fixture(scope="module")
def float64_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The same sweeps in float64: the reference for the float32 rounding errors."""
    return sweep_all(tmp_path_factory.mktemp("study64"), torch.float64)


def compare_app(directories: list[Path]) -> HorizonApp:
    return HorizonApp(session=ResultsSession(str(directories[0])), compare=[str(d) for d in directories],
                      background=False, show_timings=False)


def test_snapshot_dir_is_top_level(snapshot: SnapshotAssertion) -> None:
    from pytest_textual_snapshot import SVGImageExtension

    location = snapshot.use_extension(SVGImageExtension).extension.dirname(test_location=snapshot.test_location)
    assert Path(location) == SNAPSHOT_DIR / "test_tui_study_snapshots"


def keys_to(figure: str) -> tuple[str, ...]:
    """Screen 6, then n until ``figure`` is shown (the Compare screen's figure cycle)."""
    return ("6", *("n",) * list(FIGURES).index(figure))


SIZES = {"80x24": (80, 24), "160x48": (160, 48)}
PICTURES = {name: keys_to(name) for name in ("horizon_vs_depth", "horizon_vs_growth", "cosine_drop_vs_depth")}


@pytest.mark.parametrize("size", SIZES)
def test_horizon_vs_depth(snap_compare, float32_dirs: list[Path], size: str) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(compare_app(float32_dirs), run_before=settle_then(*PICTURES["horizon_vs_depth"]),
                        terminal_size=SIZES[size])


@pytest.mark.parametrize("size", SIZES)
def test_horizon_vs_growth(snap_compare, float32_dirs: list[Path], size: str) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(compare_app(float32_dirs), run_before=settle_then(*PICTURES["horizon_vs_growth"]),
                        terminal_size=SIZES[size])


@pytest.mark.parametrize("size", SIZES)
def test_cosine_drop_vs_depth(snap_compare, float32_dirs: list[Path], size: str) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(compare_app(float32_dirs), run_before=settle_then(*PICTURES["cosine_drop_vs_depth"]),
                        terminal_size=SIZES[size])


@pytest.mark.anyio
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("picture", PICTURES)
async def test_no_study_picture_rests_on_float_noise(float32_dirs: list[Path], float64_dirs: list[Path],
                                                     picture: str, size: str, request: pytest.FixtureRequest) -> None:
    """Float32 and float64 sweeps draw the same picture, every choice far from its boundary."""
    single, single_picture = await choices(compare_app(float32_dirs), PICTURES[picture], SIZES[size])
    double, double_picture = await choices(compare_app(float64_dirs), PICTURES[picture], SIZES[size])
    assert single_picture == double_picture, "float32 and float64 sweeps draw different pictures"
    kinds = [m.kind for m in single]
    assert kinds == [m.kind for m in double]
    assert {"digit", "plot value", "threshold"} <= set(kinds)  # table, points, horizons and levels all checked
    errors = [abs(a.value - b.value) for a, b in zip(single, double, strict=True)]
    update = request.config.getoption("update_snapshots", default=False)
    assert_far_from_boundaries(single, errors, RECORD_SAFETY if update else SAFETY)
