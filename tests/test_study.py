"""`horizon study` and the numbers over models (core/sweep/study.py, core/sources/compare.py's across_models,
figures 12-14), on three tiny models of different depth: tiny-llama (4 layers), tiny-gpt2 (3) and
a 2-layer Qwen2 from a local model directory (tests/families.py), so that Spearman's rho has n = 3.

The study is run end to end once (4 prompts, --max-tokens 32); its ``compare --json`` numbers are
held to an independent computation from the Parquet tables (pandas: the growth fit by brute
force, the effective horizon from the scan rows, the median cosine from the truncate rows, the
rank correlation), the figures' points to those numbers, and the resume after ``kill -9``,
Ctrl-C, a model that cannot load or verify, a tampered shard and bad input to what the README
says.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from horizon.core.errors import HorizonError
from horizon.core.sources import compare
from horizon.core.sources.compare import COSINE_DROP_LENGTH, COSINE_DROP_LEVEL, FigureInput, across_models, spearman
from horizon.core.sweep.study import folder_name, folder_names, read_study_file
from horizon.tui.cli.app import main

from tests.families import save_family_dir

TOL = 0.004  # small enough that the tiny models' horizons differ
SETTINGS = ["--max-prompts", "4", "--max-tokens", "32", "--tol", str(TOL), "--shard-size", "2"]


def pandas_spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rho as pandas computes it (DataFrame.corr ranks in its own code, no scipy)."""
    return float(pd.DataFrame({"x": xs, "y": ys}).corr(method="spearman").loc["x", "y"])


def run(*args: str) -> tuple[int, str, str]:
    """``horizon ARGS`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def files_of(directory: Path) -> dict[str, tuple[int, str]]:
    """Every results file under ``directory``: relative path -> (mtime_ns, sha256). Claims (``.claims/``:
    which run works on which shard) are left out: a killed run leaves its claim, the next one clears it."""
    return {str(path.relative_to(directory)): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            for path in sorted(directory.rglob("*"))
            if path.is_file() and path.relative_to(directory).parts[0] != ".claims"}


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_family_dir("qwen2", tmp_path_factory.mktemp("models") / "tiny-qwen2")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, qwen_dir: Path) -> dict[str, Any]:
    """The study of the three tiny models, run once: its directory and its --json."""
    out = tmp_path_factory.mktemp("study") / "study"
    code, stdout, err = run("study", "tiny-llama", "tiny-gpt2", str(qwen_dir), "--out", str(out), *SETTINGS,
                            "--json")
    assert code == 0, err
    return {"out": out, "json": json.loads(stdout), "qwen": str(qwen_dir)}


# ----------------------------------------------------------------------------- folder names, the study file


def test_folder_names_are_safe_and_never_shared() -> None:
    assert folder_name("EleutherAI/pythia-160m") == "EleutherAI--pythia-160m"
    assert folder_name("../../etc/passwd") == "etc--passwd"  # no way out of the study directory
    assert folder_name("..") == "model" and folder_name("/") == "model"
    assert folder_name("a b$(rm -rf)\x1b[31m") == "a_b_rm_-rf_31m"
    long = "org/" + "x" * 200
    assert len(folder_name(long)) < 100 and folder_name(long) != folder_name(long + "y")
    specs = ["org/name", "org--name", "Gpt2", "gpt2", "index.html", "tiny-llama"]
    names = folder_names(specs, reserved={"index.html"})
    assert len({name.casefold() for name in names}) == len(names)  # apart even on a case-insensitive disk
    assert names[-1] == "tiny-llama"  # a name nobody else takes stays as it is
    assert names[0].startswith("org--name-") and names[1].startswith("org--name-")
    assert names[4] != "index.html" and names[4].startswith("index.html-")
    for name in names:
        assert "/" not in name and not name.startswith(".")


def test_study_file_toml_and_json(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text('models = ["tiny-llama", "org/name"]\ncorpus = "prompts.txt"\n'
                                     'max_tokens = 32\nlengths = [1, 5]\ntol = 0.05\nby_layer = true\n')
    data = read_study_file(tmp_path / "s.toml")
    assert data["models"] == ["tiny-llama", "org/name"] and data["lengths"] == [1, 5] and data["by_layer"] is True
    assert data["corpus"] == str((tmp_path / "prompts.txt").resolve())  # relative to the file
    (tmp_path / "s.json").write_text(json.dumps({"models": ["tiny-gpt2"], "batch_size": "auto"}))
    assert read_study_file(tmp_path / "s.json")["models"] == ["tiny-gpt2"]
    for text, words in (('models = ["a"]\nmax_token = 3\n', "unknown key 'max_token'"),
                        ('models = "tiny-llama"\n', "models must be a list of strings"),
                        ("tol = true\n", "tol must be a number"), ("lengths = [1, 2.5]\n", "lengths must be a list"),
                        ("models = [\n", "not valid TOML or JSON"), ("[1, 2]", "not valid TOML or JSON")):
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(HorizonError, match=words.replace("(", r"\(").replace("[", r"\[")):
            read_study_file(tmp_path / "bad.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(HorizonError, match="not UTF-8"):
        read_study_file(tmp_path / "bin.toml")


@pytest.mark.parametrize("args, words", [
    (("tiny-llama", "tiny-llama"), "given twice"),
    (("tiny-llama", "--x", "sideways"), "--x 'sideways'"),
    (("tiny-llama", "--format", "gif"), "--format 'gif'"),
    (("tiny-llama", "--analyses", "norms,nope"), "unknown analysis 'nope'"),
    (("tiny-llama", "--lengths", "0"), "--lengths"),
    (("tiny-llama", "--dtype", "float8"), "unknown dtype"),
    (("tiny-llama", "--backend", "slurm"), "unknown --backend"),
    (("tiny-llama", "--ray-address", "auto"), "--ray-address is for --backend ray"),
    (("tiny-llama", "missing-prompts.txt"), "corpus not found"),
    (("--study", "no-such-study.toml"), "not found"),
    ((), "give at least one model"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: tuple[str, ...], words: str) -> None:
    out = tmp_path / "out"
    code, stdout, err = run("study", *args, "--out", str(out))
    assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1 and words in err, err
    assert not out.exists()


def test_no_out_is_refused(tmp_path: Path) -> None:
    code, _, err = run("study", "tiny-llama")
    assert code == 2 and "give --out" in err


# ----------------------------------------------------------------------------- the numbers over models


def _item(label: str, n_layers: int, k: int | None, rate: float | None, medians: list[float] | None,
          start: int = 0) -> FigureInput:
    scan = {"effective_horizon": {str(start): k, str(start + 1): 1}, "tol": 0.1, "ablation": "zero", "rows": []}
    return FigureInput(label=label, n_layers=n_layers, norms={"growth": {"rate": rate}} if rate else {"growth": {}},
                       scan=scan, truncate=None if medians is None else {"median_cos": {"5": medians}})


def test_across_models_points_and_left_out() -> None:
    level = COSINE_DROP_LEVEL
    inputs = [_item("a", 4, 2, 1.1, [1.0, 0.8, 0.7, 0.3, 0.2]), _item("b", 8, None, 1.2, [1.0] * 9),
              _item("c", 10, 11, None, None), _item("d", 2, 1, 1.05, [level, level, level - 1e-9])]
    numbers = across_models(inputs)
    depth = numbers["horizon_vs_depth"]
    assert [(p["label"], p["effective_horizon"], p["fraction"]) for p in depth["points"]] == \
        [("a", 2, 0.5), ("c", 11, 1.1), ("d", 1, 0.5)]  # the first start layer's k; k = L + 1: above 1
    assert depth["left_out"] == [{"label": "b", "reason": "no scanned k within tol 0.1 (start layer 0)"}]
    growth = numbers["horizon_vs_growth"]
    assert [p["label"] for p in growth["points"]] == ["a", "d"] and growth["n"] == 2
    assert growth["spearman"] is None and growth["note"] == "n too small"
    assert {"label": "c", "reason": "no fitted growth rate"} in growth["left_out"]
    drop = numbers["cosine_drop_vs_depth"]
    assert (drop["length"], drop["level"]) == (COSINE_DROP_LENGTH, COSINE_DROP_LEVEL) == (5, math.sqrt(0.5))
    assert [(p["label"], p["row"], p["depth"]) for p in drop["points"]] == [("a", 2, 0.5), ("d", 2, 1.0)]
    reasons = {entry["label"]: entry["reason"] for entry in drop["left_out"]}
    assert "never falls below 0.707 (lowest 1.000, row 0)" in reasons["b"] and reasons["c"] == "no truncate results"


@pytest.mark.parametrize("seed", range(5))
def test_spearman_equals_pandas_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 12))
    xs = rng.integers(0, 4, n).astype(float).tolist()  # many ties
    ys = rng.normal(size=n).round(1).tolist()
    expected = pandas_spearman(xs, ys)
    rho, note = spearman(xs, ys)
    if math.isnan(expected):
        assert rho is None and note is not None
    else:
        assert note is None and rho == pytest.approx(expected, abs=1e-12)


def test_spearman_refuses_what_it_cannot_rank() -> None:
    assert spearman([1.0, 2.0], [2.0, 1.0]) == (None, "n too small")
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])[0] is None
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == (-1.0, None)


# ----------------------------------------------------------------------------- the study end to end


def test_study_sweeps_each_model_and_compares(study: dict[str, Any]) -> None:
    out, payload = study["out"], study["json"]
    assert payload["complete"] is True and payload["out"] == str(out)
    models = payload["models"]
    assert [m["spec"] for m in models] == ["tiny-llama", "tiny-gpt2", study["qwen"]]
    assert [m["status"] for m in models] == ["swept"] * 3
    assert models[0]["folder"] == "tiny-llama" and models[2]["folder"] == folder_name(study["qwen"])
    for model in models:
        manifest = json.loads((Path(model["dir"]) / "manifest.json").read_text())
        assert Path(model["dir"]).parent == out and manifest["finished"] is not None
        assert manifest["corpus"]["n_prompts"] == 4 and manifest["corpus"]["max_tokens"] == 32
        assert manifest["analyses"]["scan"]["tol"] == TOL and model["shards_done"] == model["shards_total"] == 2
    table = payload["comparison"]
    assert [row["n_layers"] for row in table["models"]] == [4, 3, 2]
    assert json.loads((out / "comparison.json").read_text()) == table  # the comparison beside the models
    names = sorted(path.name for path in out.iterdir() if path.is_file())
    assert names == ["comparison.json", "fig01-norm-growth.svg", "fig04-sublayer-norms.svg", "fig07-loss-vs-k.svg",
                     "fig09-cosine.svg", "fig12-horizon-vs-depth.svg", "fig13-horizon-vs-growth.svg",
                     "fig14-cosine-drop-vs-depth.svg", "index.html"]
    # The same numbers as compare over the three directories.
    code, stdout, err = run("compare", *(m["dir"] for m in models), "--json")
    assert code == 0, err
    assert json.loads(stdout)["across_models"] == table["across_models"]


def _growth_by_brute_force(means: np.ndarray) -> tuple[float, list[int]]:
    """docs/SCIENCE.md 2.3's window rule and fit, written out: every window of >= 3 rows whose log
    norms lie within rms 0.05 of their least-squares line; the longest, then the smaller rms, then
    the later; its rate exp(slope)."""
    logs = np.log(means)
    best = None
    for start in range(len(logs)):
        for stop in range(start + 2, len(logs)):
            rows = np.arange(start, stop + 1, dtype=np.float64)
            slope, intercept = np.polyfit(rows, logs[start : stop + 1], 1)
            rms = math.sqrt(np.mean((logs[start : stop + 1] - (slope * rows + intercept)) ** 2))
            if rms <= 0.05 and (best is None or (stop - start, -rms, start) > best[0]):
                best = ((stop - start, -rms, start), slope, [start, stop])
    if best is None:
        rows = np.arange(len(logs), dtype=np.float64)
        return math.exp(np.polyfit(rows, logs, 1)[0]), [0, len(logs) - 1]
    return math.exp(best[1]), best[2]


def test_compare_numbers_equal_an_independent_computation_from_parquet(study: dict[str, Any]) -> None:
    table = study["json"]["comparison"]
    across = table["across_models"]
    horizons = {p["label"]: p for p in across["horizon_vs_depth"]["points"]}
    growth_points = {p["label"]: p for p in across["horizon_vs_growth"]["points"]}
    drops = {p["label"]: p for p in across["cosine_drop_vs_depth"]["points"]}
    left_out = {e["label"]: e["reason"] for e in across["cosine_drop_vs_depth"]["left_out"]}
    rates, fractions, ks = [], [], []
    for row in table["models"]:
        label, directory, n_layers = row["label"], Path(row["dir"]), row["n_layers"]
        norms = pd.read_parquet(directory / "norms")
        means = norms.query("site == 'resid_pre' and position > 0").groupby("layer").norm.mean().to_numpy()
        assert len(means) == n_layers + 1
        rate, window = _growth_by_brute_force(means.astype(np.float64))
        assert row["fit_window"] == window
        assert row["growth_rate"] == pytest.approx(rate, rel=1e-6)  # the norms are stored as float32
        assert growth_points[label]["growth_rate"] == row["growth_rate"]
        # The effective horizon: prompt rows weighted by their predictions (n_tokens - 1), then the smallest k
        # whose loss increase is within tol.
        scan = pd.read_parquet(directory / "scan").query("only_layer == -1 and start_layer == 0")
        scan = scan.assign(weight=scan.n_tokens - 1)
        corpus = scan.groupby("k").apply(lambda g: np.average(g.delta_loss, weights=g.weight), include_groups=False)
        within = corpus[corpus <= TOL]
        k = int(within.index.min())
        assert horizons[label]["effective_horizon"] == k and horizons[label]["fraction"] == k / n_layers
        assert row["effective_horizon"] == {"zero": {"0": k}}
        # The median cosine at c = 5 per row; the first row below the level.
        truncate = pd.read_parquet(directory / "truncate").query(f"length == {COSINE_DROP_LENGTH}")
        medians = truncate.groupby("layer").cos.median().to_numpy()
        below = np.flatnonzero(medians < COSINE_DROP_LEVEL)
        if below.size:
            assert drops[label]["row"] == int(below[0]) and drops[label]["depth"] == int(below[0]) / n_layers
            assert drops[label]["median_cosine"] == pytest.approx(medians[below[0]], abs=1e-7)
        else:
            assert label not in drops and f"lowest {medians.min():.3f}, row {int(medians.argmin())}" in left_out[label]
        rates.append(rate)
        fractions.append(k / n_layers)
        ks.append(k)
    growth = across["horizon_vs_growth"]
    assert growth["n"] == 3
    assert growth["spearman"] == pytest.approx(pandas_spearman(rates, fractions))
    assert growth["spearman_layers"] == pytest.approx(pandas_spearman(rates, ks))


def _inputs(study: dict[str, Any]) -> list[FigureInput]:
    loaded = compare.load_all([m["dir"] for m in study["json"]["models"]])
    return [compare.figure_input(item) for item in loaded]


def _offsets(figure: Any, gid: str) -> tuple[float, float]:
    found = [artist for ax in figure.axes for artist in ax.collections if artist.get_gid() == gid]
    assert len(found) == 1, gid
    (x, y), = found[0].get_offsets().tolist()
    return x, y


def test_figure_points_equal_the_compare_json(study: dict[str, Any]) -> None:
    plots = pytest.importorskip("horizon.tui.figures.plots")
    across, inputs = study["json"]["comparison"]["across_models"], _inputs(study)
    figure = plots.horizon_vs_depth(inputs)
    for point in across["horizon_vs_depth"]["points"]:
        name = plots.gid_part(point["label"])
        assert _offsets(figure, f"horizon-point-{name}") == (point["n_layers"], point["effective_horizon"])
        assert _offsets(figure, f"fraction-point-{name}") == (point["n_layers"], point["fraction"])
    growth = across["horizon_vs_growth"]
    figure = plots.horizon_vs_growth(inputs)
    for point in growth["points"]:
        assert _offsets(figure, f"growth-point-{plots.gid_part(point['label'])}") == (point["growth_rate"],
                                                                                   point["fraction"])
    (text,) = [t for ax in figure.axes for t in ax.texts if t.get_gid() == "spearman"]
    assert text.get_text() == f"Spearman \u03c1(rate, k/L) = {growth['spearman']:.2f}, \u03c1(rate, k) = " \
        f"{growth['spearman_layers']:.2f} (n = 3)"
    figure = plots.cosine_drop_vs_depth(inputs)
    for point in across["cosine_drop_vs_depth"]["points"]:
        assert _offsets(figure, f"drop-point-{plots.gid_part(point['label'])}") == (point["n_layers"],
                                                                                   point["depth"])
    # The files the study wrote hold one point per model and the printed coefficient.
    svg = (study["out"] / "fig13-horizon-vs-growth.svg").read_text()
    assert f"{growth['spearman']:.2f}" in svg and "(n = 3)" in svg
    for point in growth["points"]:
        assert f'id="growth-point-{plots.gid_part(point["label"])}"' in svg
    svg = (study["out"] / "fig12-horizon-vs-depth.svg").read_text()
    ids = re.findall(r'id="horizon-point-([^"]+)"', svg)
    assert len([name for name in ids if not name.endswith("-label")]) == len(across["horizon_vs_depth"]["points"]) == 3


class RecordingPlot:
    """A plotext stand-in that keeps the points, texts and titles a terminal figure draws."""

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []
        self.texts: list[str] = []
        self.titles: list[str] = []

    def scatter(self, xs: list[float], ys: list[float], **_: Any) -> None:
        self.points.extend(zip(xs, ys, strict=True))

    def text(self, text: str, *_: Any, **__: Any) -> None:
        self.texts.append(text)

    def title(self, text: str) -> None:
        self.titles.append(text)

    def subplots(self, *_: Any) -> None:
        pass

    def subplot(self, *_: Any) -> RecordingPlot:
        return self

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def test_terminal_points_equal_the_compare_json(study: dict[str, Any]) -> None:
    from horizon.tui.figures import terminal
    from horizon.tui.format import quantise
    from horizon.tui.widgets.scales import recording_margins

    across, inputs = study["json"]["comparison"]["across_models"], _inputs(study)
    plot = RecordingPlot()
    terminal.draw(plot, "horizon_vs_depth", inputs, 160, 42)
    points = across["horizon_vs_depth"]["points"]
    assert plot.points == [(p["n_layers"], p["effective_horizon"]) for p in points] + \
        [(p["n_layers"], quantise(p["fraction"])) for p in points]
    assert plot.texts == [terminal.short_label(p["label"]) for p in points] * 2
    assert plot.texts[2] == "…odels0/tiny-qwen2"  # a long path: its last 17 characters
    growth = across["horizon_vs_growth"]
    plot = RecordingPlot()
    with recording_margins() as margins:
        terminal.draw(plot, "horizon_vs_growth", inputs, 160, 42)
    rates = sorted(p["growth_rate"] for p in growth["points"])
    assert [m.value for m in margins if m.kind == "order"] == rates[:-1]  # each rate's gap to the next
    thresholds = [m for m in margins if m.kind == "threshold"]  # every compared row: Δloss against tol
    assert len(thresholds) == sum(p["effective_horizon"] for p in growth["points"])
    assert all(m.distance == pytest.approx(abs(m.value - TOL)) for m in thresholds)
    assert plot.points == [(quantise(p["growth_rate"]), quantise(p["fraction"])) for p in growth["points"]]
    assert f"ρ(rate, k/L) {growth['spearman']:.2f}" in plot.titles[0] and "n = 3" in plot.titles[0]
    plot = RecordingPlot()
    terminal.draw(plot, "cosine_drop_vs_depth", inputs, 160, 42)
    drop = across["cosine_drop_vs_depth"]
    assert plot.points == [(p["n_layers"], quantise(p["depth"])) for p in drop["points"]]
    assert f"< {drop['level']:.3f} (cos² = 0.5)" in plot.titles[0]
    assert f"{len(drop['left_out'])} left out" in plot.titles[0]


def test_one_model_is_not_a_comparison_over_models(study: dict[str, Any], tmp_path: Path) -> None:
    """Figures 12-14 need two models: with one, they are listed as not drawn, with the reason."""
    code, _, err = run("compare", study["json"]["models"][0]["dir"], "--out", str(tmp_path / "figs"))
    assert code == 0, err
    assert not (tmp_path / "figs" / "fig12-horizon-vs-depth.svg").exists()
    assert "needs two or more models" in (tmp_path / "figs" / "index.html").read_text()


# ----------------------------------------------------------------------------- resuming


def test_rerun_skips_complete_models_and_touches_nothing(study: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "again"
    shutil.copytree(study["out"], out)
    before = {folder: files_of(out / folder) for folder in ("tiny-llama", "tiny-gpt2")}
    code, stdout, err = run("study", "tiny-llama", "tiny-gpt2", "--out", str(out), *SETTINGS, "--json")
    assert code == 0, err
    payload = json.loads(stdout)
    assert [m["status"] for m in payload["models"]] == ["done before", "done before"]
    assert [m["shards_run"] for m in payload["models"]] == [0, 0]
    assert {folder: files_of(out / folder) for folder in before} == before
    assert len(payload["comparison"]["models"]) == 2  # this run's models only
    assert payload["comparison"]["across_models"]["horizon_vs_growth"]["note"] == "n too small"


def test_a_tampered_shard_is_not_trusted(study: dict[str, Any], tmp_path: Path) -> None:
    """Complete is read from the store (row counts and sha256), not from a marker: a shard file
    changed after it was written makes its model run again, and only that shard is redone."""
    out = tmp_path / "tampered"
    shutil.copytree(study["out"], out)
    model = study["json"]["models"][1]["folder"]  # tiny-gpt2
    victim = out / model / "scan" / "shard-00001.parquet"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    kept = out / model / "scan" / "shard-00000.parquet"
    kept_before = files_of(kept.parent)[kept.name]
    code, stdout, err = run("study", "tiny-llama", "tiny-gpt2", "--out", str(out), *SETTINGS, "--json")
    assert code == 0, err
    statuses = {m["spec"]: (m["status"], m["shards_run"]) for m in json.loads(stdout)["models"]}
    assert statuses == {"tiny-llama": ("done before", 0), "tiny-gpt2": ("swept", 1)}
    assert files_of(kept.parent)[kept.name] == kept_before
    assert files_of(victim.parent)[victim.name][1] != hashlib.sha256(bytes(data)).hexdigest()


def test_other_settings_are_refused_per_model_without_loading_it(study: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "other"
    shutil.copytree(study["out"], out)
    before = files_of(out)
    code, stdout, err = run("study", "tiny-llama", "--out", str(out), "--max-prompts", "4", "--max-tokens", "32",
                            "--shard-size", "2", "--tol", "0.1", "--json")
    assert code == 3
    (model,) = json.loads(stdout)["models"]
    assert model["status"] == "failed" and "scan.tol is 0.004 there but 0.1 now" in model["reason"]
    assert len(err.strip().splitlines()) == 1 and "--force" in err
    assert files_of(out) == before  # not even the comparison is rewritten when no model finished


WRAPPER = """
import os, signal, sys
from horizon.core.sweep import sweep
original = sweep.record_shard
def record(root, shard_id, tables, seconds, worker):
    original(root, shard_id, tables, seconds, worker)
    if root.name == sys.argv[1] and shard_id == int(sys.argv[2]):
        os.kill(os.getpid(), getattr(signal, sys.argv[3]))
sweep.record_shard = record
from horizon.tui.cli.app import main
sys.exit(main(sys.argv[4:]))
"""


def _stopped_run(folder: str, shard: int, sig: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``horizon ARGS`` in a subprocess that sends itself ``sig`` once ``folder``'s shard is recorded."""
    return subprocess.run([sys.executable, "-c", WRAPPER, folder, str(shard), sig, *args], capture_output=True,
                          text=True, timeout=900)


def test_resume_after_kill_9(study: dict[str, Any], tmp_path: Path) -> None:
    """kill -9 once the second model's first shard is written: the rerun keeps the first model's
    files and that shard as they are, and completes the rest."""
    out = tmp_path / "killed"
    args = ("study", "tiny-llama", "tiny-gpt2", "--out", str(out), *SETTINGS)
    killed = _stopped_run("tiny-gpt2", 0, "SIGKILL", *args)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "comparison.json").exists()
    first = files_of(out / "tiny-llama")
    second = {name: value for name, value in files_of(out / "tiny-gpt2").items() if "shard-00000" in name}
    assert len(second) == 6 and not any("shard-00001" in name for name in files_of(out / "tiny-gpt2"))
    code, stdout, err = run(*args, "--json")
    assert code == 0, err
    payload = json.loads(stdout)
    assert [(m["status"], m["shards_run"]) for m in payload["models"]] == [("done before", 0), ("swept", 1)]
    assert files_of(out / "tiny-llama") == first
    now = files_of(out / "tiny-gpt2")
    assert {name: now[name] for name in second} == second
    assert sum("shard-00001" in name for name in now) == 6
    # The resumed sweep has the numbers of the undisturbed one.
    for table in ("norms", "scan", "truncate"):
        resumed = pd.read_parquet(out / "tiny-gpt2" / table)
        whole = pd.read_parquet(study["out"] / "tiny-gpt2" / table)
        pd.testing.assert_frame_equal(resumed, whole)
    assert payload["comparison"]["across_models"]["horizon_vs_depth"]["points"] == \
        [p for p in study["json"]["comparison"]["across_models"]["horizon_vs_depth"]["points"] if p["n_layers"] > 2]


def test_ctrl_c_is_one_line_and_resumable(tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    stopped = _stopped_run("tiny-llama", 0, "SIGINT", "study", "tiny-llama", "--out", str(out), *SETTINGS)
    assert stopped.returncode == 130, stopped.stderr
    lines = stopped.stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and "run the same command again" in lines[0]
    assert (out / "tiny-llama" / "scan" / "shard-00000.parquet").is_file()


def test_a_model_that_fails_to_load_or_verify_is_skipped(study: dict[str, Any], tmp_path: Path) -> None:
    """An unknown spec and a model refused by verification (BLOOM adding the normed stream back):
    one line each, exit code 3, the other model compared."""
    out = tmp_path / "failing"
    out.mkdir()
    shutil.copytree(study["out"] / "tiny-llama", out / "tiny-llama")  # done before: not swept again
    broken = save_family_dir("bloom_post_ln_residual", tmp_path / "bloom-post-ln")
    code, stdout, err = run("study", "no-such-model", str(broken), "tiny-llama", "--out", str(out), *SETTINGS,
                            "--json")
    assert code == 3
    models = json.loads(stdout)["models"]
    assert [m["status"] for m in models] == ["failed", "failed", "done before"]
    assert "unknown model 'no-such-model'" in models[0]["reason"] and "decomposition" in models[1]["reason"]
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all("skipped, the other models went on" in line for line in lines)
    assert json.loads(stdout)["comparison"]["models"][0]["label"] == "tiny-llama"
    assert not (out / folder_name(str(broken))).exists()  # nothing written for a model that never loaded


def test_plan_sums_the_models_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "planned"
    code, stdout, err = run("study", "tiny-llama", "tiny-gpt2", "no-such-model", "--out", str(out), "--plan",
                            "--json", "--max-prompts", "4", "--max-tokens", "32")
    assert code == 3 and not out.exists()
    payload = json.loads(stdout)
    planned = [m for m in payload["models"] if m["plan"] is not None]
    assert [m["n_layers"] for m in planned] == [4, 3] and payload["models"][2]["error"]
    total = payload["total"]
    assert total["seconds"] == pytest.approx(sum(m["plan"]["total"]["seconds"] for m in planned), abs=0.02)
    assert total["disk_bytes"] == sum(m["plan"]["total"]["disk_bytes"] for m in planned)
    assert total["peak_bytes"] == max(m["plan"]["total"]["peak_bytes"] for m in planned)
    assert all(m["plan"]["n_prompts"] == 4 for m in planned)
    assert "no-such-model" in err and len(err.strip().splitlines()) == 1


def test_a_folder_holding_another_models_sweep_is_not_taken_for_it(study: dict[str, Any], tmp_path: Path) -> None:
    """The skip reads the model too: tiny-llama's complete sweep in tiny-gpt2's folder is not
    tiny-gpt2's; the sweep, which checks the weights' hash, refuses the folder."""
    out = tmp_path / "swapped"
    out.mkdir()
    shutil.copytree(study["out"] / "tiny-llama", out / "tiny-gpt2")
    before = files_of(out)
    code, stdout, err = run("study", "tiny-gpt2", "--out", str(out), *SETTINGS, "--json")
    assert code == 3 and len(err.strip().splitlines()) == 1
    (model,) = json.loads(stdout)["models"]
    assert model["status"] == "failed" and "model_hash" in model["reason"]
    assert files_of(out) == before
