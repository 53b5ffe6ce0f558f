"""Shared fixtures: models are loaded once per test session (the bundled one takes ~1 s warm)."""

from __future__ import annotations

import os

import pytest
from horizon.core.model.loader import LoadedModel, load_model

# Snapshot pictures go to snapshots/<test module>/ (the fixture overrides syrupy's `snapshot`).
from tests.snapshot_dir import snapshot  # noqa: F401


def pytest_configure(config: pytest.Config) -> None:
    """HORIZON_TEST_THREADS=n runs torch on n threads (make test runs the suite on one, in two
    processes). Without it, each pytest-xdist worker takes its share of the cores, and so do the
    subprocesses its tests start: workers that each spin as many OpenMP threads as there are cores
    doubled the suite's CPU time on two cores."""
    threads = os.environ.get("HORIZON_TEST_THREADS")
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not threads and workers:
        threads = str(max(1, (os.cpu_count() or 1) // int(workers)))
        os.environ.setdefault("OMP_NUM_THREADS", threads)
        os.environ.setdefault("MKL_NUM_THREADS", threads)
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip, saying why, where torch sees no CUDA device."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    reason = f"no CUDA device here (torch {torch.__version__}: torch.cuda.is_available() is False)"
    for item in marked:
        item.add_marker(pytest.mark.skip(reason=reason))


SHORT_PROMPT = "The capital of France is Paris. It is known for the Eiffel Tower, and its food is famous."


@pytest.fixture(scope="session")
def tiny_llama() -> LoadedModel:
    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="session")
def tiny_gpt2() -> LoadedModel:
    return load_model("tiny-gpt2", device="cpu")


@pytest.fixture(scope="session")
def smol() -> LoadedModel:
    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(params=["tiny-llama", "tiny-gpt2"])
def tiny_model(request: pytest.FixtureRequest) -> LoadedModel:
    return request.getfixturevalue(request.param.replace("-", "_"))


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run `horizon ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from horizon.tui.cli.app import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
