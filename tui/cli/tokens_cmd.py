"""`horizon tokens`: how a prompt is tokenised (BOS included) - a quick check before any analysis."""

from __future__ import annotations

from horizon.core.untrusted import markup_safe
from horizon.tui.cli.app import app
from horizon.tui.cli.common import (
    BosOpt,
    BosTokenOpt,
    DeviceOpt,
    DtypeOpt,
    FileOpt,
    JsonOpt,
    ModelOpt,
    PromptOpt,
    TruncateToOpt,
    console,
    emit,
    prepare_inputs,
)
from rich.table import Table


@app.command("tokens")
def tokens(
    model: ModelOpt = "smollm2-135m",
    prompt: PromptOpt = None,
    file: FileOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    bos: BosOpt = True,
    bos_token: BosTokenOpt = None,
    truncate_to: TruncateToOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the token ids and texts the analyses will see, BOS included."""
    inputs = prepare_inputs(model, device, dtype, prompt, file, bos, bos_token, truncate_to)
    texts = inputs.tokens()
    payload = {
        "model": inputs.model.spec,
        "n_ctx": inputs.model.n_ctx,
        "bos": inputs.has_bos,
        "token_ids": inputs.token_ids,
        "tokens": texts,
    }

    def render() -> None:
        for index, (ids, words) in enumerate(zip(inputs.token_ids, texts, strict=True)):
            table = Table(
                title=f"prompt {index + 1}: {len(ids)} tokens (context {inputs.model.n_ctx})", title_justify="left"
            )
            table.add_column("pos", justify="right")
            table.add_column("id", justify="right")
            table.add_column("token")
            for position, (token_id, word) in enumerate(zip(ids, words, strict=True)):
                note = " [dim](BOS)[/]" if position == 0 and inputs.has_bos else ""
                table.add_row(str(position), str(token_id), markup_safe(repr(word)) + note)
            console.print(table)

    emit(as_json, payload, render)
