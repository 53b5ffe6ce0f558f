"""Snapshot test of results mode's layer x k matrix (``inspect --results DIR``, no model), in snapshots/.

The snapshot model of tests/test_tui_snapshots.py (tiny-llama pulled apart) swept over its one prompt
with ``--by-layer`` (the scan alone): the Horizon screen's matrix view (keys 3, x) draws the matrix
the sweep stored, which is the live picture's (test_horizon_matrix) without a patched pass. Update
with ``pytest tests/test_tui_results_snapshots.py --snapshot-update`` (the whole module).

As in tests/test_tui_snapshots.py (its module docstring says why), no picture may rest on float
noise: the same sweep in float64 draws the same picture, every display choice far from its boundary.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from horizon.core.model.corpus import Corpus
from horizon.core.sources.queries import Query
from horizon.core.sources.results_session import ResultsSession
from horizon.core.sweep.sweep import SweepSettings, run_sweep
from horizon.tui.app import HorizonApp
from horizon.tui.widgets.layer_matrix import LayerMatrix
from pytest_textual_snapshot import SVGImageExtension
from syrupy.assertion import SnapshotAssertion

from tests.snapshot_dir import SNAPSHOT_DIR
from tests.test_tui_snapshots import (
    PROMPT,
    RECORD_SAFETY,
    SAFETY,
    assert_far_from_boundaries,
    choices,
    settle_then,
    snapshot_model,
)

MATRIX = ("3", "x")  # the Horizon screen, then its layer x k matrix


def sweep(root: Path, dtype: torch.dtype) -> Path:
    """The snapshot model's scan with its layer x k matrix, stored under ``root``/tiny-llama (shown: fixed)."""
    out = root / "tiny-llama"
    settings = SweepSettings(analyses=["scan"], by_layer=True, shard_size=1)
    corpus = Corpus(name="snapshot", texts=[PROMPT], kinds=[""])
    assert run_sweep(corpus, out, snapshot_model(dtype), settings, device="cpu").complete
    return out


@pytest.fixture(scope="module")
def float32_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sweep(tmp_path_factory.mktemp("results32"), torch.float32)


@pytest.fixture(scope="module")
def float64_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same sweep in float64: the reference for the float32 rounding errors."""
    return sweep(tmp_path_factory.mktemp("results64"), torch.float64)


def results_app(directory: Path) -> HorizonApp:
    return HorizonApp(session=ResultsSession(str(directory)), show_timings=False)


def test_snapshot_dir_is_top_level(snapshot: SnapshotAssertion) -> None:
    location = snapshot.use_extension(SVGImageExtension).extension.dirname(test_location=snapshot.test_location)
    assert Path(location) == SNAPSHOT_DIR / "test_tui_results_snapshots"


def test_results_layer_k_matrix(snap_compare, float32_dir: Path) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(results_app(float32_dir), run_before=settle_then(*MATRIX))


@pytest.mark.anyio
async def test_the_matrix_shown_is_the_stored_one(float32_dir: Path) -> None:
    """Without a model, the matrix view draws the ByLayerResult the store holds for the prompt."""
    app = results_app(float32_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle_then(*MATRIX)(pilot)
        assert app.session is not None and not app.session.can_patch
        shown = app.query_one(LayerMatrix).result
        assert shown is not None and shown is app.session.ready(Query.by_layer(0))
        assert shown.layers == list(range(app.session.n_layers + 1))


@pytest.mark.anyio
async def test_no_results_picture_rests_on_float_noise(float32_dir: Path, float64_dir: Path,
                                                       request: pytest.FixtureRequest) -> None:
    """Float32 and float64 sweeps draw the same matrix picture, every choice far from its boundary."""
    single, single_picture = await choices(results_app(float32_dir), MATRIX)
    double, double_picture = await choices(results_app(float64_dir), MATRIX)
    assert single_picture == double_picture, "float32 and float64 sweeps draw different pictures"
    assert [m.kind for m in single] == [m.kind for m in double]
    assert "colour step" in {m.kind for m in single}  # the matrix's cell colours were checked
    errors = [abs(a.value - b.value) for a, b in zip(single, double, strict=True)]
    update = request.config.getoption("update_snapshots", default=False)
    assert_far_from_boundaries(single, errors, RECORD_SAFETY if update else SAFETY)
