"""``horizon.load`` and the ``Model`` handle: a loaded model and its Runner (core/run/runner.py).

Each method takes the prompts (a string, a list of strings, or a file path as a ``pathlib.Path``:
the CLI's --prompt / --file), checks its options with the CLI's checks (core/options.py) and the
same one-line messages, runs the analysis through the runner (the memory budget, the lock) and
returns a result whose ``to_json()`` is the command's ``--json`` payload for the same inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from horizon.core import options
from horizon.core.errors import HorizonError

from ._results import Attention, Norms, Patch, Result, Scan, Truncation

if TYPE_CHECKING:
    from horizon.core.model.loader import LoadedModel
    from horizon.core.run.runner import Runner

Prompts = str | Sequence[str] | os.PathLike[str]
Progress = Callable[[float], None] | None


def load(spec: str, device: str = "auto", dtype: str = "float32", max_memory: str | int = "auto",
         batch_size: str | int = "auto", unverified: bool = False) -> Model:
    """Load a model (the CLI's --model spec: ``"tiny-llama"``, ``"smollm2-135m"``, a .gguf path, an HF dir or
    hub id) with the memory budget of its runs: ``max_memory`` ("2GB", bytes, or "auto"), ``batch_size``
    (prompts per pass, or "auto"); ``unverified``: run even if the model fails verification."""
    from horizon.core.model.loader import load_model
    from horizon.core.run.runner import Runner

    memory = options.check_max_memory(str(max_memory))
    batch = options.check_batch_size_text(batch_size)
    loaded = load_model(spec, device=device, dtype=dtype, unverified=True if unverified else None)
    return Model(Runner(loaded, memory, batch))


class Model:
    """A loaded model; every analysis runs through its ``runner`` (memory budget and lock)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    @property
    def loaded(self) -> LoadedModel:
        """The core LoadedModel (its TransformerBridge is ``.bridge``)."""
        return self.runner.model

    @property
    def spec(self) -> str:
        return self.runner.model.spec

    @property
    def n_layers(self) -> int:
        return self.runner.model.n_layers

    def __repr__(self) -> str:
        model = self.runner.model
        return f"<horizon.Model {model.spec}: {model.n_layers} layers, d_model {model.d_model}, {model.device}>"

    # ------------------------------------------------------------------------- prompts

    def _token_ids(self, prompts: Prompts, bos: bool, bos_token: str | None,
                   max_tokens: int | None) -> tuple[list[str], list[list[int]]]:
        from horizon.core.model.prompts import gather_prompts, tokenize

        if isinstance(prompts, os.PathLike):
            texts = gather_prompts(None, os.fspath(prompts))
        elif isinstance(prompts, str):
            texts = gather_prompts(prompts, None)
        elif isinstance(prompts, Sequence) and prompts and all(isinstance(text, str) for text in prompts):
            texts = list(prompts)
            for index, text in enumerate(texts):  # each as --prompt checks it, named as --file names it
                try:
                    gather_prompts(text, None)
                except HorizonError as exc:
                    where = "the prompt" if len(texts) == 1 else f"prompt {index + 1}"
                    raise HorizonError(str(exc).replace("the prompt", where, 1)) from None
        else:
            raise HorizonError("prompts must be a string, a non-empty list of strings, or a pathlib.Path of a file")
        options.check_truncate_to(max_tokens)
        return texts, tokenize(self.runner.model, texts, bos=bos, bos_token=bos_token, truncate_to=max_tokens)

    def tokens(self, prompts: Prompts, bos: bool = True, bos_token: str | None = None,
               max_tokens: int | None = None) -> list[list[str]]:
        """Each prompt's tokens as the analyses see them (BOS first unless ``bos=False``)."""
        from horizon.core.model.prompts import decode_tokens

        _, token_ids = self._token_ids(prompts, bos, bos_token, max_tokens)
        return [decode_tokens(self.runner.model, ids) for ids in token_ids]

    def _result(self, payload: dict[str, Any]) -> dict[str, Any]:
        from horizon.core.run.payloads import json_payload

        return json_payload(payload, self.runner.model.device)

    # ------------------------------------------------------------------------- analyses

    def norms(self, prompts: Prompts, *, include_bos: bool = False, fit: str | None = None, weights: bool = False,
              processing: str = "raw", bos: bool = True, bos_token: str | None = None,
              max_tokens: int | None = None, progress: Progress = None) -> Norms:
        """`horizon norms`: residual-stream norms per layer and site, the growth fit ("A:B" for ``fit``),
        the BOS curve; ``weights``: the weight analysis too."""
        from horizon.core.analyses.norms.weights import check_processing
        from horizon.core.model.prompts import decode_tokens
        from horizon.core.run.payloads import norms_payload

        window = options.parse_fit(fit)
        check_processing(processing)
        _, token_ids = self._token_ids(prompts, bos, bos_token, max_tokens)
        plan = self.runner.plan("norms", token_ids)
        options.check_fit(fit, window, self.n_layers)
        report = self.runner.norms(token_ids, bos, include_bos=include_bos, fit=window, processing=processing,
                                   plan=plan, progress=progress).result
        section = self.runner.weights(token_ids, bos, processing, plan=plan).result if weights else None
        tokens = [decode_tokens(self.runner.model, ids) for ids in token_ids]
        payload = norms_payload(self.runner.model, processing, token_ids, tokens, report, plan, section)
        return Norms(report, self._result(payload), self.spec, token_ids, tokens, section)

    def patch(self, prompts: Prompts, k: int, *, unit: str = "layer", source: str = "recursive",
              keep_embed: bool = False, final: str = "window", start_layer: int | None = None,
              only_layer: int | str | None = None, ablation: str = "zero", bos: bool = True,
              bos_token: str | None = None, max_tokens: int | None = None) -> Patch:
        """`horizon patch`: one forward pass with horizon ``k`` enforced (``only_layer``: N or "final")."""
        from horizon.core.patching.horizon import HorizonConfig
        from horizon.core.run.payloads import patch_payload

        options.check_horizon_choices(unit, source, final)
        options.check_ablation(ablation)
        layer_text = None if only_layer is None else str(only_layer)
        options.check_only_layer(layer_text, start_layer_given=start_layer is not None)
        start = start_layer or 0
        HorizonConfig.from_unit(k, unit, source=source, keep_embed=keep_embed, final=final, start_layer=start,
                                ablation=ablation)
        _, token_ids = self._token_ids(prompts, bos, bos_token, max_tokens)
        options.check_k(k, self.n_layers, unit)
        options.check_start_layer(start, self.n_layers)
        layer = options.check_only_layer(layer_text, self.n_layers)
        config = HorizonConfig.from_unit(k, unit, source=source, keep_embed=keep_embed, final=final,
                                         start_layer=start, ablation=ablation, only_layer=layer)
        run = self.runner.patch(token_ids, config, has_bos=bos)
        payload = patch_payload(self.runner.model, token_ids, k, unit, run.result, run.plan)
        return Patch(run.result, self._result(payload), self.spec)

    def scan(self, prompts: Prompts, *, ks: Sequence[int] | None = None, start_layers: Sequence[int] | None = None,
             tol: float = 0.1, unit: str = "layer", source: str = "recursive", keep_embed: bool = False,
             final: str = "window", ablation: str = "zero", by_layer: bool = False,
             only_layer: int | str | None = None, bos: bool = True, bos_token: str | None = None,
             max_tokens: int | None = None, progress: Progress = None) -> Scan:
        """`horizon scan`: loss, KL and top-1 for every horizon k, the effective horizon at ``tol``;
        ``by_layer``: the layer x k matrix too; ``only_layer``: the curve with the horizon enforced at that
        layer alone (N or "final": the matrix's row, as the result's rows)."""
        from ._scan import run_scan

        return run_scan(self, prompts, ks=ks, start_layers=start_layers, tol=tol, unit=unit, source=source,
                        keep_embed=keep_embed, final=final, ablation=ablation, by_layer=by_layer,
                        only_layer=only_layer, bos=bos, bos_token=bos_token, max_tokens=max_tokens, progress=progress)

    def truncate(self, prompts: Prompts, *, lengths: Sequence[int] = options.DEFAULT_LENGTHS, outliers: int = 20,
                 outlier_layer: int | None = None, bos: bool = True, bos_token: str | None = None,
                 max_tokens: int | None = None, progress: Progress = None) -> Truncation:
        """`horizon truncate`: the context cut to the last c tokens, per layer, against the full context."""
        from horizon.core.analyses.truncate.engine import n_truncations
        from horizon.core.run.payloads import report_payload

        length_list = list(dict.fromkeys(int_list(lengths, "--lengths", minimum=1)))
        options.check_count(outliers, "--outliers")
        options.check_layer_row(outlier_layer, None, "--outlier-layer")
        if not bos:
            raise HorizonError("truncated prompts start with BOS ([BOS] + the last c tokens): drop --no-bos")
        _, token_ids = self._token_ids(prompts, bos, bos_token, max_tokens)
        model = self.runner.model
        options.check_layer_row(outlier_layer, model.n_layers, "--outlier-layer")
        options.check_lengths(length_list, model.n_ctx if max_tokens is None else min(max_tokens, model.n_ctx))
        if n_truncations(token_ids, length_list) == 0:
            longest = max(len(ids) for ids in token_ids)
            raise HorizonError(f"no position can be truncated: the longest prompt has {longest} tokens with BOS, and "
                               f"c = {min(length_list)} needs at least {min(length_list) + 2}")
        run = self.runner.truncate(token_ids, length_list, n_outliers=outliers, outlier_layer=outlier_layer,
                                   progress=progress)
        payload = report_payload(model, token_ids, run.result, run.plan)
        return Truncation(run.result, self._result(payload), self.spec, len(token_ids))

    def attention(self, prompts: Prompts, *, bos: bool = True, bos_token: str | None = None,
                  max_tokens: int | None = None, progress: Progress = None) -> Attention:
        """`horizon attention`: per head, how far back attention looks."""
        from horizon.core.run.payloads import report_payload

        _, token_ids = self._token_ids(prompts, bos, bos_token, max_tokens)
        run = self.runner.attention(token_ids, bos, progress=progress)
        payload = report_payload(self.runner.model, token_ids, run.result, run.plan)
        return Attention(run.result, self._result(payload), self.spec, len(token_ids))

    def verify(self, reference: str = "fresh") -> Verification:
        """`horizon verify`: the checks every number relies on (``reference``: fresh or loaded); the verdict
        is stored as the CLI stores it. ``passed`` says whether every check passed."""
        from horizon.core.run.payloads import verify_payload

        if reference not in ("fresh", "loaded"):
            raise HorizonError(f"--reference must be fresh or loaded, got {reference!r}")
        result = self.runner.verify(reference)
        return Verification(result, self._result(verify_payload(result)), self.spec)


def int_list(values: Sequence[int] | str, option: str, minimum: int) -> list[int]:
    """A list option (``[1, 5, 10]`` or the CLI's "1,5,10") with the CLI's check and messages."""
    text = values if isinstance(values, str) else ",".join(str(value) for value in values)
    return options.parse_int_list(text, option, minimum=minimum)


class Verification(Result):
    """``Model.verify``: core/checks/verify.py's result (``report``: ``passed``, ``checks``)."""

    analysis = "verify"

    @property
    def passed(self) -> bool:
        return bool(self.report.passed)

    def summary(self) -> list[str]:
        failed = [check.name for check in self.report.checks if check.passed is False]
        return ["verified" if self.report.passed else f"FAILED: {', '.join(failed)}",
                f"{len(self.report.checks)} checks"]

