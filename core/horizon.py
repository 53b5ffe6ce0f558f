"""The effective layer horizon (SCIENCE.md section 3, seed 000): a patched forward pass and its metrics.

Enforcing horizon K (in sublayers): every reader j (sublayers 1..2L, final readout 2L+1) reads the
window h_j = s_{max(0, j-K)} + ... + s_{j-1} instead of r_j. The window replaces the input of the
reader's *norm* (``ln1.hook_in`` / ``ln2.hook_in`` / ``ln_final.hook_in``); the residual stream
flowing on still carries every output.

Efficiency (why this module drives the blocks itself): every reader before the first one the
window bites (j <= K, or layers below start_layer) sees exactly the clean input, so a patched pass
starts at that reader's layer from the cached clean ``resid_pre``. The bridge's ``start_at_layer``
cannot be used for that: it still executes blocks 0..k-1 (and discards their output). Instead the
clean run records each block's call arguments (attention mask, rotary embeddings, position ids) and
the patched pass calls the bridge blocks from the first patched layer on, so every bridge hook
still fires. A scan batches many horizons into one pass as a "staircase": the row of horizon k joins
the batch at its own first patched layer, so no block is ever run on a row whose input is clean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from horizon.core.capture import run_capture
from horizon.core.decomposition import (
    n_readers,
    output_hook,
    reader_hook,
    reader_layer,
    stack_outputs,
    window_read,
)
from horizon.core.errors import HorizonError
from horizon.core.loader import LoadedModel
from horizon.core.prompts import TokenBatch, batches

SOURCES = ("recursive", "clean")
FINALS = ("window", "full")
UNITS = ("layer", "sublayer")
DEFAULT_TOL = 0.1
# Memory one batched pass may hold (window buffers, activations, attention scores, logits).
DEFAULT_PASS_BYTES = 2 << 30
# Logits one batched readout may hold.
READOUT_BYTES = 512 << 20


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class HorizonConfig:
    """One enforced horizon: K in sublayers plus the SCIENCE.md section 3 options."""

    horizon_sublayers: int
    source: str = "recursive"
    keep_embed: bool = False
    final: str = "window"
    start_layer: int = 0

    def __post_init__(self) -> None:
        if self.horizon_sublayers < 1:
            raise HorizonError(f"the horizon must be at least 1 sublayer, got {self.horizon_sublayers}")
        if self.source not in SOURCES:
            raise HorizonError(f"unknown source {self.source!r}: use recursive or clean")
        if self.final not in FINALS:
            raise HorizonError(f"unknown final readout {self.final!r}: use window or full")
        if self.start_layer < 0:
            raise HorizonError(f"the start layer must be >= 0, got {self.start_layer}")

    @classmethod
    def from_layers(cls, k: int, **options: Any) -> HorizonConfig:
        """Horizon of k layers = K = 2k sublayers (the CLI's --k)."""
        if k < 1:
            raise HorizonError(f"--k must be at least 1, got {k}")
        return cls(horizon_sublayers=2 * k, **options)

    @classmethod
    def from_unit(cls, k: int, unit: str = "layer", **options: Any) -> HorizonConfig:
        """--k in layers (K = 2k) or, with unit="sublayer", in sublayers (K = k)."""
        check_unit(unit)
        if k < 1:
            raise HorizonError(f"--k must be at least 1, got {k}")
        return cls(horizon_sublayers=2 * k if unit == "layer" else k, **options)

    def patches(self, j: int, n_layers: int) -> bool:
        """Whether reader j reads the window instead of the residual stream."""
        if j == n_readers(n_layers) and self.final == "full":
            return False
        return j > self.horizon_sublayers and reader_layer(j) >= self.start_layer

    def first_patched_reader(self, n_layers: int) -> int | None:
        """The first reader the window bites (every later one is patched too); None: a clean run."""
        for j in range(1, n_readers(n_layers) + 1):
            if self.patches(j, n_layers):
                return j
        return None


def check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise HorizonError(f"unknown unit {unit!r}: use layer or sublayer")


def horizon_sublayers(k: int, unit: str) -> int:
    check_unit(unit)
    return 2 * k if unit == "layer" else k


def check_model(model: LoadedModel) -> None:
    """Refuse architectures whose hooks do not match the sublayer decomposition."""
    if model.parallel_attn_mlp:
        raise HorizonError(
            f"{model.spec} runs attention and MLP in parallel (both read resid_pre), so the "
            "sequential sublayer horizon is not defined for it"
        )
    names = model.bridge.hook_dict
    wanted = [reader_hook(j, model.n_layers) for j in range(1, n_readers(model.n_layers) + 1)]
    wanted += [output_hook(j) for j in range(1, 2 * model.n_layers + 1)]
    missing = [name for name in wanted if name not in names]
    blocks = getattr(model.bridge, "blocks", None)
    if missing or blocks is None or len(blocks) != model.n_layers:
        first = missing[0] if missing else "blocks"
        raise HorizonError(
            f"{model.spec} ({model.architecture}) is not hooked like a pre-norm sequential transformer "
            f"(no {first}); the horizon patch cannot run on it"
        )


# ----------------------------------------------------------------------------- the clean run


@dataclass
class CleanRun:
    """What every patched pass of one token batch reuses from the unpatched run."""

    batch: TokenBatch
    outputs: torch.Tensor  # s_0..s_{2L}: [2L+1, batch, pos, d_model]
    resid_pre: torch.Tensor  # [L, batch, pos, d_model]
    logits: torch.Tensor  # [batch, pos, vocab]
    block_args: list[tuple[tuple, dict]]  # per layer: the block's call arguments after hidden_states
    _tiled: dict[tuple[int, int], tuple[tuple, dict]] = field(default_factory=dict, repr=False)

    _clean_logp: torch.Tensor | None = field(default=None, repr=False)

    @property
    def batch_size(self) -> int:
        return self.outputs.shape[1]

    @property
    def clean_logp(self) -> torch.Tensor:
        """Clean next-token log-probabilities at positions 0..T-2, computed once for every config."""
        if self._clean_logp is None:
            self._clean_logp = torch.log_softmax(self.logits[:, :-1].float(), dim=-1)
        return self._clean_logp

    def block_call(self, layer: int, copies: int) -> tuple[tuple, dict]:
        """The layer's call arguments for ``copies`` stacked copies of the batch."""
        key = (layer, copies)
        if key not in self._tiled:
            args, kwargs = self.block_args[layer]
            batch = self.batch_size
            self._tiled[key] = (
                tuple(_tile(value, batch, copies) for value in args),
                {name: _tile(value, batch, copies) for name, value in kwargs.items()},
            )
        return self._tiled[key]


def _tile(value: Any, batch: int, copies: int) -> Any:
    """Repeat batch-leading tensors (masks, rotary tables, position ids) ``copies`` times."""
    if isinstance(value, tuple):
        return tuple(_tile(item, batch, copies) for item in value)
    if isinstance(value, list):
        return [_tile(item, batch, copies) for item in value]
    if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[0] == batch and copies > 1:
        return value.repeat(copies, *([1] * (value.ndim - 1)))
    return value


def _without_cache(value: Any) -> Any:
    # A replayed block must not append to the clean run's KV cache.
    kind = type(value).__name__
    return None if kind.endswith("Cache") and not isinstance(value, torch.Tensor) else value


def clean_run(model: LoadedModel, batch: TokenBatch) -> CleanRun:
    """The unpatched pass: sublayer outputs, resid_pre per layer, logits and each block's call."""
    check_model(model)
    block_args: list[tuple[tuple, dict] | None] = [None] * model.n_layers

    def recorder(layer: int) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            kept = {name: _without_cache(value) for name, value in kwargs.items()}
            if "use_cache" in kept:
                kept["use_cache"] = False
            block_args[layer] = (tuple(_without_cache(value) for value in args[1:]), kept)

        return hook

    handles = [
        block.register_forward_pre_hook(recorder(layer), with_kwargs=True)
        for layer, block in enumerate(model.bridge.blocks)
    ]
    try:
        capture = run_capture(model, batch.input_ids, ("embed", "attn_out", "mlp_out", "resid_pre"), keep_logits=True)
    finally:
        for handle in handles:
            handle.remove()
    if any(call is None for call in block_args):
        raise HorizonError(f"{model.spec}: the bridge did not call every block; the horizon patch cannot run on it")
    assert capture.logits is not None
    return CleanRun(
        batch=batch,
        outputs=stack_outputs(capture["embed"], capture["attn_out"], capture["mlp_out"]),
        resid_pre=capture["resid_pre"],
        logits=capture.logits,
        block_args=block_args,  # type: ignore[arg-type]
    )


# ----------------------------------------------------------------------------- the patched pass


def _row_bytes(model: LoadedModel, clean: CleanRun) -> int:
    """Rough memory of one row (one config over the whole token batch) inside a batched pass."""
    batch, pos = clean.batch_size, clean.outputs.shape[2]
    element = clean.outputs.element_size()
    d_mlp = int(getattr(model.bridge.cfg, "d_mlp", None) or 4 * model.d_model)
    per_position = model.d_model * (n_readers(model.n_layers) + 8) + 2 * model.n_heads * pos + 3 * d_mlp
    return batch * pos * per_position * element


def patched_logits(
    model: LoadedModel,
    clean: CleanRun,
    configs: Sequence[HorizonConfig],
    max_pass_bytes: int = DEFAULT_PASS_BYTES,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (index into configs, patched logits [batch, pos, vocab]) for every config.

    Configs that patch nothing yield the clean logits; the others run in as few batched passes
    as ``max_pass_bytes`` allows, each starting at the layer where its first window bites.
    """
    n_layers = model.n_layers
    in_blocks: list[tuple[int, int]] = []  # (first patched layer, config index)
    readout_only: list[int] = []
    for index, config in enumerate(configs):
        first = config.first_patched_reader(n_layers)
        if first is None:
            yield index, clean.logits
        elif first == n_readers(n_layers):
            readout_only.append(index)
        else:
            in_blocks.append((reader_layer(first), index))
    for index in readout_only:
        yield index, _readout(model, clean, configs[index], clean.outputs, clean.resid_pre.new_empty(0))
    in_blocks.sort()
    per_pass = max(1, max_pass_bytes // max(1, _row_bytes(model, clean)))
    for start in range(0, len(in_blocks), per_pass):
        group = in_blocks[start : start + per_pass]
        yield from _staircase_pass(model, clean, [(layer, index, configs[index]) for layer, index in group])


def _readout(
    model: LoadedModel, clean: CleanRun, config: HorizonConfig, outputs: torch.Tensor, final_resid: torch.Tensor
) -> torch.Tensor:
    """The final reader: the norm reads the window (or the full residual), then the unembedding."""
    final = n_readers(model.n_layers)
    if config.patches(final, model.n_layers):
        source = outputs if config.source == "recursive" else clean.outputs
        read = window_read(source, final, config.horizon_sublayers, config.keep_embed)
    else:
        read = final_resid
    with torch.inference_mode():
        return model.bridge.unembed(model.bridge.ln_final(read))


def _staircase_pass(
    model: LoadedModel, clean: CleanRun, rows: list[tuple[int, int, HorizonConfig]]
) -> Iterator[tuple[int, torch.Tensor]]:
    """One batched pass; row r (sorted by first patched layer) occupies batch slots r*B..(r+1)*B-1."""
    n_layers, batch = model.n_layers, clean.batch_size
    first_layer = rows[0][0]
    n_rows = len(rows)
    # Window buffer: slots below each row's first patched layer keep the clean outputs, the rest
    # are overwritten by this pass's outputs as they are produced (the recursive source).
    buffer = clean.outputs.repeat(1, n_rows, 1, 1)

    def row_source(row: int) -> torch.Tensor:
        if rows[row][2].source == "recursive":
            return buffer[:, row * batch : (row + 1) * batch]
        return clean.outputs

    def read_window(j: int) -> Callable:
        def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
            active = activation.shape[0] // batch
            patched = [row for row in range(active) if rows[row][2].patches(j, n_layers)]
            if not patched:
                return activation
            # A new tensor: the norm's input may alias the residual stream, which must flow on intact.
            replaced = activation.clone()
            for row in patched:
                config = rows[row][2]
                replaced[row * batch : (row + 1) * batch] = window_read(
                    row_source(row), j, config.horizon_sublayers, config.keep_embed
                )
            return replaced

        return hook

    def record_output(j: int) -> Callable:
        def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
            buffer[j, : activation.shape[0]] = activation
            return activation

        return hook

    readers = range(2 * first_layer + 1, 2 * n_layers + 1)
    fwd_hooks = [(reader_hook(j, n_layers), read_window(j)) for j in readers]
    fwd_hooks += [(output_hook(j), record_output(j)) for j in readers]
    joined = 0
    hidden = clean.resid_pre.new_empty((0, *clean.resid_pre.shape[2:]))
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=fwd_hooks):
        for layer in range(first_layer, n_layers):
            newcomers = 0
            while joined + newcomers < n_rows and rows[joined + newcomers][0] == layer:
                newcomers += 1
            if newcomers:
                # Rows joining here have seen clean inputs so far: start them from clean resid_pre.
                hidden = torch.cat((hidden, clean.resid_pre[layer].repeat(newcomers, 1, 1)))
                joined += newcomers
            args, kwargs = clean.block_call(layer, joined)
            output = model.bridge.blocks[layer](hidden, *args, **kwargs)
            hidden = output[0] if isinstance(output, tuple) else output
    # The final reader of several rows at once (one unembedding matmul), in chunks that bound the logits' memory.
    vocab = int(model.bridge.cfg.d_vocab)
    per_chunk = max(1, READOUT_BYTES // max(1, batch * hidden.shape[1] * vocab * 4))
    for first in range(0, n_rows, per_chunk):
        chunk = list(enumerate(rows))[first : first + per_chunk]
        reads = []
        for row, (_, _, config) in chunk:
            slots = slice(row * batch, (row + 1) * batch)
            if config.patches(n_readers(n_layers), n_layers):
                source = buffer[:, slots] if config.source == "recursive" else clean.outputs
                reads.append(window_read(source, n_readers(n_layers), config.horizon_sublayers, config.keep_embed))
            else:
                reads.append(hidden[slots])
        with torch.inference_mode():
            logits = model.bridge.unembed(model.bridge.ln_final(torch.cat(reads)))
        for offset, (_, (_, index, _)) in enumerate(chunk):
            yield index, logits[offset * batch : (offset + 1) * batch]


# ----------------------------------------------------------------------------- metrics


@dataclass
class TokenMetrics:
    """Per-prediction metrics of one token batch: [batch, pos-1] tensors, masked by ``valid``."""

    loss_clean: torch.Tensor
    loss_patched: torch.Tensor
    kl: torch.Tensor
    top1_agree: torch.Tensor
    valid: torch.Tensor


def token_metrics(
    clean_logits: torch.Tensor, patched: torch.Tensor, batch: TokenBatch, clean_logp: torch.Tensor | None = None
) -> TokenMetrics:
    """Next-token CE (clean and patched), KL(clean || patched) and top-1 agreement at positions 0..T-2.

    ``clean_logp`` (the clean log-softmax at 0..T-2) may be passed in when it is reused.
    """
    targets = batch.input_ids[:, 1:].unsqueeze(-1)
    valid = batch.mask[:, 1:]  # the prediction at t counts when token t+1 is real (not padding)
    if clean_logp is None:
        clean_logp = torch.log_softmax(clean_logits[:, :-1].float(), dim=-1)
    patched_logp = torch.log_softmax(patched[:, :-1].float(), dim=-1)
    loss_clean = -clean_logp.gather(-1, targets).squeeze(-1)
    loss_patched = -patched_logp.gather(-1, targets).squeeze(-1)
    kl = (clean_logp.exp() * (clean_logp - patched_logp)).sum(-1)
    agree = clean_logp.argmax(-1) == patched_logp.argmax(-1)
    zero = torch.zeros((), dtype=loss_clean.dtype, device=loss_clean.device)
    return TokenMetrics(
        loss_clean=torch.where(valid, loss_clean, zero),
        loss_patched=torch.where(valid, loss_patched, zero),
        kl=torch.where(valid, kl, zero),
        top1_agree=agree & valid,
        valid=valid,
    )


@dataclass
class _Totals:
    """Running sums over token batches (means are pooled over every prediction)."""

    loss_clean: float = 0.0
    loss_patched: float = 0.0
    kl: float = 0.0
    agree: int = 0
    n_tokens: int = 0

    def add(self, metrics: TokenMetrics) -> None:
        self.loss_clean += float(metrics.loss_clean.double().sum())
        self.loss_patched += float(metrics.loss_patched.double().sum())
        self.kl += float(metrics.kl.double().sum())
        self.agree += int(metrics.top1_agree.sum())
        self.n_tokens += int(metrics.valid.sum())


@dataclass
class PatchResult:
    """One patched pass against the clean run; per-token lists are per prompt, positions 0..T-2."""

    config: HorizonConfig
    n_tokens: int
    loss_clean: float
    loss_patched: float
    delta_loss: float
    kl: float
    top1_agreement: float
    per_token_loss_clean: list[list[float]]
    per_token_loss_patched: list[list[float]]
    per_token_kl: list[list[float]]
    logits: list[torch.Tensor] | None = None  # per prompt [T, vocab], when asked for

    @property
    def per_token(self) -> dict[str, list[list[float]]]:
        return {"loss_clean": self.per_token_loss_clean, "loss_patched": self.per_token_loss_patched,
                "kl": self.per_token_kl}


def _token_batches(model: LoadedModel, token_ids: list[list[int]], batch_size: int) -> list[TokenBatch]:
    if not token_ids:
        raise HorizonError("no prompt to run")
    for index, ids in enumerate(token_ids):
        if len(ids) < 2:
            raise HorizonError(f"prompt {index + 1} has {len(ids)} token(s); a prediction needs at least 2")
    # has_bos only affects stat_mask; the horizon metrics use every prediction 0..T-2.
    return batches(model, token_ids, has_bos=True, batch_size=batch_size)


def patch(
    model: LoadedModel,
    token_ids: list[list[int]],
    config: HorizonConfig,
    keep_logits: bool = False,
    batch_size: int = 8,
) -> PatchResult:
    """Run ``config`` on the prompts and compare with the clean run."""
    check_model(model)
    totals = _Totals()
    per_clean: list[list[float]] = []
    per_patched: list[list[float]] = []
    per_kl: list[list[float]] = []
    kept: list[torch.Tensor] = []
    for batch in _token_batches(model, token_ids, batch_size):
        clean = clean_run(model, batch)
        ((_, logits),) = list(patched_logits(model, clean, [config]))
        metrics = token_metrics(clean.logits, logits, batch)
        totals.add(metrics)
        for row, length in enumerate(batch.lengths):
            per_clean.append(metrics.loss_clean[row, : length - 1].tolist())
            per_patched.append(metrics.loss_patched[row, : length - 1].tolist())
            per_kl.append(metrics.kl[row, : length - 1].tolist())
            if keep_logits:
                kept.append(logits[row, :length].detach().clone())
    n = totals.n_tokens
    return PatchResult(
        config=config,
        n_tokens=n,
        loss_clean=totals.loss_clean / n,
        loss_patched=totals.loss_patched / n,
        delta_loss=(totals.loss_patched - totals.loss_clean) / n,
        kl=totals.kl / n,
        top1_agreement=totals.agree / n,
        per_token_loss_clean=per_clean,
        per_token_loss_patched=per_patched,
        per_token_kl=per_kl,
        logits=kept if keep_logits else None,
    )


# ----------------------------------------------------------------------------- the scan


@dataclass
class ScanResult:
    """The loss-vs-enforced-horizon curve, one row per (k, start layer)."""

    rows: list[dict[str, Any]]
    effective_horizon: dict[int, int | None]
    loss_clean: float
    tol: float
    n_tokens: int
    unit: str = "layer"


def default_ks(n_layers: int, unit: str) -> list[int]:
    """k = 1..L+1 in layers (K = 2..2L+2), k = 1..2L+1 in sublayers: the last one is the clean model."""
    return list(range(1, n_layers + 2)) if unit == "layer" else list(range(1, 2 * n_layers + 2))


def effective_horizon(rows: Sequence[dict[str, Any]], start_layer: int, tol: float) -> int | None:
    """The smallest k whose loss increase is <= tol, at one start layer (None: no k qualifies)."""
    qualifying = [row["k"] for row in rows if row["start_layer"] == start_layer and row["delta_loss"] <= tol]
    return min(qualifying) if qualifying else None


def scan(
    model: LoadedModel,
    token_ids: list[list[int]],
    ks: Sequence[int] | None = None,
    start_layers: Sequence[int] = (0,),
    tol: float = DEFAULT_TOL,
    source: str = "recursive",
    keep_embed: bool = False,
    final: str = "window",
    unit: str = "layer",
    progress: Callable[[int], None] | None = None,
    batch_size: int = 8,
    max_pass_bytes: int = DEFAULT_PASS_BYTES,
) -> ScanResult:
    """Loss increase, KL and top-1 agreement for every k and start layer; ``progress(n)`` advances n rows."""
    check_unit(unit)
    if tol < 0:
        raise HorizonError(f"--tol must be >= 0, got {tol}")
    ks = default_ks(model.n_layers, unit) if ks is None else list(ks)
    if not ks or min(ks) < 1:
        raise HorizonError("the horizons to scan must be integers >= 1")
    if not start_layers or min(start_layers) < 0:
        raise HorizonError("the start layers must be integers >= 0")
    check_model(model)
    pairs = [(k, layer) for layer in dict.fromkeys(start_layers) for k in dict.fromkeys(ks)]
    configs = [
        HorizonConfig(horizon_sublayers(k, unit), source=source, keep_embed=keep_embed, final=final, start_layer=layer)
        for k, layer in pairs
    ]
    cleans = [clean_run(model, batch) for batch in _token_batches(model, token_ids, batch_size)]
    totals = [_Totals() for _ in configs]
    clean_totals = _Totals()
    for clean in cleans:
        clean_totals.add(token_metrics(clean.logits, clean.logits, clean.batch, clean.clean_logp))
    # Each group of configs runs over every token batch before the next group, so a config
    # finishes once and progress moves group by group.
    order = _pass_order(model, configs)
    for group in order:
        for clean in cleans:
            for index, logits in patched_logits(model, clean, [configs[i] for i in group], max_pass_bytes):
                totals[group[index]].add(token_metrics(clean.logits, logits, clean.batch, clean.clean_logp))
        if progress is not None:
            progress(len(group))
    n = clean_totals.n_tokens
    loss_clean = clean_totals.loss_clean / n
    rows = []
    for (k, layer), config, total in zip(pairs, configs, totals, strict=True):
        rows.append({
            "k": k,
            "K": config.horizon_sublayers,
            "start_layer": layer,
            "loss": total.loss_patched / n,
            "delta_loss": (total.loss_patched - total.loss_clean) / n,
            "kl": total.kl / n,
            "top1_agreement": total.agree / n,
        })
    horizons = {layer: effective_horizon(rows, layer, tol) for layer in dict.fromkeys(start_layers)}
    return ScanResult(rows=rows, effective_horizon=horizons, loss_clean=loss_clean, tol=tol, n_tokens=n, unit=unit)


def _pass_order(model: LoadedModel, configs: Sequence[HorizonConfig], rows_per_group: int = 8) -> list[list[int]]:
    """Config indices in groups for progress reporting, ordered by first patched layer.

    Each group is handed to ``patched_logits`` whole, which packs it into staircase passes.
    """
    def first_layer(index: int) -> int:
        first = configs[index].first_patched_reader(model.n_layers)
        return -1 if first is None else reader_layer(first)

    ordered = sorted(range(len(configs)), key=first_layer)
    return [ordered[start : start + rows_per_group] for start in range(0, len(ordered), rows_per_group)]


# ----------------------------------------------------------------------------- the straightforward reference


def reference_patched_logits(model: LoadedModel, input_ids: torch.Tensor, config: HorizonConfig) -> torch.Tensor:
    """One full hooked bridge pass with the window hooks, as a new user would write it.

    No clean-prefix reuse, no batching: the benchmark's naive scan and a cross-check in tests.
    """
    check_model(model)
    n_layers = model.n_layers
    clean_outputs: torch.Tensor | None = None
    if config.source == "clean":
        capture = run_capture(model, input_ids, ("embed", "attn_out", "mlp_out"))
        clean_outputs = stack_outputs(capture["embed"], capture["attn_out"], capture["mlp_out"])
    batch, pos = input_ids.shape
    produced = torch.empty((n_readers(n_layers), batch, pos, model.d_model), dtype=model.dtype, device=model.device)
    count = 0

    def record(activation: torch.Tensor, hook: object) -> torch.Tensor:
        nonlocal count
        produced[count] = activation
        count += 1
        return activation

    def read(j: int) -> Callable:
        def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
            if not config.patches(j, n_layers):
                return activation
            outputs = clean_outputs if clean_outputs is not None else produced
            return window_read(outputs, j, config.horizon_sublayers, config.keep_embed)

        return hook

    hooks: list[tuple[str, Callable]] = [("blocks.0.hook_resid_pre", record)]
    for j in range(1, n_readers(n_layers) + 1):
        hooks.append((reader_hook(j, n_layers), read(j)))
        if j <= 2 * n_layers:
            hooks.append((output_hook(j), record))
    with torch.inference_mode():
        return model.bridge.run_with_hooks(input_ids, fwd_hooks=hooks, return_type="logits")
