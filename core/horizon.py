"""The effective layer horizon (docs/SCIENCE.md section 3, seed 000): a patched forward pass and its metrics.

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
Windows are differences of float64 prefix sums (one subtraction per reader, exact to float32
rounding), and a scan's readout reduces each vocabulary tile of the logits to the metrics while the
tile is in cache, so no config's full logits are ever held. A long prompt can go through all of it
in position chunks with KV caches (``ChunkedClean``, ``metric_sums``): windows are per-position
sums, so only attention needs the positions before, and it reads them from the cache (on a stack
where that holds: core/chunking.py checks it before the model's first chunked pass).

Over 400 lines for a reason: the configuration, the clean run, the patched pass and ``patch`` are
one pipeline whose invariants (which reader is patched, what the clean run caches for the pass)
are best read together. Its parts live beside it: core/staircase.py (the batched pass),
core/horizon_metrics.py (readout and metrics), core/horizon_scan.py (scan and the layer x k
matrix), core/ablation.py (mean ablation's means).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from horizon.core import budget
from horizon.core.ablation import AblationMeans, MeanAccumulator, ablation_means, needs_means
from horizon.core.budget import VOCAB_TILE  # vocabulary columns per readout tile, defined once there
from horizon.core.capture import new_cache, position_chunks, run_capture
from horizon.core.decomposition import (
    n_readers,
    output_hook,
    reader_hook,
    reader_layer,
    stack_outputs,
    window_read,
)
from horizon.core.errors import HorizonError
from horizon.core.horizon_metrics import (
    CleanReference,
    LinearHead,
    TokenMetrics,
    Totals,
    apply_head,
    linear_head,
    logits_metrics,
    logits_readout,
    post_head,
    row_sums,
    token_metrics,
    unembed,
    vocab_metrics,
    vocab_tiles,
)
from horizon.core.loader import LoadedModel
from horizon.core.options import ABLATIONS, FINALS, SOURCES, UNITS
from horizon.core.prompts import TokenBatch, batches
from horizon.core.staircase import Row, StaircasePass

DEFAULT_TOL = 0.1
# Memory one batched pass may hold (window buffers, activations, attention scores, logits).
DEFAULT_PASS_BYTES = 2 << 30
# The memory one tile of stacked rows may take (tiles of core/budget.py's VOCAB_TILE vocabulary
# columns): small enough to stay in cache while it is reduced, and for the allocator to reuse
# instead of mapping anew.
TILE_BYTES = 10 << 20
# The clean runs of a whole prompt set are kept (for reuse by every pass) up to this size; above
# it they are made batch by batch as they are used (``clean_runs``).
KEEP_CLEAN_BYTES = 1 << 30


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class HorizonConfig:
    """One enforced horizon: K in sublayers plus the docs/SCIENCE.md section 3 options."""

    horizon_sublayers: int
    source: str = "recursive"
    keep_embed: bool = False
    final: str = "window"
    start_layer: int = 0
    # zero: outputs outside the window count as zero; mean: as their clean means (AblationMeans).
    ablation: str = "zero"
    # Enforce the horizon at this layer's readers only (L: the final readout); None: every layer >= start_layer.
    only_layer: int | None = None

    def __post_init__(self) -> None:
        if self.horizon_sublayers < 1:
            raise HorizonError(f"the horizon must be at least 1 sublayer, got {self.horizon_sublayers}")
        if self.source not in SOURCES:
            raise HorizonError(f"unknown source {self.source!r}: use recursive or clean")
        if self.final not in FINALS:
            raise HorizonError(f"unknown final readout {self.final!r}: use window or full")
        if self.start_layer < 0:
            raise HorizonError(f"the start layer must be >= 0, got {self.start_layer}")
        if self.ablation not in ABLATIONS:
            raise HorizonError(f"unknown ablation {self.ablation!r}: use zero or mean")
        if self.only_layer is not None:
            if self.only_layer < 0:
                raise HorizonError(f"the only layer must be >= 0, got {self.only_layer}")
            if self.start_layer:
                raise HorizonError("--only-layer and --start-layer are exclusive: give one of them")

    def check_layers(self, n_layers: int) -> None:
        """Refuse an only layer beyond the final readout (layer L)."""
        if self.only_layer is not None and self.only_layer > n_layers:
            raise HorizonError(f"--only-layer {self.only_layer} is out of range: use 0..{n_layers} "
                               f"(or final; {n_layers} is the final readout)")

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
        if j <= self.horizon_sublayers:  # the window still reaches s_0: it is the whole stream
            return False
        if self.only_layer is not None:
            return reader_layer(j) == self.only_layer
        return reader_layer(j) >= self.start_layer

    def last_patched_reader(self, n_layers: int) -> int:
        """The last reader that may read a window (with only_layer N < L: mlp_N = reader 2N+2)."""
        final = n_readers(n_layers)
        return final if self.only_layer is None else min(final, 2 * self.only_layer + 2)

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
    targets: torch.Tensor  # the token each scored position predicts [batch, n_predicting]
    valid: torch.Tensor  # whether that token is real (not padding)
    offset: int = 0  # the first position's index in the prompt (a position chunk's start; else 0)
    # per layer, where the clean call passed its KV cache (an index into the block's arguments, a
    # keyword, or None): a chunk's patched pass puts its rows' cache there
    cache_slots: list[int | str | None] = field(default_factory=list)
    _tiled: dict[tuple[int, int], tuple[tuple, dict]] = field(default_factory=dict, repr=False)
    _reference: CleanReference | None = field(default=None, repr=False)
    _exact_reads: torch.Tensor | None = field(default=None, repr=False)

    @property
    def batch_size(self) -> int:
        return self.outputs.shape[1]

    @property
    def device(self) -> torch.device:
        return self.outputs.device

    def parts(self) -> Iterator[CleanRun]:
        """The run in position chunks: itself (``ChunkedClean`` has several)."""
        yield self

    @property
    def exact_reads(self) -> torch.Tensor:
        """Clean r_1..r_{2L+1} (index j-1) as float64 sums of the outputs, computed once."""
        if self._exact_reads is None:
            # cumsum casting as it goes: no float64 copy of the outputs next to the prefix sums
            self._exact_reads = self.outputs.cumsum(dim=0, dtype=torch.float64)
        return self._exact_reads

    @property
    def reference(self) -> CleanReference:
        """The clean next-token statistics every config is compared with, computed once."""
        if self._reference is None:
            self._reference = CleanReference.of(self.logits, self.targets, self.valid)
        return self._reference

    def block_call(self, layer: int, copies: int, cache: Any = None) -> tuple[tuple, dict]:
        """The layer's call arguments for ``copies`` stacked copies of the batch (with ``cache``: a
        position chunk's pass, whose keys and values go to that cache)."""
        key = (layer, copies)
        if key not in self._tiled:
            args, kwargs = self.block_args[layer]
            batch = self.batch_size
            self._tiled[key] = (
                tuple(_tile(value, batch, copies) for value in args),
                {name: _tile(value, batch, copies) for name, value in kwargs.items()},
            )
        args, kwargs = self._tiled[key]
        if cache is None:
            return args, kwargs
        slot = self.cache_slots[layer] if self.cache_slots else None
        if "use_cache" in kwargs:
            kwargs = {**kwargs, "use_cache": True}
        if isinstance(slot, int):
            return (*args[:slot], cache, *args[slot + 1 :]), kwargs
        return args, {**kwargs, slot or "past_key_values": cache}


def _tile(value: Any, batch: int, copies: int) -> Any:
    """Repeat batch-leading tensors (masks, rotary tables, position ids) ``copies`` times."""
    if isinstance(value, tuple):
        return tuple(_tile(item, batch, copies) for item in value)
    if isinstance(value, list):
        return [_tile(item, batch, copies) for item in value]
    if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[0] == batch and copies > 1:
        return value.repeat(copies, *([1] * (value.ndim - 1)))
    return value


def _is_cache(value: Any) -> bool:
    return type(value).__name__.endswith("Cache") and not isinstance(value, torch.Tensor)


def _without_cache(value: Any) -> Any:
    # A replayed block must not append to the clean run's KV cache.
    return None if _is_cache(value) else value


def clean_run(model: LoadedModel, batch: TokenBatch, positions: slice | None = None, cache: Any = None) -> CleanRun:
    """The unpatched pass: sublayer outputs, resid_pre per layer, logits and each block's call.

    ``positions`` (with ``cache``, a KV cache holding the clean keys and values of every earlier
    position, extended here) runs one position chunk of the batch: see ``ChunkedClean``.
    """
    check_model(model)
    block_args: list[tuple[tuple, dict] | None] = [None] * model.n_layers
    cache_slots: list[int | str | None] = [None] * model.n_layers

    def recorder(layer: int) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            kept = {name: _without_cache(value) for name, value in kwargs.items()}
            if "use_cache" in kept:
                kept["use_cache"] = False
            positional = tuple(_without_cache(value) for value in args[1:])
            block_args[layer] = (positional, kept)
            slots: list[int | str] = [index for index, value in enumerate(args[1:]) if _is_cache(value)]
            slots += [name for name, value in kwargs.items() if _is_cache(value)]
            cache_slots[layer] = slots[0] if slots else None

        return hook

    positions = positions or slice(0, batch.input_ids.shape[1])
    start, stop = positions.start, positions.stop
    # The next tokens: a chunk's last position predicts the next chunk's first token.
    targets, valid = batch.input_ids[:, start + 1 : stop + 1], batch.mask[:, start + 1 : stop + 1]
    # only a prompt's first position is its BOS (token_ids stay the whole prompts')
    batch = TokenBatch(batch.token_ids, batch.input_ids[:, start:stop], batch.mask[:, start:stop],
                       batch.has_bos and start == 0)
    handles = [
        block.register_forward_pre_hook(recorder(layer), with_kwargs=True)
        for layer, block in enumerate(model.bridge.blocks)
    ]
    forward = None if cache is None else {"past_key_values": cache, "use_cache": True}
    try:
        capture = run_capture(model, batch.input_ids, ("embed", "attn_out", "mlp_out", "resid_pre"), keep_logits=True,
                              forward_kwargs=forward)
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
        targets=targets,
        valid=valid,
        offset=start,
        cache_slots=cache_slots,
    )


class ChunkedClean:
    """A token batch's clean run made position chunk by position chunk, each chunk when it is used.

    For long prompts under a tight memory budget (core/budget.py chooses ``position_chunk``): a
    causal model's position t depends on earlier positions only through attention's keys and
    values, and a horizon window is a sum over sublayers at one position, so the clean run and
    every patched pass can go through the prompt a chunk at a time, each keeping a KV cache of
    the chunks before (the clean pass its own, each staircase pass its rows'). Memory then grows
    with the chunk (activations, attention scores [chunk, T], logits, the outputs' prefix sums)
    instead of the prompt, plus the caches' keys and values. Each use runs the chunks again.
    """

    def __init__(self, model: LoadedModel, batch: TokenBatch, position_chunk: int) -> None:
        from horizon.core.chunking import require_exact_chunks

        require_exact_chunks(model)  # never other numbers than the whole pass (checked at the first use)
        self.model, self.batch = model, batch
        self.chunks = position_chunks(batch.input_ids.shape[1], position_chunk)

    @property
    def batch_size(self) -> int:
        return self.batch.input_ids.shape[0]

    @property
    def device(self) -> torch.device:
        return self.batch.input_ids.device

    def parts(self) -> Iterator[CleanRun]:
        """The chunks' clean runs, in order (one alive at a time if the caller lets go of each)."""
        cache = new_cache(self.model)
        for positions in self.chunks:
            yield clean_run(self.model, self.batch, positions, cache)


# ----------------------------------------------------------------------------- mean ablation


def corpus_ablation_means(
    model: LoadedModel, token_ids: list[list[int]], has_bos: bool = True, batch_size: int = 8
) -> AblationMeans:
    """The means over a whole corpus, one clean capture per token batch (nothing else is kept)."""
    check_model(model)
    accumulator = MeanAccumulator()
    for batch in batches(model, token_ids, has_bos=has_bos, batch_size=batch_size):
        capture = run_capture(model, batch.input_ids, ("embed", "attn_out", "mlp_out"))
        accumulator.add(stack_outputs(capture["embed"], capture["attn_out"], capture["mlp_out"]), batch)
    return accumulator.result()


# ----------------------------------------------------------------------------- the patched pass


def _row_bytes(model: LoadedModel, clean: CleanRun) -> int:
    """Memory of one row (one config over the whole token batch) inside a batched pass (core/budget.py's model)."""
    return budget.row_bytes(budget.ModelDims.of(model), clean.batch_size, clean.outputs.shape[2])


def patched_logits(
    model: LoadedModel,
    clean: CleanRun,
    configs: Sequence[HorizonConfig],
    max_pass_bytes: int = DEFAULT_PASS_BYTES,
    progress: Callable[[float], None] | None = None,
    means: AblationMeans | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (index into configs, patched logits [batch, pos, vocab]) for every config.

    Configs that patch nothing yield the clean logits; the others run in as few batched passes
    as ``max_pass_bytes`` allows, each starting at the layer where its first window bites (layer
    L: only the final readout is patched, so no block runs for it). ``progress(n)`` advances by
    n configs' worth of work, in fractions as the layers of a pass complete. ``means`` are the
    ablation means of mean-ablating configs (default: those of this clean run's prompts).
    """
    readout = logits_readout(model, clean.batch_size)
    yield from _run_configs(model, clean, configs, readout, clean.logits, max_pass_bytes, progress, means=means)


def patched_metrics(
    model: LoadedModel,
    clean: CleanRun,
    configs: Sequence[HorizonConfig],
    max_pass_bytes: int = DEFAULT_PASS_BYTES,
    progress: Callable[[float], None] | None = None,
    means: AblationMeans | None = None,
    vocab_tile: int | None = None,
) -> Iterator[tuple[int, TokenMetrics]]:
    """Like ``patched_logits``, but yield each config's metrics against the clean run.

    The readout never holds a config's full logits: the unembedding runs one vocabulary tile at
    a time (``vocab_tile`` columns; default: core/budget.py's ``readout_tile``, VOCAB_TILE unless the
    batch is long) and every metric is reduced from the tile while it is still in
    cache (the scan's path).
    """
    readout, rows_per_readout = _metrics_readout(model, clean, linear_head(model), vocab_tile)
    yield from _run_configs(
        model, clean, configs, readout, clean.reference.unpatched(), max_pass_bytes, progress, rows_per_readout, means
    )


def _metrics_readout(
    model: LoadedModel, clean: CleanRun, head: LinearHead | None, vocab_tile: int | None = None
) -> tuple[Callable[[torch.Tensor], list[TokenMetrics]], int]:
    """The tiled metrics readout of stacked rows against ``clean``, and how many rows one call may take.

    ``head`` is the model's ``linear_head`` (its post-head steps included), found by the caller:
    finding it reads the bias back to the host, so a caller making many readouts finds it once.
    """
    reference = clean.reference
    batch, n_positions = clean.batch_size, clean.outputs.shape[2]
    vocab_tile = vocab_tile or budget.readout_tile(batch, n_positions, VOCAB_TILE)

    def readout(normed: torch.Tensor) -> list[TokenMetrics]:
        # Only positions that predict a token are scored (a prompt's last one predicts nothing).
        predicting = normed[:, : reference.n_predicting].contiguous()
        n_rows = predicting.shape[0] // batch
        if head is None:  # not a plain linear head: unembed whole, then reduce
            return logits_metrics(reference, post_head(model).apply_(model.bridge.unembed(predicting)), n_rows)

        def tiles() -> Iterator[tuple[slice, torch.Tensor]]:
            buffers: dict[int, torch.Tensor] = {}
            for columns in vocab_tiles(head.weight.shape[0], vocab_tile):
                width = columns.stop - columns.start
                if width not in buffers:
                    buffers[width] = predicting.new_empty((*predicting.shape[:-1], width))
                tile = apply_head(head, predicting, buffers[width], columns)
                yield columns, tile.float()  # metrics in float32 whatever the model's dtype

        return vocab_metrics(reference, tiles(), n_rows)

    return readout, TILE_BYTES // max(1, batch * n_positions * vocab_tile * 4)


def _staircase_groups(
    model: LoadedModel, configs: Sequence[HorizonConfig], row_bytes: int, max_pass_bytes: int
) -> tuple[list[int], list[list[Row]]]:
    """The configs that patch nothing, and the others' staircase rows grouped into passes of at most
    ``max_pass_bytes`` (rows sorted by first patched layer)."""
    n_layers = model.n_layers
    unpatched: list[int] = []
    staircase: list[tuple[int, int]] = []  # (first patched layer, config index)
    for index, config in enumerate(configs):
        config.check_layers(n_layers)
        first = config.first_patched_reader(n_layers)
        if first is None:
            unpatched.append(index)
        else:
            staircase.append((reader_layer(first), index))
    staircase.sort()
    per_pass = max(1, max_pass_bytes // max(1, row_bytes))
    groups = [[(layer, index, configs[index]) for layer, index in staircase[start : start + per_pass]]
              for start in range(0, len(staircase), per_pass)]
    return unpatched, groups


def _run_configs(
    model: LoadedModel,
    clean: CleanRun,
    configs: Sequence[HorizonConfig],
    readout: Callable[[torch.Tensor], list[Any]],
    unpatched: Any,
    max_pass_bytes: int,
    progress: Callable[[float], None] | None,
    rows_per_readout: int | None = None,
    means: AblationMeans | None = None,
) -> Iterator[tuple[int, Any]]:
    """Group configs into staircase passes; yield (config index, readout item) for each."""
    clean_indices, groups = _staircase_groups(model, configs, _row_bytes(model, clean), max_pass_bytes)
    means = _checked_means(model, configs, means, [clean])
    advance = progress or (lambda n: None)
    for index in clean_indices:
        advance(1)
        yield index, unpatched
    for rows in groups:
        yield from StaircasePass(model, clean, rows, readout, advance, rows_per_readout, means).run()


def _checked_means(
    model: LoadedModel, configs: Sequence[HorizonConfig], means: AblationMeans | None, cleans: Sequence[Any]
) -> AblationMeans | None:
    """The ablation means mean-ablating configs use (default: those of ``cleans``), checked against the model."""
    if not needs_means(configs):
        return means
    means = means if means is not None else ablation_means(cleans)
    means.check(model.n_layers, model.d_model)
    return means


def metric_sums(
    model: LoadedModel,
    clean: CleanRun | ChunkedClean,
    configs: Sequence[HorizonConfig],
    max_pass_bytes: int = DEFAULT_PASS_BYTES,
    progress: Callable[[float], None] | None = None,
    means: AblationMeans | None = None,
) -> torch.Tensor:
    """Every config's per-prompt metric sums over the token batch, [len(configs) + 1, batch, 5] float64
    on the device (``horizon_metrics.row_sums``; the last row is the clean run's own).

    Sums over positions add up over position chunks, so a ``ChunkedClean`` batch is summed chunk
    by chunk: each staircase pass goes through every chunk with its own KV cache before the next
    pass starts (the clean chunks are made again for each pass: the price of holding one chunk).
    A ``CleanRun`` is the one-chunk case: one part, no cache.
    """
    sums = torch.zeros((len(configs) + 1, clean.batch_size, 5), dtype=torch.float64, device=clean.device)
    chunked = isinstance(clean, ChunkedClean)
    means = _checked_means(model, configs, means, [clean])
    if isinstance(clean, ChunkedClean):
        n_parts = len(clean.chunks)
        longest = max(part.stop - part.start for part in clean.chunks)
        row = budget.row_bytes(budget.ModelDims.of(model), clean.batch_size, clean.chunks[-1].stop, longest)
    else:
        n_parts, row = 1, _row_bytes(model, clean)
    clean_indices, groups = _staircase_groups(model, configs, row, max_pass_bytes)
    advance = progress or (lambda n: None)
    head = linear_head(model)  # once: every pass and part makes its own readout
    for group, rows in enumerate(groups or [[]]):
        cache = new_cache(model) if rows and chunked else None
        for part in clean.parts():
            if group == 0:  # the clean run's sums, and those of the configs that patch nothing
                part_sums = row_sums(part.reference.unpatched())
                sums[-1] += part_sums
                for index in clean_indices:
                    sums[index] += part_sums
                    advance(1 / n_parts)
            if rows:
                readout, rows_per_readout = _metrics_readout(model, part, head)
                part_pass = StaircasePass(model, part, rows, readout, lambda n: advance(n / n_parts),
                                          rows_per_readout, means, cache=cache)
                for index, metrics in part_pass.run():
                    sums[index] += row_sums(metrics)
    return sums


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


def clean_runs(
    model: LoadedModel, token_ids: list[list[int]], batch_size: int = 8, has_bos: bool = True,
    keep_bytes: int = KEEP_CLEAN_BYTES, position_chunk: int | None = None,
) -> Sequence[CleanRun | ChunkedClean]:
    """The clean runs of the prompts, in token batches: what patch and scan compare against.

    ``has_bos`` says whether position 0 is a BOS (mean ablation leaves it out of the means).
    When all of them would hold more than ``keep_bytes`` (core/budget.py's clean-run cost), they
    are not kept: the sequence makes each batch's run when it is read, so one batch's is alive at
    a time (and a second reading runs it again). With ``position_chunk`` (core/budget.py's choice
    when a whole prompt's clean run does not fit), a batch longer than that is a ``ChunkedClean``
    (for ``metric_sums`` and the ablation means; not for ``patch``, which keeps whole logits).
    """
    if not token_ids:
        raise HorizonError("no prompt to run")
    for index, ids in enumerate(token_ids):
        if len(ids) < 2:
            raise HorizonError(f"prompt {index + 1} has {len(ids)} token(s); a prediction needs at least 2")
    # has_bos only affects stat_mask (the ablation means); the metrics use every prediction 0..T-2.
    token_batches = batches(model, token_ids, has_bos=has_bos, batch_size=batch_size)
    held = sum(batch.input_ids.numel() for batch in token_batches)
    if position_chunk is not None or budget.clean_run_bytes(budget.ModelDims.of(model), held) > keep_bytes:
        return CleanRuns(model, token_batches, position_chunk)
    return [clean_run(model, batch) for batch in token_batches]


class CleanRuns(Sequence[CleanRun | ChunkedClean]):
    """Clean runs made when read and never kept: a corpus's would not fit in memory at once.

    A batch longer than ``position_chunk`` (when given) is read as a ``ChunkedClean``.
    """

    def __init__(self, model: LoadedModel, token_batches: list[TokenBatch], position_chunk: int | None = None) -> None:
        self.model, self.token_batches, self.position_chunk = model, token_batches, position_chunk

    def __len__(self) -> int:
        return len(self.token_batches)

    def __getitem__(self, index: int) -> CleanRun | ChunkedClean:  # type: ignore[override]
        batch = self.token_batches[index]
        if self.position_chunk is not None and batch.input_ids.shape[1] > self.position_chunk:
            return ChunkedClean(self.model, batch, self.position_chunk)
        return clean_run(self.model, batch)


def patch(
    model: LoadedModel,
    token_ids: list[list[int]],
    config: HorizonConfig,
    keep_logits: bool = False,
    batch_size: int = 8,
    cleans: Sequence[CleanRun | ChunkedClean] | None = None,
    means: AblationMeans | None = None,
    has_bos: bool = True,
) -> PatchResult:
    """Run ``config`` on the prompts and compare with the clean run.

    ``cleans`` are the prompts' clean runs (``clean_runs``) when the caller keeps them for reuse;
    ``means`` the ablation means of a mean-ablating config (default: the prompts' own, with
    position 0 a BOS when ``has_bos``).
    """
    check_model(model)
    config.check_layers(model.n_layers)
    cleans = cleans if cleans is not None else clean_runs(model, token_ids, batch_size, has_bos)
    if config.ablation == "mean" and means is None:
        means = ablation_means(cleans)
    totals = Totals()
    per_clean: list[list[float]] = []
    per_patched: list[list[float]] = []
    per_kl: list[list[float]] = []
    kept: list[torch.Tensor] = []
    for clean in cleans:
        if not isinstance(clean, CleanRun):
            raise HorizonError("patch keeps whole logits, so it cannot run on position chunks; lower the prompt length")
        batch = clean.batch
        ((_, logits),) = list(patched_logits(model, clean, [config], means=means))  # kept: a fresh tensor
        metrics = token_metrics(clean.reference, logits)
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


# ----------------------------------------------------------------------------- the straightforward reference


def reference_patched_logits(
    model: LoadedModel, input_ids: torch.Tensor, config: HorizonConfig, means: AblationMeans | None = None
) -> torch.Tensor:
    """One full hooked bridge pass with the window hooks, as a new user would write it.

    No clean-prefix reuse, no batching: the benchmark's naive scan and a cross-check in tests.
    Mean ablation needs ``means`` (position 0 is taken as a BOS when ``means.has_bos``).
    """
    check_model(model)
    n_layers = model.n_layers
    config.check_layers(n_layers)
    if config.ablation == "mean" and means is None:
        raise HorizonError("mean ablation needs the ablation means")
    clean_outputs: torch.Tensor | None = None
    if config.source == "clean" or config.ablation == "mean":
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
            outputs = clean_outputs if config.source == "clean" else produced
            assert outputs is not None  # a clean-source pass is always given the clean outputs
            window = window_read(outputs, j, config.horizon_sublayers, config.keep_embed)
            if config.ablation == "mean":
                assert means is not None and clean_outputs is not None
                lo = j - config.horizon_sublayers
                window = window + means.fill(lo, config.keep_embed, window.dtype)
                if means.has_bos:  # position 0: the window plus the clean s_0..s_{lo-1} there
                    window[:, 0] = outputs[lo:j, :, 0].sum(dim=0) + clean_outputs[:lo, :, 0].sum(dim=0)
            return window

        return hook

    hooks: list[tuple[str, Callable]] = [("blocks.0.hook_resid_pre", record)]
    for j in range(1, n_readers(n_layers) + 1):
        hooks.append((reader_hook(j, n_layers), read(j)))
        if j <= 2 * n_layers:
            hooks.append((output_hook(j), record))
    with torch.inference_mode():
        return model.bridge.run_with_hooks(input_ids, fwd_hooks=hooks, return_type="logits")



__all__ = [
    "AblationMeans",
    "CleanReference",
    "MeanAccumulator",
    "TokenMetrics",
    "ablation_means",
    "apply_head",
    "logits_metrics",
    "needs_means",
    "token_metrics",
    "unembed",
]
