"""core/run/runner.py: one Runner (model + budget + lock) under the CLI and the app's live Session.

The app's passes hold the runner's lock (a pass started while another thread holds it waits), and
the app's session plans its memory as the commands do: a tiny --max-memory gives the same one-line
refusal, and an explicit --batch-size is the batch the engine runs.
"""

from __future__ import annotations

import threading

import pytest
from horizon.core.errors import HorizonError
from horizon.core.model.loader import LoadedModel
from horizon.core.model.prompts import tokenize
from horizon.core.run.runner import Runner
from horizon.core.sources.queries import Query
from horizon.core.sources.session import PatchSettings, Session

from tests.conftest import SHORT_PROMPT

PROMPTS = [SHORT_PROMPT, "A second prompt, shorter than the first."]


def session_of(model: LoadedModel, runner: Runner | None = None) -> Session:
    return Session(model, PROMPTS, tokenize(model, PROMPTS), runner=runner)


def test_session_uses_its_runner_lock(tiny_llama: LoadedModel) -> None:
    runner = Runner(tiny_llama)
    session = session_of(tiny_llama, runner)
    assert session.runner is runner and session._lock is runner.lock
    assert session_of(tiny_llama).runner is not None  # a default runner: the automatic budget
    with pytest.raises(HorizonError, match="runner must hold the session's model"):
        Session(tiny_llama, PROMPTS, tokenize(tiny_llama, PROMPTS), runner=Runner(object()))  # type: ignore[arg-type]


@pytest.mark.parametrize("analysis", ["norms", "truncate", "attention", "scan", "patch", "weights"])
def test_a_session_pass_waits_for_the_runner_lock(tiny_llama: LoadedModel, analysis: str) -> None:
    """While another thread holds the runner's lock (another caller's forward pass), the app's pass does not run."""
    session = session_of(tiny_llama, Runner(tiny_llama))
    calls = {
        "norms": session.norms, "truncate": session.truncate, "attention": lambda: session.attention(0),
        "scan": lambda: session.scan(0), "patch": lambda: session.patch(PatchSettings(k=1), 0),
        "weights": session.weights,
    }
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(calls[analysis]()))
    with session.runner.lock:  # type: ignore[union-attr]
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive() and not done  # still waiting for the lock
    worker.join()
    assert len(done) == 1 and done[0] is not None


def test_engine_runs_inside_the_lock(tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """No other thread can take the lock while the engine runs (checked from inside the engine)."""
    import horizon.core.analyses.norms.engine as norms

    runner = Runner(tiny_llama)
    real = norms.analyse_norms
    others_could_lock: list[bool] = []

    def engine(*args: object, **kwargs: object) -> object:
        outcome: list[bool] = []

        def try_lock() -> None:
            got = runner.lock.acquire(blocking=False)
            if got:
                runner.lock.release()
            outcome.append(got)

        probe = threading.Thread(target=try_lock)
        probe.start()
        probe.join()
        others_could_lock.extend(outcome)
        return real(*args, **kwargs)

    monkeypatch.setattr(norms, "analyse_norms", engine)
    session_of(tiny_llama, runner).norms()
    assert others_could_lock == [False]


def test_the_app_plans_with_the_budget(tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit batch size is the batch the engine gets (the CLI's --batch-size 1)."""
    import horizon.core.analyses.norms.engine as norms

    seen: list[int] = []
    real = norms.analyse_norms

    def engine(*args: object, batch_size: int, **kwargs: object) -> object:
        seen.append(batch_size)
        return real(*args, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(norms, "analyse_norms", engine)
    session_of(tiny_llama, Runner(tiny_llama, batch_size=1)).norms()
    session_of(tiny_llama, Runner(tiny_llama)).norms()
    assert seen == [1, 2]  # auto: both prompts fit in one pass


def test_the_app_refuses_what_the_cli_refuses(tiny_llama: LoadedModel, run_cli) -> None:
    """A tiny --max-memory: the live session's pass fails with the CLI's one line, before any forward."""
    from horizon.core.options import check_max_memory
    from horizon.tui.cli.inspect_cmd import session_loader

    code, out, err = run_cli("norms", "--model", "tiny-llama", "--device", "cpu", "--max-memory", "1MB",
                             "--prompt", PROMPTS[0])
    assert code == 2 and out == ""
    cli_line = err.strip()
    assert "\n" not in cli_line and cli_line.startswith("horizon: error: ")
    session = session_loader("tiny-llama", "cpu", "float32", [PROMPTS[0]], True, None, None,
                             check_max_memory("1MB"), None)()
    with pytest.raises(HorizonError) as refused:
        session.norms()
    message = str(refused.value)
    # The same sentence; only the measured resident bytes may differ between the two processes' moments.
    head = "norms of a 23-token prompt (one prompt at a time) needs at least"
    tail = "budget 1.00 MB (--max-memory 1.00 MB): raise --max-memory or use --max-tokens"
    for line in (message, cli_line.removeprefix("horizon: error: ")):
        assert line.startswith(head) and line.endswith(tail), line
    assert session.ready(Query.norms()) is None


def test_inspect_checks_its_budget_before_the_app(run_cli) -> None:
    """`horizon inspect --max-memory` and `--batch-size`: the commands' options, refused in one line before a load."""
    for option, value in (("--max-memory", "lots"), ("--batch-size", "0")):
        code, out, err = run_cli("inspect", "--model", "tiny-llama", option, value)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and option in err, err


def test_a_sweep_worker_given_a_runner_shares_its_lock(tiny_llama: LoadedModel) -> None:
    """The Python API's sweep passes its Model's runner: the worker's shards wait for that model's other passes."""
    from horizon.core.sweep.sweep_settings import SweepSettings
    from horizon.core.sweep.worker import SweepWorker, WorkerConfig

    runner = Runner(tiny_llama)
    config = WorkerConfig(model="tiny-llama", device="cpu", dtype="float32", texts=PROMPTS,
                          settings=SweepSettings(analyses=["norms"]))
    worker = SweepWorker(config, loaded=runner)
    assert worker.runner is runner and worker.model is tiny_llama
    assert SweepWorker(config, loaded=tiny_llama).runner is not runner  # a model alone: a runner of its own
    done: list[object] = []
    shard = threading.Thread(target=lambda: done.append(worker.run_shard([0, 1], ["norms"])))
    with runner.lock:
        shard.start()
        shard.join(timeout=0.5)
        assert shard.is_alive() and not done
    shard.join()
    assert done[0]["norms"].num_rows > 0  # type: ignore[index]
