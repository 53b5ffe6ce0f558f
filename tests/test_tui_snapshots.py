"""Snapshot tests of every screen (pytest-textual-snapshot), stored in the top-level snapshots/.

The pictures are made with a deterministic tiny model (tiny-llama's seeded random weights with
its heads and layers pulled apart, ``snapshot_model``) and a fixed prompt, at 80x24, with
timings hidden, after every worker has finished; one Tokens picture uses the bundled model.
Update them with ``pytest tests/test_tui_snapshots.py --snapshot-update``.

Why no picture can flip on another CPU. Different CPUs, BLAS kernels and thread counts sum in
different orders, so float32 results differ in their last bits. A picture turns floats into
discrete choices only: a colour step, a printed digit, a bar height, an order of rows. Each
choice flips only if its value lies closer to the boundary between two choices than the float
noise, and the scales are built so those boundaries are few and far apart: colours come in
steps of a round range (a scale's ends are multiples of a 1-2-5 step, at most a dozen steps),
numbers are printed to a few significant figures (tui/widgets/scales.py). That alone would be
luck, so ``test_no_picture_rests_on_float_noise`` measures it: while each picture is drawn,
every choice reports its margin (distance to its nearest boundary), the same picture is drawn
from the same model in float64, and each float32 value's difference from its float64 twin is
its rounding error (at least 4 float32 ulps). Every margin must exceed 3 times that error, and
the pictures were recorded only where it exceeds 10 times (checked under ``--snapshot-update``).
If two machines both pass, no choice can differ between them: values on opposite sides of a
boundary would be at least 3 (e_1 + e_2) apart, while both lie within e_1 and e_2 of the same
float64 value. A change that puts a value near a boundary fails that test with the value
named, instead of a picture flipping on someone else's CPU. The bundled model's picture is
checked against its measured float32 error bound instead of a float64 run (``BUNDLED_ERROR``).
``make test`` runs the suite on one BLAS/OpenMP thread and this module's pictures a second time
with torch's own thread count (the float-noise tests once: their margins hold for any order). To imitate another
CPU's kernels, run it with ``ATEN_CPU_CAPABILITY=avx2`` (or ``default``) and
``MKL_ENABLE_INSTRUCTIONS=AVX2`` (or ``SSE4_2``): the floats change, the pictures must not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from horizon.core.model.loader import LoadedModel, load_model
from horizon.core.model.prompts import tokenize
from horizon.core.sources.session import PatchSettings, Session
from horizon.tui.app import HorizonApp
from horizon.tui.widgets.scales import Margin, recording_margins
from horizon.tui.widgets.status import StatusLine
from pytest_textual_snapshot import SVGImageExtension, normalize_svg
from syrupy.assertion import SnapshotAssertion
from textual.widgets import TabbedContent

from tests.pilot import settle
from tests.snapshot_dir import SNAPSHOT_DIR

PROMPT = "The capital of France is Paris. It is known for the Eiffel Tower, and its food is famous."
SMOL_PROMPT = "The Eiffel Tower is in Paris.\nIt opened in 1889."




# Per-head factors on tiny-llama's query weights (0: uniform attention, 1000: sharp), and on
# the sublayer outputs and the unembedding, so heads, layers and k really differ on screen.
QUERY_SCALES = (3.0, 10.0, 100.0, 1000.0)
OUTPUT_SCALE = 3.0
UNEMBED_SCALE = 8.0


def snapshot_model(dtype: torch.dtype = torch.float32) -> LoadedModel:
    """tiny-llama (seeded random weights) with its heads and layers pulled apart, see above."""
    model = load_model("tiny-llama", device="cpu", dtype=dtype)
    head_dim = model.d_model // model.n_heads
    with torch.no_grad():
        for name, weight in model.bridge.named_parameters():
            if "q_proj" in name:
                for head, factor in enumerate(QUERY_SCALES):
                    weight[head * head_dim : (head + 1) * head_dim] *= factor
            elif "o_proj" in name or "down_proj" in name:
                weight *= OUTPUT_SCALE
            elif "lm_head" in name:
                weight *= UNEMBED_SCALE
    return model


def snapshot_session(dtype: torch.dtype = torch.float32) -> Session:
    model = snapshot_model(dtype)
    session = Session(model, [PROMPT], tokenize(model, [PROMPT]))
    # Computed up front: the Figures screen lists figure 8 as drawable once it exists, and a picture
    # must not depend on whether the layer x k picture happened to run first.
    session.by_layer(0, "zero")
    return session


@pytest.fixture(scope="module")
def tiny_session() -> Session:
    """One session for every picture: its engine results are computed once and cached."""
    return snapshot_session()


def tiny_app(session: Session) -> HorizonApp:
    return HorizonApp(session=session, show_timings=False)


def settle_then(*keys: str):  # type: ignore[no-untyped-def]
    """A run_before: wait for the workers, press ``keys``, wait again (debounce included)."""

    async def run_before(pilot) -> None:  # type: ignore[no-untyped-def]
        await settle(pilot.app, pilot)
        for key in keys:
            await pilot.press(key)
            await settle(pilot.app, pilot)

    return run_before


def test_snapshot_dir_is_top_level(snapshot: SnapshotAssertion) -> None:
    location = snapshot.use_extension(SVGImageExtension).extension.dirname(test_location=snapshot.test_location)
    assert Path(location) == SNAPSHOT_DIR / "test_tui_snapshots"


# Each picture: the keys pressed once the workers have settled (the test names name the files).
PICTURES = {
    "tokens_screen": (),
    "tokens_detail_pane": ("right",) * 8,
    "tokens_norm_metric": ("m", "left_square_bracket"),
    "norms_screen": ("2",),
    "horizon_screen": ("3",),
    "horizon_moved_slider": ("3", "right", "right"),
    "horizon_matrix": ("3", "x"),  # the layer x k matrix
    "outliers_screen": ("4",),
    "attention_screen": ("5",),
    "help_screen": ("question_mark",),
    # The plots (tui/widgets/plot.py): the Figures screen's figures 1, 7, 9 and 11 (a heat map), and
    # the Norms and Horizon screens that hold one, at 80x24 and on a large terminal (SIZES).
    "figures_screen": ("7",),
    "figures_loss_vs_k": ("7", *("n",) * 6),
    "figures_cosine": ("7", *("n",) * 8),
    "figures_attention_distance": ("7", "N"),
    "norms_screen_160x48": ("2",),
    "horizon_screen_160x48": ("3",),
    "figures_screen_160x48": ("7",),
    "figures_loss_vs_k_160x48": ("7", *("n",) * 6),
    "figures_cosine_160x48": ("7", *("n",) * 8),
    "figures_attention_distance_160x48": ("7", "N"),
}
SMALL = (80, 24)
SIZES = {name: (160, 48) for name in PICTURES if name.endswith("_160x48")}  # the others: SMALL


def picture(snap_compare, session: Session, name: str) -> bool:  # type: ignore[no-untyped-def]
    """Compare the picture ``name`` (its keys, its size) with its stored snapshot."""
    return snap_compare(tiny_app(session), run_before=settle_then(*PICTURES[name]),
                        terminal_size=SIZES.get(name, SMALL))


def test_tokens_screen(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then(*PICTURES["tokens_screen"]))


def test_tokens_detail_pane(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then(*PICTURES["tokens_detail_pane"]))


def test_tokens_norm_metric(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then(*PICTURES["tokens_norm_metric"]))


def test_norms_screen(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then(*PICTURES["norms_screen"]))


def test_horizon_screen(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then(*PICTURES["horizon_screen"]))


def test_horizon_moved_slider(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then(*PICTURES["horizon_moved_slider"]))


def test_horizon_matrix(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then(*PICTURES["horizon_matrix"]))


def test_outliers_screen(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then(*PICTURES["outliers_screen"]))


def test_attention_screen(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then(*PICTURES["attention_screen"]))


def test_help_screen(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(tiny_app(tiny_session), run_before=settle_then(*PICTURES["help_screen"]))


def test_figures_screen(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert picture(snap_compare, tiny_session, "figures_screen")


def test_figures_loss_vs_k(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert picture(snap_compare, tiny_session, "figures_loss_vs_k")


def test_figures_cosine(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert picture(snap_compare, tiny_session, "figures_cosine")


def test_figures_attention_distance(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert picture(snap_compare, tiny_session, "figures_attention_distance")


def test_norms_screen_160x48(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert picture(snap_compare, tiny_session, "norms_screen_160x48")


def test_horizon_screen_160x48(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert picture(snap_compare, tiny_session, "horizon_screen_160x48")


def test_figures_screen_160x48(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert picture(snap_compare, tiny_session, "figures_screen_160x48")


def test_figures_loss_vs_k_160x48(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert picture(snap_compare, tiny_session, "figures_loss_vs_k_160x48")


def test_figures_cosine_160x48(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert picture(snap_compare, tiny_session, "figures_cosine_160x48")


def test_figures_attention_distance_160x48(snap_compare, tiny_session: Session) -> None:  # type: ignore[no-untyped-def]
    assert picture(snap_compare, tiny_session, "figures_attention_distance_160x48")


# ----------------------------------------------------------------------------- float noise

# A float32 value's distance from the float64 value of the same computation is its rounding
# error on this machine; it is never taken as less than FLOOR_ULPS float32 ulps of max(1, |v|).
FLOOR_ULPS = 4
SAFETY = 3  # on any machine, each choice's margin must exceed SAFETY times that error
RECORD_SAFETY = 10  # and pictures are only (re)recorded where it exceeds 10 times the error
# The bundled model's float32 error, measured against float64 once (2026-11, x86-64, with the
# AVX-512 kernels and with ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2): at most
# 5.1e-6 on the cosines its picture colours; the bound here is 20 times that.
BUNDLED_ERROR = 1e-4


@pytest.fixture(scope="module")
def float64_session() -> Session:
    """The snapshot session computed in float64: the reference for the float32 rounding errors."""
    return snapshot_session(torch.float64)


@pytest.fixture(scope="module")
def smol_session(smol: LoadedModel) -> Session:
    session = Session(smol, [SMOL_PROMPT], tokenize(smol, [SMOL_PROMPT]))
    session.truncate()  # the Tokens screen's default metric; the other analyses are not shown
    session.patch(PatchSettings(k=smol.n_layers // 2))
    return session


async def choices(app: HorizonApp, keys: tuple[str, ...], size: tuple[int, int] = SMALL) -> tuple[list[Margin], str]:
    """Every display choice of the picture after ``keys`` (with its margin), and the picture."""
    async with app.run_test(size=size) as pilot:
        await settle_then(*keys)(pilot)
        tabs = app.query_one(TabbedContent)
        shown = tabs.get_pane(tabs.active)
        state = (app.view_state(),) if hasattr(app, "view_state") else ()  # what the panes draw from
        with recording_margins() as margins:
            for pane in shown.query("*"):
                if hasattr(pane, "refresh_view"):
                    pane.refresh_view(*state)  # the screen rebuilds its numbers, lists and tables
            for widget in shown.query("*"):  # cells' colours are chosen when our widgets draw
                if type(widget).__module__.startswith("horizon.tui.widgets") and "render" in vars(type(widget)):
                    widget.render()
        app.query_one(StatusLine).update("")  # which job finished last depends on the caches
        picture = normalize_svg(app.export_screenshot())
    return margins, picture


def assert_far_from_boundaries(margins: list[Margin], errors: list[float], safety: float) -> None:
    assert margins, "no display choice was recorded"
    eps = float(torch.finfo(torch.float32).eps)
    close = []
    for margin, error in zip(margins, errors, strict=True):
        error = max(error, FLOOR_ULPS * eps * max(1.0, abs(margin.value)))
        if margin.distance <= safety * error:
            close.append(f"{margin.kind}: {margin.value!r} is {margin.distance:.2e} from a boundary "
                         f"(float32 error {error:.2e})")
    assert not close, "choices too close to a boundary to be the same on every CPU:\n" + "\n".join(close)


def safety(request: pytest.FixtureRequest) -> float:
    return RECORD_SAFETY if request.config.getoption("update_snapshots", default=False) else SAFETY


@pytest.mark.anyio
@pytest.mark.parametrize("picture", PICTURES)
async def test_no_picture_rests_on_float_noise(
    tiny_session: Session, float64_session: Session, picture: str, request: pytest.FixtureRequest
) -> None:
    """Every colour step, digit, bar height and order in the picture is the same in float64, and
    lies farther from its boundary than SAFETY times its float32 rounding error."""
    size = SIZES.get(picture, SMALL)
    single, single_picture = await choices(tiny_app(tiny_session), PICTURES[picture], size)
    double, double_picture = await choices(tiny_app(float64_session), PICTURES[picture], size)
    assert single_picture == double_picture, "float32 and float64 draw different pictures"
    assert [m.kind for m in single] == [m.kind for m in double]
    errors = [abs(a.value - b.value) for a, b in zip(single, double, strict=True)]
    assert_far_from_boundaries(single, errors, safety(request))


@pytest.mark.slow
def test_tokens_screen_bundled_model(snap_compare, smol_session: Session) -> None:  # type: ignore[no-untyped-def]
    app = HorizonApp(session=smol_session, show_timings=False, background=False)
    assert snap_compare(app, run_before=settle_then())


@pytest.mark.slow
@pytest.mark.anyio
async def test_bundled_picture_rests_on_no_float_noise(smol_session: Session, request: pytest.FixtureRequest) -> None:
    """As above, with the bundled model's measured float32 error bound instead of a float64 run."""
    margins, _ = await choices(HorizonApp(session=smol_session, show_timings=False, background=False), ())
    errors = [BUNDLED_ERROR * max(1.0, abs(margin.value)) for margin in margins]
    assert_far_from_boundaries(margins, errors, safety(request))


def test_a_changed_screen_fails_the_comparison(tiny_session: Session, snapshot: SnapshotAssertion) -> None:
    """The stored Tokens picture matches the same screen and not a changed one (metric switched)."""
    from pytest_textual_snapshot import normalize_svg
    from textual._doc import take_svg_screenshot

    same = take_svg_screenshot(app=tiny_app(tiny_session), terminal_size=(80, 24), run_before=settle_then())
    changed = take_svg_screenshot(app=tiny_app(tiny_session), terminal_size=(80, 24), run_before=settle_then("m"))
    assert normalize_svg(same) != normalize_svg(changed)
    reference = SNAPSHOT_DIR / "test_tui_snapshots" / "test_tokens_screen.svg"
    if not snapshot.update_snapshots:  # with --snapshot-update the picture is being rewritten
        stored = normalize_svg(reference.read_text())
        assert normalize_svg(same) == stored
        assert normalize_svg(changed) != stored
