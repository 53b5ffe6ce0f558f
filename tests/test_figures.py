"""Exported figures: read the SVGs back and count the series and axes they hold; index.html; errors."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.figure_sweeps import gpt2_dir, llama_dir

FIXTURES = (llama_dir, gpt2_dir)  # the shared sweeps, used as fixtures below

pytest.importorskip("matplotlib")

SVG = "{http://www.w3.org/2000/svg}"


def groups(path: Path) -> list[str]:
    """The ids of every <g> of an SVG, and of its <image>s (an image's gid lands on the element itself)."""
    root = ET.parse(path).getroot()
    return [element.get("id", "") for tag in ("g", "image") for element in root.iter(f"{SVG}{tag}")]


def count(ids: list[str], prefix: str) -> int:
    return sum(1 for value in ids if value.startswith(prefix))


def test_compare_figures_overlay_two_models(llama_dir: Path, gpt2_dir: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "cmp"
    code, _, err = run_cli("compare", str(llama_dir), str(gpt2_dir), "--out", str(out))
    assert code == 0, err
    assert sorted(path.name for path in out.iterdir()) == [
        "fig01-norm-growth.svg", "fig04-sublayer-norms.svg", "fig07-loss-vs-k.svg", "fig09-cosine.svg",
        "fig12-horizon-vs-depth.svg", "fig13-horizon-vs-growth.svg", "fig14-cosine-drop-vs-depth.svg", "index.html"]
    ids = groups(out / "fig01-norm-growth.svg")
    assert count(ids, "norm-line-") == 2 and count(ids, "fit-line-") == 2 and count(ids, "bos-line-") == 2
    assert {"norm-line-tiny-llama", "norm-line-tiny-gpt2", "fit-line-tiny-llama"} <= set(ids)
    assert "axes-norm-growth-logy" in ids
    ids = groups(out / "fig04-sublayer-norms.svg")
    assert count(ids, "attn-line-") == 2 and count(ids, "mlp-line-") == 2 and count(ids, "resid-line-") == 2
    assert "axes-sublayer-norms-logy" in ids
    ids = groups(out / "fig07-loss-vs-k.svg")  # llama: S=0 zero; gpt2: S=0 and S=1, mean
    assert sorted(value for value in ids if value.startswith("loss-line-")) == [
        "loss-line-tiny-gpt2-s0-mean", "loss-line-tiny-gpt2-s1-mean", "loss-line-tiny-llama-s0-zero"]
    assert count(ids, "clean-line-") == 2 and count(ids, "tol-band-") == 2
    ids = groups(out / "fig09-cosine.svg")  # llama: c = 1, 5, 10; gpt2: c = 1, 5
    assert count(ids, "cos-line-tiny-llama-") == 3 and count(ids, "cos-line-tiny-gpt2-") == 2
    assert count(ids, "cos-band-") == 5
    index = (out / "index.html").read_text()
    assert all(name in index for name in ("fig01-norm-growth.svg", "fig09-cosine.svg"))


def test_figures_from_one_directory(llama_dir: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "figs"
    code, _, err = run_cli("figures", str(llama_dir), "--out", str(out))
    assert code == 0, err
    names = sorted(path.name for path in out.iterdir())
    assert names == ["fig01-norm-growth.svg", "fig02-norm-distribution.svg", "fig03-position-norms.svg",
                     "fig04-sublayer-norms.svg", "fig07-loss-vs-k.svg", "fig08-layer-k-matrix.svg",
                     "fig09-cosine.svg", "fig10-categories.svg", "fig11-attention-distance.svg", "index.html"]
    # The weight figures need a live model: one line each, and in index.html.
    assert "fig05-weights not drawn" in err and "fig06-mlp-random not drawn" in err
    index = (out / "index.html").read_text()
    assert "Not drawn" in index and "fig05-weights" in index
    assert index.count("<img ") == 9
    ids = groups(out / "fig02-norm-distribution.svg")
    assert count(ids, "hist-row-") == 5  # tiny-llama: 4 layers and the final row
    assert "position-norms" in groups(out / "fig03-position-norms.svg")
    assert "layer-k-matrix" in groups(out / "fig08-layer-k-matrix.svg")
    assert count(groups(out / "fig10-categories.svg"), "axes-categories-c") == 3
    assert "attention-distance" in groups(out / "fig11-attention-distance.svg")


def test_exports_are_deterministic_and_other_formats(llama_dir: Path, tmp_path: Path, run_cli) -> None:
    for name in ("a", "b"):
        assert run_cli("compare", str(llama_dir), "--out", str(tmp_path / name))[0] == 0
    for path in (tmp_path / "a").iterdir():
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
    for fmt, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF")):
        code, _, err = run_cli("compare", str(llama_dir), "--out", str(tmp_path / fmt), "--format", fmt, "--x",
                               "depth")
        assert code == 0, err
        assert (tmp_path / fmt / f"fig01-norm-growth.{fmt}").read_bytes().startswith(magic)


def test_live_model_figures(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "live"
    code, _, err = run_cli("figures", "--model", "tiny-llama", "--device", "cpu", "--prompt",
                           "The bridge was closed after the storm, and the ferry ran twice a day.", "--out", str(out))
    assert code == 0, err
    ids = groups(out / "fig05-weights.svg")
    assert count(ids, "ov-heads-") == 4 and "attn-line" in ids
    ids = groups(out / "fig06-mlp-random.svg")
    assert {"mlp-random-line", "rate-line-real", "rate-line-random", "rate-line-resampled"} <= set(ids)
    assert count(groups(out / "fig01-norm-growth.svg"), "norm-line-") == 1
    assert "fig07-loss-vs-k not drawn" in err  # a live run measures norms and weights only


def test_a_live_run_beside_a_directory_of_the_same_model(llama_dir: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "both"
    code, _, err = run_cli("figures", str(llama_dir), "--model", "tiny-llama", "--device", "cpu", "--prompt",
                           "A short prompt about the weather in the hills.", "--out", str(out))
    assert code == 0, err
    ids = groups(out / "fig01-norm-growth.svg")
    assert {"norm-line-tiny-llama", "norm-line-tiny-llama_live"} <= set(ids) and count(ids, "norm-line-") == 2
    assert (out / "fig05-weights-tiny-llama_live.svg").exists() and not (out / "fig05-weights-tiny-llama.svg").exists()
    assert (out / "fig07-loss-vs-k.svg").exists()


def test_bad_input_is_one_line_and_writes_nothing(llama_dir: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "figs"
    for args, words in ((["--format", "gif"], "--format"), (["--x", "width"], "--x"), ([], "give results")):
        code, stdout, err = run_cli("figures", *([str(llama_dir)] if args else []), *args, "--out", str(out))
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1 and words in err
    code, _, err = run_cli("figures", str(tmp_path / "missing"), "--out", str(out))
    assert code == 2 and "not found" in err
    code, _, err = run_cli("figures", str(llama_dir), "--prompt", "hello", "--out", str(out))
    assert code == 2 and "--model" in err
    assert not out.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli("figures", str(llama_dir), "--out", str(blocker / "figs"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot write" in err


def test_a_failed_export_leaves_nothing_half_written(llama_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from horizon.core.results.store import WriteError
    from horizon.core.sources import compare
    from horizon.tui.figures import export

    inputs = [compare.figure_input(compare.load(llama_dir))]
    figures, skipped = export.build(inputs)
    calls = []

    def failing(figure, path, fmt):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        path.write_bytes(b"<svg/>")

    monkeypatch.setattr(export, "_write", failing)
    out = tmp_path / "figs"
    with pytest.raises(WriteError, match="no space left"):
        export.export(figures, skipped, out)
    assert list(out.iterdir()) == []


def test_report_does_not_import_matplotlib(llama_dir: Path) -> None:
    code = ("import sys; from horizon.tui.cli.app import main; rc = main(['report', sys.argv[1], '--json']); "
            "sys.exit(rc if rc else (3 if 'matplotlib' in sys.modules else 0))")
    finished = subprocess.run([sys.executable, "-c", code, str(llama_dir)], capture_output=True, text=True,
                              timeout=120)
    assert finished.returncode == 0, finished.stderr


def test_the_engines_result_types_draw_every_figure(tiny_llama, tmp_path: Path) -> None:
    """What the app holds (NormsReport, ScanResult, TruncationReport, AttentionReport, weights) draws 1-7, 9-11."""
    from horizon.core.analyses.attention.engine import attention_distance
    from horizon.core.analyses.norms.engine import analyse_norms
    from horizon.core.analyses.norms.weights import weight_report
    from horizon.core.analyses.scan.engine import scan
    from horizon.core.analyses.truncate.engine import analyse_truncation
    from horizon.core.model.prompts import decode_tokens, tokenize
    from horizon.core.sources.compare import live_figure_input
    from horizon.tui.figures import export

    token_ids = tokenize(tiny_llama, ["The bridge was closed after the storm, and the ferry ran twice a day."])
    tokens = [decode_tokens(tiny_llama, ids) for ids in token_ids]
    figure = live_figure_input(
        "tiny-llama", analyse_norms(tiny_llama, token_ids, True), tokens,
        weight_report(tiny_llama, "raw", token_ids), scan=scan(tiny_llama, token_ids, start_layers=(0, 1)),
        truncation=analyse_truncation(tiny_llama, token_ids), attention=attention_distance(tiny_llama, token_ids, True))
    figures, skipped = export.build([figure], x="depth")
    assert [name for name, _ in skipped] == ["fig08-layer-k-matrix", "fig12-horizon-vs-depth",  # 12-14: one model
                                             "fig13-horizon-vs-growth", "fig14-cosine-drop-vs-depth"]
    export.export(figures, skipped, tmp_path)
    ids = groups(tmp_path / "fig07-loss-vs-k.svg")
    assert sorted(value for value in ids if value.startswith("loss-line-")) == [
        "loss-line-tiny-llama-s0-zero", "loss-line-tiny-llama-s1-zero"]
    assert count(groups(tmp_path / "fig09-cosine.svg"), "cos-line-tiny-llama-c") == 3
