"""Snapshot tests of the Compare screen (``inspect --results A --results B``), stored in snapshots/.

Two small sweeps of two tiny models of different depth (tiny-llama, 4 layers; tiny-gpt2, 3
layers, swept with other settings so the warning line shows), compared at 80x24 and at 160x48:
the table with the default overlay (1), and the overlays (7) and (9), the last with x as
relative depth. Update them with ``pytest tests/test_tui_compare_snapshots.py --snapshot-update``
(the whole module: syrupy deletes the pictures of the tests it did not run).

As in tests/test_tui_snapshots.py (its module docstring says why), no picture may rest on float
noise: ``test_no_compare_picture_rests_on_float_noise`` sweeps the same models in float64, draws
each picture from both, requires the pictures to be identical, and every recorded display choice
(printed digits, plotted values, the order of the heads) to lie farther from its boundary than
SAFETY times its float32 error (RECORD_SAFETY under ``--snapshot-update``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from horizon.core.model.loader import load_model
from horizon.core.sources.results_session import ResultsSession
from horizon.core.sweep.sweep import SweepSettings, run_sweep
from horizon.tui.app import HorizonApp
from horizon.tui.screens.compare import ComparePane
from horizon.tui.widgets.scales import Margin, recording_margins
from horizon.tui.widgets.status import StatusLine
from pytest_textual_snapshot import SVGImageExtension, normalize_svg
from syrupy.assertion import SnapshotAssertion

from tests.figure_sweeps import CORPUS
from tests.snapshot_dir import SNAPSHOT_DIR
from tests.test_tui_snapshots import RECORD_SAFETY, SAFETY, assert_far_from_boundaries, settle_then

SWEEPS = {  # model -> its sweep's settings (they differ: the screen's warning line shows)
    "tiny-llama": SweepSettings(shard_size=4, tol=0.004),
    "tiny-gpt2": SweepSettings(shard_size=4, start_layers=[0, 1], ablation="mean", lengths=[1, 5], tol=0.004),
}




def sweep_both(root: Path, dtype: torch.dtype) -> list[Path]:
    """The two tiny models swept into ``root``/<model> (the directory names show on screen: fixed)."""
    directories = []
    for spec, settings in SWEEPS.items():
        out = root / spec
        model = load_model(spec, device="cpu", dtype=dtype)
        assert run_sweep(CORPUS, out, model, settings, device="cpu").complete
        directories.append(out)
    return directories


@pytest.fixture(scope="module")
def float32_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return sweep_both(tmp_path_factory.mktemp("compare32"), torch.float32)


@pytest.fixture(scope="module")
def float64_dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The same sweeps in float64: the reference for the float32 rounding errors."""
    return sweep_both(tmp_path_factory.mktemp("compare64"), torch.float64)


def compare_app(directories: list[Path]) -> HorizonApp:
    # background=False: the first directory's own panes are not shown here, only the Compare screen.
    return HorizonApp(session=ResultsSession(str(directories[0])), compare=[str(d) for d in directories],
                      background=False, show_timings=False)


def test_snapshot_dir_is_top_level(snapshot: SnapshotAssertion) -> None:
    location = snapshot.use_extension(SVGImageExtension).extension.dirname(test_location=snapshot.test_location)
    assert Path(location) == SNAPSHOT_DIR / "test_tui_compare_snapshots"


SIZES = {"80x24": (80, 24), "160x48": (160, 48)}
# Each picture: the keys pressed once the directories are read (the test names name the files).
PICTURES = {
    "table_norm_growth": ("6",),  # the table, the warning and overlay (1)
    "loss_vs_k": ("6", "n", "n"),  # overlay (7)
    "cosine_by_depth": ("6", "n", "n", "n", "d"),  # overlay (9), x = layer / L
}


@pytest.mark.parametrize("size", SIZES)
def test_compare_table_norm_growth(snap_compare, float32_dirs: list[Path], size: str) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(compare_app(float32_dirs), run_before=settle_then(*PICTURES["table_norm_growth"]),
                        terminal_size=SIZES[size])


@pytest.mark.parametrize("size", SIZES)
def test_compare_loss_vs_k(snap_compare, float32_dirs: list[Path], size: str) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(compare_app(float32_dirs), run_before=settle_then(*PICTURES["loss_vs_k"]),
                        terminal_size=SIZES[size])


@pytest.mark.parametrize("size", SIZES)
def test_compare_cosine_by_depth(snap_compare, float32_dirs: list[Path], size: str) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(compare_app(float32_dirs), run_before=settle_then(*PICTURES["cosine_by_depth"]),
                        terminal_size=SIZES[size])


# ----------------------------------------------------------------------------- float noise


async def choices(app: HorizonApp, keys: tuple[str, ...], size: tuple[int, int]) -> tuple[list[Margin], str]:
    """Every display choice of the Compare picture after ``keys`` (with its margin), and the picture."""
    async with app.run_test(size=size) as pilot:
        await settle_then(*keys)(pilot)
        pane = app.query_one(ComparePane)
        with recording_margins() as margins:
            pane.refresh_view()  # the table's numbers, the heads' order and the overlay's inputs again
            for widget in pane.query("*"):  # the plot chooses its pixels when it draws
                if type(widget).__module__.startswith("horizon.tui.widgets") and "render" in vars(type(widget)):
                    widget.render()
        await pilot.pause()
        app.query_one(StatusLine).update("")
        picture = normalize_svg(app.export_screenshot())
    return margins, picture


@pytest.mark.anyio
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("picture", PICTURES)
async def test_no_compare_picture_rests_on_float_noise(float32_dirs: list[Path], float64_dirs: list[Path],
                                                       picture: str, size: str,
                                                       request: pytest.FixtureRequest) -> None:
    """Float32 and float64 sweeps draw the same picture, every choice far from its boundary."""
    single, single_picture = await choices(compare_app(float32_dirs), PICTURES[picture], SIZES[size])
    double, double_picture = await choices(compare_app(float64_dirs), PICTURES[picture], SIZES[size])
    assert single_picture == double_picture, "float32 and float64 sweeps draw different pictures"
    kinds = [m.kind for m in single]
    assert kinds == [m.kind for m in double]
    assert {"digit", "plot value"} <= set(kinds)  # the table's numbers and the plot's were both checked
    errors = [abs(a.value - b.value) for a, b in zip(single, double, strict=True)]
    update = request.config.getoption("update_snapshots", default=False)
    assert_far_from_boundaries(single, errors, RECORD_SAFETY if update else SAFETY)
