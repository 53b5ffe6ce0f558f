"""Every command of the installed wheel, run from outside the repository on the tiny models.

Run by tests/smoke/installed.py with the fresh venv's interpreter, from an empty folder. A plain
script (no pytest, nothing imported from the repository): it asserts exit codes, stdout/stderr and
the JSON keys and invariants of each command, and stops at the first failure with what ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import sysconfig
import time
from importlib.metadata import version
from pathlib import Path

BIN = Path(sys.executable).parent
HORIZON = str(BIN / "horizon")
PROMPT = "The capital of France is Paris. It is known for the Eiffel Tower, and its food is famous."
MODEL = ("--model", "tiny-llama", "--device", "cpu")
CORPUS = ("The cat sat on the mat. It was warm in the sun.\n\nRome is the capital of Italy and has many old "
          "churches.\n\nWater boils at one hundred degrees at sea level.\n\nThe train left the station at noon.\n")
TIMINGS: list[tuple[str, float]] = []


def run(*args: str, expect: int = 0, command: tuple[str, ...] = (HORIZON,)) -> subprocess.CompletedProcess[str]:
    """Run a command; assert its exit code and that nothing on stderr is a traceback."""
    started = time.perf_counter()
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=600)
    TIMINGS.append((" ".join(args[:1]) or command[-1], time.perf_counter() - started))
    shown = " ".join([Path(command[0]).name, *command[1:], *args])
    assert done.returncode == expect, f"{shown}: exit {done.returncode}, expected {expect}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, f"{shown}: traceback on stderr\n{done.stderr[-3000:]}"
    return done


def run_json(*args: str, keys: tuple[str, ...]) -> dict:
    payload = json.loads(run(*args, "--json").stdout)
    missing = [key for key in keys if key not in payload]
    assert not missing, f"horizon {args[0]} --json lacks {missing} (has {sorted(payload)})"
    return payload


def close(a: float, b: float, tol: float = 1e-5) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def check_installed() -> None:
    """The package comes from the venv's site-packages, not from a checkout, and this folder has none."""
    import horizon

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert Path(horizon.__file__).resolve() == site / "horizon" / "__init__.py", horizon.__file__
    assert not any(Path.cwd().joinpath(name).exists() for name in ("core", "tui", "pyproject.toml"))
    for data in ("core/data/corpus.jsonl", "tui/app.tcss", "tui/screens/compare.tcss", "py.typed"):
        assert (site / "horizon" / data).is_file(), data


def check_version() -> None:
    expected = f"horizon {version('horizon-inspector')}\n"
    assert run("--version").stdout == expected
    assert run("--version", command=(sys.executable, "-m", "horizon")).stdout == expected
    lines = run("--version", "--verbose").stdout.splitlines()
    assert lines[0] == expected.strip() and lines[1] == f"torch {version('torch')}", lines
    assert lines[2] == f"transformers {version('transformers')}" and lines[3].startswith("TransformerLens ")
    assert lines[-1].startswith("device "), lines
    assert run("nonsense", expect=2).stderr.startswith("horizon: error:")
    assert "norms" in run("--help").stdout


def check_single_prompt_commands() -> None:
    models = {row["name"]: row for row in run_json("models", keys=("models",))["models"]}
    for name in ("smollm2-135m", "gemma3-270m", "tiny-llama", "tiny-gpt2"):
        assert models[name]["available"], models[name]

    tokens = run_json("tokens", *MODEL, "--prompt", PROMPT, keys=("model", "n_ctx", "bos", "token_ids", "tokens"))
    ids = tokens["token_ids"][0]
    assert tokens["bos"] is True and len(ids) == len(tokens["tokens"][0]) > 10

    norms = run_json("norms", *MODEL, "--prompt", PROMPT,
                     keys=("model", "token_ids", "tokens", "n_layers", "d_model", "sites", "growth", "bos", "memory"))
    assert norms["token_ids"][0] == ids and norms["n_layers"] == 4
    for site in ("resid_pre", "resid_post", "attn_out", "mlp_out"):
        assert set(norms["sites"][site]) >= {"mean_norm", "median_norm", "std", "quantiles", "per_position"}
        assert all(value > 0 for value in norms["sites"][site]["mean_norm"])
    assert {"ratios", "rate", "fit_layers", "r2"} <= set(norms["growth"])

    patch = run_json("patch", *MODEL, "--prompt", PROMPT, "--k", "1",
                     keys=("k", "K", "loss_clean", "loss_patched", "delta_loss", "kl", "top1_agreement", "per_token"))
    assert close(patch["delta_loss"], patch["loss_patched"] - patch["loss_clean"], 1e-4)
    assert patch["kl"] >= 0 and 0 <= patch["top1_agreement"] <= 1

    scan = run_json("scan", *MODEL, "--prompt", PROMPT,
                    keys=("model", "token_ids", "loss_clean", "rows", "effective_horizon", "tol", "ablation"))
    assert [row["k"] for row in scan["rows"]] == [1, 2, 3, 4, 5]
    assert close(scan["loss_clean"], patch["loss_clean"])
    assert close(scan["rows"][0]["delta_loss"], patch["delta_loss"], 1e-4)  # k = 1 is the patch above
    full = scan["rows"][-1]  # k = L + 1: nothing is cut, the clean model
    assert abs(full["delta_loss"]) < 1e-5 and abs(full["kl"]) < 1e-5 and full["top1_agreement"] == 1.0

    truncate = run_json("truncate", *MODEL, "--prompt", PROMPT, "--lengths", "1,2",
                        keys=("model", "token_ids", "lengths", "n_layers", "median_cos", "quartiles_cos",
                              "median_cos_raw", "categories", "per_token", "outliers"))
    assert truncate["lengths"] == [1, 2] and set(truncate["median_cos"]) == {"1", "2"}
    for curve in truncate["median_cos"].values():
        assert len(curve) == 5 and close(curve[0], 1.0) and all(-1 <= c <= 1 + 1e-6 for c in curve)

    attention = run_json("attention", *MODEL, "--prompt", PROMPT,
                         keys=("model", "token_ids", "n_layers", "n_heads", "mean_distance", "mean_distance_no_bos",
                               "mass", "mass_no_bos", "sliding_window"))
    assert len(attention["mean_distance"]) == 4 and all(len(row) == attention["n_heads"]
                                                        for row in attention["mean_distance"])
    for layer in range(4):
        for head in range(attention["n_heads"]):
            total = sum(attention["mass"][bucket][layer][head] for bucket in attention["mass"])
            assert close(total, 1.0, 1e-4), (layer, head, total)

    verify = run_json("verify", *MODEL, keys=("spec", "architecture", "checks", "passed", "prompt"))
    assert verify["passed"] is True and all(check["passed"] is not False for check in verify["checks"])


def check_sweep_commands(work: Path) -> None:
    corpus = work / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    shards = []
    for shard in ("0/2", "1/2"):
        out = work / f"shard{shard[0]}"
        summary = run_json("sweep", str(corpus), *MODEL, "--out", str(out), "--shard", shard, "--shard-size", "2",
                           "--lengths", "1,2", "--quiet", keys=("out", "analyses", "shards_total", "shards_done",
                                                                "prompts_run", "tokens_run"))
        assert summary["shards_total"] == 2 and summary["prompts_run"] == 2, summary
        assert (out / "manifest.json").is_file()
        shards.append(str(out))
    merged = work / "merged"
    manifest = run_json("merge", *shards, "--out", str(merged), keys=("out", "sources", "shards_done", "shards_total"))
    assert manifest["shards_done"] == manifest["shards_total"] == 2
    report = run_json("report", str(merged), keys=("model", "corpus", "settings", "norms", "truncate", "scan",
                                                   "attention", "problems"))
    assert report["corpus"]["n_prompts"] == 4 and report["problems"] == [] and report["model"]["n_layers"] == 4
    assert [row["k"] for row in report["scan"]["rows"]] == [1, 2, 3, 4, 5]
    assert "norms" in run("report", str(merged)).stdout

    other = work / "gpt2"
    run("sweep", str(corpus), "--model", "tiny-gpt2", "--device", "cpu", "--out", str(other), "--lengths", "1,2",
        "--analyses", "norms,scan", "--quiet")
    compare = run_json("compare", str(merged), str(other), keys=("models", "warnings"))
    assert [row["model"] for row in compare["models"]] == ["tiny-llama", "tiny-gpt2"], compare["models"]

    figures = work / "figures"
    run("figures", str(merged), "--out", str(figures), "--format", "svg")
    drawn = sorted(path.name for path in figures.glob("*.svg"))
    assert (figures / "index.html").is_file() and len(drawn) >= 4, drawn
    assert all(path.stat().st_size > 1000 for path in figures.glob("*.svg"))


def check_python_api() -> None:
    """`import horizon` from outside the checkout: cheap (no torch), then the issue's example on the tiny
    model, its table, and its JSON equal to the CLI's for the same prompt."""
    cheap = run("-c", "import sys, horizon; horizon.load; assert 'torch' not in sys.modules; print('cheap')",
                command=(sys.executable,))
    assert cheap.stdout.strip() == "cheap", cheap.stdout
    started = time.perf_counter()
    import horizon

    m = horizon.load("tiny-llama", device="cpu")
    table = m.scan("some text").to_pandas()
    assert len(table) == m.n_layers + 1 and {"k", "delta_loss", "kl", "top1"} <= set(table.columns), table.columns
    ours = m.attention(PROMPT).to_json()
    cli = run_json("attention", *MODEL, "--prompt", PROMPT, keys=("mean_distance",))
    assert ours["mean_distance"] == cli["mean_distance"] and ours["token_ids"] == cli["token_ids"]
    try:
        m.scan("some text", ks=[0])
    except horizon.HorizonError as error:
        assert str(error) == "--ks values must be >= 1, got '0'", error
    else:
        raise AssertionError("a bad ks raised nothing")
    TIMINGS.append(("python api", time.perf_counter() - started))


async def check_app() -> None:
    """`horizon inspect`'s app under a Textual pilot: it loads the model in a worker, and keys switch
    screens, change the metric and layer, open the help, and quit."""
    from horizon.tui.app import HorizonApp
    from horizon.tui.cli.inspect_cmd import session_loader
    from textual.widgets import TabbedContent

    app = HorizonApp(load=session_loader("tiny-llama", "cpu", "float32", [PROMPT], True, None, None),
                     loading_label="tiny-llama")
    async with app.run_test(size=(100, 30)) as pilot:
        for _ in range(600):  # the model loads in a worker: up to a minute
            if app.session is not None:
                break
            await pilot.pause(0.1)
        assert app.session is not None, "the app never loaded tiny-llama"
        await app.workers.wait_for_complete()
        await pilot.pause()
        tabs = app.query_one(TabbedContent)
        for key, tab in (("3", "horizon"), ("2", "norms"), ("5", "attention"), ("1", "tokens")):
            await pilot.press(key)
            await pilot.pause()
            assert tabs.active == tab, (key, tabs.active)
        metric, layer = app.metric, app.layer
        await pilot.press("m", "left_square_bracket")
        await pilot.pause()
        assert app.metric != metric and app.layer == layer - 1, (app.metric, app.layer)
        await pilot.press("question_mark")
        await pilot.pause()
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("escape")
        await pilot.pause()
        assert type(app.screen).__name__ != "HelpScreen"
        await app.workers.wait_for_complete()
        await pilot.press("q")
        await pilot.pause()
    assert not app.is_running and app.return_code in (0, None)


def main() -> int:
    started = time.perf_counter()
    work = Path.cwd()
    os.environ.setdefault("NO_COLOR", "1")
    check_installed()
    check_version()
    check_single_prompt_commands()
    check_sweep_commands(work)
    check_python_api()
    app_started = time.perf_counter()
    asyncio.run(check_app())
    TIMINGS.append(("app (pilot)", time.perf_counter() - app_started))
    each = ", ".join(f"{name} {seconds:.1f}" for name, seconds in TIMINGS)
    print(f"smoke: {len(TIMINGS)} commands of the installed wheel passed in {time.perf_counter() - started:.0f} s "
          f"(seconds each: {each})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
