"""`horizon inspect`: open the Textual inspector on a model and prompt(s)."""

from __future__ import annotations

from horizon.core.errors import HorizonError
from horizon.core.loader import DEFAULT_MODEL, load_model
from horizon.core.prompts import gather_prompts, tokenize
from horizon.core.session import Session
from horizon.tui.cli.app import app
from horizon.tui.cli.common import (
    DEFAULT_PROMPT,
    BosOpt,
    BosTokenOpt,
    DeviceOpt,
    DtypeOpt,
    FileOpt,
    ModelOpt,
    PromptOpt,
    TruncateToOpt,
)


def session_loader(
    model: str, device: str, dtype: str, prompts: list[str], bos: bool, bos_token: str | None,
    truncate_to: int | None,
):
    """A callable the app runs in a worker: load the model, tokenise, build the session."""

    def load() -> Session:
        loaded = load_model(model, device=device, dtype=dtype)
        token_ids = tokenize(loaded, prompts, bos=bos, bos_token=bos_token, truncate_to=truncate_to)
        return Session(loaded, prompts, token_ids, has_bos=bos)

    return load


@app.command("inspect")
def inspect(
    model: ModelOpt = DEFAULT_MODEL,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    prompt: PromptOpt = None,
    file: FileOpt = None,
    bos: BosOpt = True,
    bos_token: BosTokenOpt = None,
    truncate_to: TruncateToOpt = None,
) -> None:
    """Open the inspector: tokens, norms, horizon, outliers and attention, computed live.

    With no options it opens the bundled model on a bundled prompt. Keys: ? for help,
    1-5 for the screens, ctrl+p for every action.
    """
    from horizon.tui.app import HorizonApp

    prompts = gather_prompts(prompt, file, DEFAULT_PROMPT)
    if truncate_to is not None and truncate_to < 2:
        raise HorizonError("--truncate-to must be at least 2")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise HorizonError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    loader = session_loader(model, device, dtype, prompts, bos, bos_token, truncate_to)
    HorizonApp(load=loader, loading_label=model).run()
