"""Issue 24, classes 2, 5 and 6 (text and figures): what a crafted results directory or input file can print.

2. Every string read from a results directory (manifest fields and settings, views.json, Parquet text)
   reaches the terminal, index.html and the SVGs escaped: no OSC 8 link, ESC, BEL or live markup.
5. Crafted views.json in compare (MarkupError, IndexError) and figures (KeyError, ValueError), a
   lone surrogate in a JSONL corpus: one line or a warning, never a traceback.
6. Library warnings kept off stderr, 20 models in one figure (legend below the axes, 20 colours), the
   same directory twice named, an export that leaves no figure of an earlier one, a BOM stripped,
   library messages kept whole, --batch-size capped at the prompt count.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
from horizon.core.results import store

from tests.hostile_helpers import RAW_CONTROL, assert_one_line, copy_of, run_bounded, shared_sweep

EVIL = "\x1b]8;;http://x\x07click\x1b]8;;\x07[blink]B[/blink][link=http://y]L[/link][bold red]<script>s</script>"
OSC8 = "\x1b]8;"
BLINK = re.compile(r"\x1b\[(?:\d+;)*5m")


@pytest.fixture
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return shared_sweep(tmp_path_factory)


def _views(root: Path, change) -> None:  # type: ignore[no-untyped-def]
    """Edit views.json and record its new checksum (the cache checks only itself: anyone can)."""
    from horizon.core.results.views import views_sha256

    payload = json.loads((root / "views.json").read_text())
    change(payload["views"])
    payload["sha256"] = views_sha256(payload["views"])
    (root / "views.json").write_text(json.dumps(payload))


def _crafted(clean: Path, target: Path) -> Path:
    root = copy_of(clean, target)
    manifest = json.loads((root / store.MANIFEST).read_text())
    manifest["model"]["spec"] = "spec" + EVIL
    manifest["corpus"]["name"] = EVIL
    manifest["dtype"] = EVIL
    manifest["device"] = EVIL
    manifest["analyses"]["scan"]["source"] = EVIL
    (root / store.MANIFEST).write_text(json.dumps(manifest))

    def change(views):  # type: ignore[no-untyped-def]
        views["scan"]["ablation"] = EVIL
        views["norms"]["growth"]["chosen"] = EVIL
        shortest = str(min(views["truncate"]["lengths"]))
        views["truncate"]["categories"][shortest]["cat" + EVIL] = [0.5] * (views["truncate"]["n_layers"] + 1)
        views["truncate"]["categories"][shortest]["count"]["cat" + EVIL] = 3
        views["truncate"]["outliers"][0].update(token=EVIL, context_before=EVIL, context_after=EVIL)
        views["scan"]["effective_horizon"] = {EVIL: 1}

    _views(root, change)
    return root


# ----------------------------------------------------------------------------- 2. markup and escapes


def test_the_detector_sees_what_rich_would_send() -> None:
    """The checks below can fail: Rich, forced to a terminal, turns this markup into an OSC 8 link and blink."""
    from rich.console import Console

    buffer = io.StringIO()
    Console(file=buffer, force_terminal=True).print("[link=http://x]a[/link] [blink]b[/blink]")
    assert OSC8 in buffer.getvalue() and BLINK.search(buffer.getvalue())


def _no_escape(text: str) -> None:
    assert OSC8 not in text and not BLINK.search(text), repr(text[:400])


def test_no_stored_string_reaches_a_terminal_unescaped(swept, tmp_path: Path) -> None:
    _, clean = swept
    root = _crafted(clean, tmp_path / "results")
    commands = [["report", str(root)], ["report", str(root), "--json"], ["compare", str(root), str(clean)],
                ["compare", str(root), str(clean), "--out", str(tmp_path / "compared")],
                ["figures", str(root), "--out", str(tmp_path / "figures")]]
    plain = run_bounded(commands)
    for code, out, err in plain:  # not a terminal: nothing but visible text
        assert code == 0, err
        assert "\x1b" not in out + err and "\x07" not in out + err and not RAW_CONTROL.search(out + err)
    assert "[blink]B[/blink]" in plain[0][1], "stored markup is shown as text"
    assert json.loads(plain[1][1])["model"]["spec"].startswith("spec\\x1b]8;;"), "--json keeps it, made visible"
    for code, out, err in run_bounded(commands, env={"FORCE_COLOR": "1", "COLUMNS": "200"}):  # a terminal
        assert code == 0, err
        _no_escape(out + err)
    for folder in ("compared", "figures"):
        exported = list((tmp_path / folder).iterdir())
        assert any(file.suffix == ".svg" for file in exported)
        for file in exported:
            text = file.read_text(encoding="utf-8")
            assert "\x1b" not in text and "\x07" not in text, file
            assert "<script>" not in text, file  # HTML- and XML-escaped


# ----------------------------------------------------------------------------- 5. crafted views.json


VIEW_FAULTS = {
    "fit window of one layer (IndexError)": lambda v: v["norms"]["growth"].update(fit_layers=[1]),
    "markup in a horizon key (MarkupError)": lambda v: v["scan"].update(effective_horizon={"[/]": 1, "0": "[/b]"}),
    "no resid_pre (KeyError)": lambda v: v["norms"]["sites"].pop("resid_pre"),
    "a length that is not a number (ValueError)": lambda v: v["truncate"]["median_cos"].update({"abc": [0.1]}),
    "a rate that is not a number": lambda v: v["norms"]["growth"].update(rate="fast"),
    "rows of strings": lambda v: v["scan"].update(rows=[{"k": "x", "start_layer": "[/]", "loss": "y"}]),
}


@pytest.mark.parametrize("fault", list(VIEW_FAULTS))
def test_a_crafted_views_cache_is_replaced_not_a_traceback(fault: str, swept, tmp_path: Path) -> None:
    _, clean = swept
    root = copy_of(clean, tmp_path / "results")
    _views(root, VIEW_FAULTS[fault])
    compare, figures, report = run_bounded([
        ["compare", str(root), str(clean), "--out", str(tmp_path / "compared")],
        ["figures", str(root), "--out", str(tmp_path / "figures")],
        ["report", str(root)],
    ])
    assert_one_line(*compare, (0,), max_lines=6)
    assert_one_line(*figures, (0,), max_lines=20)
    assert_one_line(*report, (0,))
    assert (tmp_path / "figures" / "fig01-norm-growth.svg").is_file(), "drawn from the views of the tables"
    assert (tmp_path / "compared" / "fig01-norm-growth.svg").is_file()


def test_a_lone_surrogate_in_a_corpus_is_one_line(tmp_path: Path, run_cli) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "fine"}\n{"text": "a \\ud800 b"}\n', encoding="utf-8")
    assert_one_line(*run_cli("tokens", "-m", "tiny-llama", "-f", str(corpus)), (2,), "line 2")
    assert_one_line(*run_cli("sweep", str(corpus), "--out", str(tmp_path / "out"), "-m", "tiny-llama"), (2,),
                    "surrogate")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- 6. figures, warnings, messages


def test_twenty_models_get_twenty_colours_and_axes_of_their_own(swept) -> None:
    from dataclasses import replace

    from horizon.core.sources import compare
    from horizon.tui.figures import export

    _, clean = swept
    one = compare.figure_input(compare.load(clean))
    inputs = [replace(one, label=f"model {index}") for index in range(20)]
    figures, _ = export.build(inputs, only=("fig01-norm-growth", "fig04-sublayer-norms", "fig09-cosine"))
    for stem, _, figure in figures:
        figure.canvas.draw()  # lay it out as saving would
        (ax,) = figure.axes[:1]
        assert ax.get_position().height > 0.25, stem  # the legend is below the axes, not over them
        colours = {line.get_gid(): line.get_color() for line in ax.get_lines() if line.get_gid()
                   and line.get_gid().startswith(("norm-line", "resid-line", "cos-line-"))}
        per_model = {gid.split("-")[-1] if not gid.startswith("cos") else gid.split("-c")[0]: colour
                     for gid, colour in colours.items()}
        assert len({str(colour) for colour in per_model.values()}) == 20, stem


def test_figures_and_compare_print_no_library_warning(swept, tmp_path: Path) -> None:
    _, clean = swept
    many = []
    for index in range(20):
        copy = copy_of(clean, tmp_path / f"d{index}")
        manifest = json.loads((copy / store.MANIFEST).read_text())
        manifest["model"]["spec"] = f"模型 model number {index} \x1b\x07"  # glyphs the font lacks, raw escapes
        (copy / store.MANIFEST).write_text(json.dumps(manifest))
        many.append(str(copy))
    compared, drawn = run_bounded([["compare", *many, "--out", str(tmp_path / "compared"), "--format", "png"],
                                   ["figures", *many[:2], "--out", str(tmp_path / "figures")]])
    for code, out, err in (compared, drawn):
        assert code == 0, err
        assert "Warning" not in err and ".py:" not in err and "Glyph" not in err, err
        assert not RAW_CONTROL.search(out + err)


def test_the_same_directory_twice_is_named(swept, run_cli) -> None:
    _, clean = swept
    code, _out, err = run_cli("compare", str(clean), str(clean) + "/")
    assert code == 0 and "same directory" in err, err


def test_an_export_leaves_no_figure_of_an_earlier_one(swept, tmp_path: Path, run_cli) -> None:
    _, clean = swept
    other = copy_of(clean, tmp_path / "other")
    out = tmp_path / "figures"
    assert run_cli("figures", str(clean), str(other), "--out", str(out))[0] == 0
    first = {path.name for path in out.iterdir()}
    assert any("-other" in name or "_other" in name or "(other)" in name or name.endswith("-2.svg")
               for name in first) or len(first) > 9
    (out / "notes.txt").write_text("mine")
    (out / "fig99-mine.svg").write_text("<svg/>")  # named like a figure, but not written by an export
    assert run_cli("figures", str(clean), "--out", str(out))[0] == 0
    second = {path.name for path in out.iterdir()}
    listed = set(re.findall(r'src="([^"]+)"', (out / "index.html").read_text()))
    assert second == listed | {"index.html", "notes.txt", "fig99-mine.svg"}, second ^ (listed | {"index.html"})
    assert first - second, "the earlier export's own figures are gone"


def test_a_byte_order_mark_is_not_a_token(tmp_path: Path, run_cli) -> None:
    with_bom, without = tmp_path / "bom.txt", tmp_path / "plain.txt"
    with_bom.write_bytes(b"\xef\xbb\xbfHello there, world.\n")
    without.write_bytes(b"Hello there, world.\n")
    first = json.loads(run_cli("tokens", "-m", "tiny-llama", "-f", str(with_bom), "--json")[1])
    second = json.loads(run_cli("tokens", "-m", "tiny-llama", "-f", str(without), "--json")[1])
    assert first["token_ids"] == second["token_ids"] and first["tokens"][0][1] == "Hello"


def test_library_messages_are_kept_whole() -> None:
    from horizon.core.errors import library_reason

    cut = ValueError("Couldn't instantiate the backend tokenizer from one of: \n(1) a `tokenizers` library "
                     "serialization file, \n(2) a slow tokenizer instance to convert.")
    assert library_reason(cut).endswith("(2) a slow tokenizer instance to convert.")
    assert "\n" not in library_reason(cut)
    pointing = RuntimeError("You set `ignore_mismatched_sizes` to `False`, thus raising an error. For details look "
                            "at the above report!")
    assert "above report" not in library_reason(pointing) and "shapes" in library_reason(pointing)


@pytest.mark.parametrize("command", ["norms", "truncate", "scan"])
def test_a_huge_batch_size_is_capped_at_the_prompt_count(command: str, run_cli) -> None:
    code, _out, err = run_cli(command, "-m", "tiny-llama", "--device", "cpu", "-p", "The cat sat on the mat.",
                             "--batch-size", "1000000000", "--json")
    assert code == 0, err


def test_the_batch_plan_caps_a_requested_size() -> None:
    from horizon.core.memory.budget import ModelDims, make_budget, plan

    dims = ModelDims(n_layers=2, d_model=32, n_heads=2, d_mlp=64, vocab=100)
    budget = make_budget(2 << 30, dims, "cpu", measured=False)  # not this test process's own size
    assert plan("norms", dims, [10, 12, 8], budget, requested=10**9).batch_size == 3
    assert plan("norms", dims, [10, 12, 8], budget, requested=2).batch_size == 2


def test_an_index_from_elsewhere_never_makes_an_export_remove_a_file(tmp_path: Path) -> None:
    """An index.html that lists a name outside the folder, or not ours, never makes an export remove it."""
    from horizon.tui.figures import export

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "precious.svg").write_text("x")
    (out / "index.html").write_text('<!-- horizon-figures: ["../precious.svg", "notes.txt", "fig01-a.svg"] -->')
    (out / "notes.txt").write_text("mine")
    (out / "fig01-a.svg").symlink_to(tmp_path / "precious.svg")
    export.export([], [], out)
    assert (tmp_path / "precious.svg").read_text() == "x" and (out / "notes.txt").exists()
    assert (out / "fig01-a.svg").is_symlink(), "a link is not ours to remove"
    shutil.rmtree(out)


def test_lone_surrogates_and_bytes_that_are_not_utf8_in_a_results_directory(swept, tmp_path: Path) -> None:
    """A manifest string with a lone surrogate (JSON can escape one), a Parquet text column of invalid UTF-8:
    shown escaped, or left out and named; never a UnicodeEncodeError or UnicodeDecodeError traceback."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.hostile_helpers import reseal

    _, clean = swept
    root = copy_of(clean, tmp_path / "results")
    manifest = json.loads((root / store.MANIFEST).read_text())
    manifest["model"]["spec"] = "spec\ud800"
    manifest["corpus"]["name"] = "\udcff"
    (root / store.MANIFEST).write_text(json.dumps(manifest))
    file = root / "tokens" / "shard-00001.parquet"
    table = pq.read_table(file)
    offsets = pa.array([2 * row for row in range(table.num_rows + 1)], pa.int32()).buffers()[1]
    invalid = pa.Array.from_buffers(pa.string(), table.num_rows,
                                    [None, offsets, pa.py_buffer(b"\xff\xfe" * table.num_rows)])
    pq.write_table(table.set_column(table.schema.get_field_index("token"), "token", invalid), file)
    reseal(root)
    report, compare, figures, session = run_bounded([
        ["report", str(root)], ["compare", str(root), str(clean)],
        ["figures", str(root), "--out", str(tmp_path / "figures")], ["@session", str(root)]])
    for (code, out, err), most in ((report, 3), (compare, 6), (figures, 20), (session, 3)):
        assert_one_line(code, out, err, (0,), max_lines=most)
    assert "spec\\ud800" in report[1] and "tokens/shard-00001.parquet is damaged" in report[2]
