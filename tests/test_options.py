"""One check per option in core/options.py, and every command applying the same check (issue 17, class 6)."""

from __future__ import annotations

import math

import pytest
from horizon.core import options
from horizon.core.errors import HorizonError
from horizon.core.sweep.sweep import SweepSettings


def one_error_line(code: int, out: str, err: str, needle: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("horizon: error:") and needle in lines[0], err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize("tol", [math.nan, math.inf, -0.5])
def test_tol_must_be_finite_and_not_negative(tol: float) -> None:
    with pytest.raises(HorizonError, match="--tol"):
        options.check_tol(tol)
    with pytest.raises(HorizonError, match="--tol"):
        SweepSettings(tol=tol).validate()
    assert options.check_tol(0) == 0.0


def test_model_bounds() -> None:
    assert options.check_k(5, 4) == 5 and options.check_k(9, 4, "sublayer") == 9
    for bad in (lambda: options.check_k(6, 4), lambda: options.check_k(10, 4, "sublayer"),
                lambda: options.check_k(0)):
        with pytest.raises(HorizonError, match="--k"):
            bad()
    assert options.check_start_layer(4, 4) == 4
    with pytest.raises(HorizonError, match="out of range"):
        options.check_start_layer(5, 4)
    with pytest.raises(HorizonError, match="start layer must be >= 0"):
        options.check_start_layer(-1)
    with pytest.raises(HorizonError, match="--lengths 100000 is out of range"):
        options.check_lengths([1, 100000], 2048)
    with pytest.raises(HorizonError, match="--ks"):
        options.check_ks([1, 999], 4)


@pytest.mark.parametrize("value", ["bogus", "cuda:x", "", "auto;rm"])
def test_device_map_is_checked(value: str) -> None:
    with pytest.raises(HorizonError, match="--device-map"):
        options.check_device_map(value)
    assert options.check_device_map("auto") == "auto" and options.check_device_map("cpu") == "cpu"


def test_every_command_rejects_the_same_values(run_cli, tmp_path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("The cat sat on the mat today.\n\nA second prompt for the test.\n", encoding="utf-8")
    out = str(tmp_path / "o")
    sweep = ("sweep", str(corpus), "--out", out, "-m", "tiny-llama", "--device", "cpu", "-q")
    single = ("-m", "tiny-llama", "--device", "cpu", "-p", "The cat sat on the mat today.")
    cases = [
        ((*sweep, "--tol", "nan", "-a", "scan"), "--tol"),
        (("scan", *single, "--tol", "nan"), "--tol"),
        ((*sweep, "--device-map", "bogus", "-a", "norms"), "--device-map"),
        ((*sweep, "--ks", "1,999", "-a", "scan"), "--ks 999 is out of range"),
        (("scan", *single, "--ks", "1,999"), "--ks 999 is out of range"),
        (("patch", *single, "--k", "999"), "--k 999 is out of range"),
        ((*sweep, "--start-layers", "999", "-a", "scan"), "--start-layers 999 is out of range"),
        (("scan", *single, "--start-layers", "999"), "--start-layers 999 is out of range"),
        (("patch", *single, "--k", "2", "--start-layer", "999"), "--start-layer 999 is out of range"),
        ((*sweep, "--lengths", "100000", "-a", "truncate"), "--lengths 100000 is out of range"),
        (("truncate", *single, "--lengths", "100000"), "--lengths 100000 is out of range"),
        ((*sweep, "--workers", "0"), "--workers"),
        (("norms", *single, "--batch-size", "0"), "--batch-size"),
        (("truncate", *single, "--batch-size", "0"), "--batch-size"),
        (("scan", *single, "--batch-size", "0"), "--batch-size"),
    ]
    for args, needle in cases:
        one_error_line(*run_cli(*args), needle)
    assert not (tmp_path / "o").exists(), "a rejected sweep creates no directory"
