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
tile is in cache, so no config's full logits are ever held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from horizon.core.capture import run_capture
from horizon.core.decomposition import (
    n_readers,
    output_hook,
    reader_hook,
    reader_layer,
    residual_reads,
    stack_outputs,
    window_read,
)
from horizon.core.errors import HorizonError
from horizon.core.loader import LoadedModel
from horizon.core.prompts import TokenBatch, batches

SOURCES = ("recursive", "clean")
FINALS = ("window", "full")
UNITS = ("layer", "sublayer")
ABLATIONS = ("zero", "mean")
DEFAULT_TOL = 0.1
# Memory one batched pass may hold (window buffers, activations, attention scores, logits).
DEFAULT_PASS_BYTES = 2 << 30
# Logits one batched readout may hold.
READOUT_BYTES = 128 << 20
# Vocabulary columns per unembedding tile, and the memory one tile of stacked rows may take: small
# enough to stay in cache while it is reduced, and for the allocator to reuse instead of mapping anew.
VOCAB_TILE = 2048
TILE_BYTES = 10 << 20


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
    _tiled: dict[tuple[int, int], tuple[tuple, dict]] = field(default_factory=dict, repr=False)
    _reference: CleanReference | None = field(default=None, repr=False)
    _exact_reads: torch.Tensor | None = field(default=None, repr=False)

    @property
    def batch_size(self) -> int:
        return self.outputs.shape[1]

    @property
    def exact_reads(self) -> torch.Tensor:
        """Clean r_1..r_{2L+1} (index j-1) as float64 sums of the outputs, computed once."""
        if self._exact_reads is None:
            self._exact_reads = residual_reads(self.outputs.double())
        return self._exact_reads

    @property
    def reference(self) -> CleanReference:
        """The clean next-token statistics every config is compared with, computed once."""
        if self._reference is None:
            self._reference = CleanReference.of(self.logits, self.batch)
        return self._reference

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


# ----------------------------------------------------------------------------- mean ablation


@dataclass
class AblationMeans:
    """m_0..m_{2L}: the clean run's mean of each sublayer output (docs/SCIENCE.md section 3, ablation).

    With ``ablation="mean"`` reader j reads h_j + m_0 + ... + m_{lo-1} (lo = max(0, j-K)): the
    outputs outside its window are replaced by their means instead of zero. ``mean[i]`` is the mean
    of s_i over the non-BOS positions of the analysed prompts (every position without a BOS); at
    the BOS position 0 the clean run's own s_i at position 0 is used (every prompt's is the same),
    so it is not stored here. A sweep computes these once over the whole corpus.
    """

    mean: torch.Tensor  # [2L+1, d_model] float64
    has_bos: bool = True
    n_positions: int = 0  # how many positions were averaged
    _fills: dict[tuple[int, bool, torch.dtype], torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.mean = self.mean.double()
        # M_i = m_0 + ... + m_{i-1}, i = 0..2L+1 (M_0 = 0).
        self.prefix = torch.cat((self.mean.new_zeros((1, self.mean.shape[-1])), self.mean.cumsum(dim=0)))

    def fill(self, lo: int, keep_embed: bool, dtype: torch.dtype) -> torch.Tensor:
        """What replaces s_0..s_{lo-1} at the non-BOS positions: M_lo, or M_lo - m_0 when s_0 is kept exact."""
        key = (lo, keep_embed, dtype)
        if key not in self._fills:
            value = self.prefix[lo] - (self.prefix[1] if keep_embed else 0)
            self._fills[key] = value.to(dtype)
        return self._fills[key]

    def check(self, n_layers: int, d_model: int) -> None:
        if tuple(self.mean.shape) != (n_readers(n_layers), d_model):
            raise HorizonError(f"the ablation means have shape {tuple(self.mean.shape)}; this model needs "
                               f"({n_readers(n_layers)}, {d_model})")


class MeanAccumulator:
    """Sums of each sublayer output over the positions that enter the ablation means."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0
        self.has_bos = True

    def add(self, outputs: torch.Tensor, batch: TokenBatch) -> None:
        """``outputs``: s_0..s_{2L} of one token batch [2L+1, batch, pos, d_model]."""
        mask = batch.stat_mask()  # real tokens, without the BOS position when there is one
        self.has_bos = batch.has_bos
        summed = torch.stack([outputs[i][mask].double().sum(dim=0) for i in range(outputs.shape[0])])
        self.total = summed if self.total is None else self.total + summed
        self.count += int(mask.sum())

    def result(self) -> AblationMeans:
        if self.total is None or self.count == 0:
            raise HorizonError("mean ablation needs at least one position after the BOS to average over")
        return AblationMeans(self.total / self.count, self.has_bos, self.count)


def ablation_means(cleans: Sequence[CleanRun]) -> AblationMeans:
    """The means of the analysed prompts' own clean runs."""
    accumulator = MeanAccumulator()
    for clean in cleans:
        accumulator.add(clean.outputs, clean.batch)
    return accumulator.result()


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


def _needs_means(configs: Iterable[HorizonConfig]) -> bool:
    return any(config.ablation == "mean" for config in configs)


# ----------------------------------------------------------------------------- the patched pass


def _row_bytes(model: LoadedModel, clean: CleanRun) -> int:
    """Rough memory of one row (one config over the whole token batch) inside a batched pass."""
    batch, pos = clean.batch_size, clean.outputs.shape[2]
    element = clean.outputs.element_size()
    d_mlp = int(getattr(model.bridge.cfg, "d_mlp", None) or 4 * model.d_model)
    # The float64 prefixes count twice; then activations, attention scores and the MLP.
    per_position = model.d_model * (2 * n_readers(model.n_layers) + 8) + 2 * model.n_heads * pos + 3 * d_mlp
    return batch * pos * per_position * element


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
    readout = _logits_readout(model, clean.batch_size)
    yield from _run_configs(model, clean, configs, readout, clean.logits, max_pass_bytes, progress, means=means)


def _logits_readout(model: LoadedModel, batch: int) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """Final-normed reads of stacked rows -> each row's logits [batch, pos, vocab], fresh tensors."""

    def readout(normed: torch.Tensor) -> list[torch.Tensor]:
        logits = _unembed(model, normed, normed.new_empty((*normed.shape[:-1], int(model.bridge.cfg.d_vocab))))
        return list(logits.split(batch))

    return readout


def patched_metrics(
    model: LoadedModel,
    clean: CleanRun,
    configs: Sequence[HorizonConfig],
    max_pass_bytes: int = DEFAULT_PASS_BYTES,
    progress: Callable[[float], None] | None = None,
    means: AblationMeans | None = None,
) -> Iterator[tuple[int, TokenMetrics]]:
    """Like ``patched_logits``, but yield each config's metrics against the clean run.

    The readout never holds a config's full logits: the unembedding runs one vocabulary tile at
    a time and every metric is reduced from the tile while it is still in cache (the scan's path).
    """
    reference = clean.reference
    head = _linear_head(model)
    batch = clean.batch_size

    def readout(normed: torch.Tensor) -> list[TokenMetrics]:
        predicting = normed[:, :-1].contiguous()  # the last position predicts nothing that is scored
        n_rows = predicting.shape[0] // batch
        if head is None:  # not a plain linear head: unembed whole, then reduce
            return _logits_metrics(reference, model.bridge.unembed(predicting), n_rows)

        def tiles() -> Iterator[tuple[slice, torch.Tensor]]:
            buffers: dict[int, torch.Tensor] = {}
            for columns in _vocab_tiles(head[0].shape[0]):
                width = columns.stop - columns.start
                if width not in buffers:
                    buffers[width] = predicting.new_empty((*predicting.shape[:-1], width))
                tile = _apply_head(head, predicting, buffers[width], columns)
                yield columns, tile.float()  # metrics in float32 whatever the model's dtype

        return _vocab_metrics(reference, tiles(), n_rows)

    rows_per_readout = TILE_BYTES // max(1, batch * clean.outputs.shape[2] * VOCAB_TILE * 4)
    yield from _run_configs(
        model, clean, configs, readout, reference.unpatched(), max_pass_bytes, progress, rows_per_readout, means
    )


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
    n_layers = model.n_layers
    for config in configs:
        config.check_layers(n_layers)
    if _needs_means(configs):
        means = means if means is not None else ablation_means([clean])
        means.check(n_layers, model.d_model)
    advance = progress or (lambda n: None)
    staircase: list[tuple[int, int]] = []  # (first patched layer, config index)
    for index, config in enumerate(configs):
        first = config.first_patched_reader(n_layers)
        if first is None:
            advance(1)
            yield index, unpatched
        else:
            staircase.append((reader_layer(first), index))
    staircase.sort()
    per_pass = max(1, max_pass_bytes // max(1, _row_bytes(model, clean)))
    for start in range(0, len(staircase), per_pass):
        rows = [(layer, index, configs[index]) for layer, index in staircase[start : start + per_pass]]
        yield from _staircase_pass(model, clean, rows, readout, advance, rows_per_readout, means)


def _staircase_pass(
    model: LoadedModel,
    clean: CleanRun,
    rows: list[tuple[int, int, HorizonConfig]],
    readout: Callable[[torch.Tensor], list[Any]] | None = None,
    advance: Callable[[float], None] = lambda n: None,
    rows_per_readout: int | None = None,
    means: AblationMeans | None = None,
) -> Iterator[tuple[int, Any]]:
    """One batched pass; row r (sorted by first patched layer) occupies batch slots r*B..(r+1)*B-1.

    A window is a difference of two prefix sums of the outputs, h_j = P_j - P_{j-K} (+ s_0 with
    keep_embed), not a sum of K outputs: one subtraction per reader instead of up to 2L additions.
    P_i = s_0 + ... + s_{i-1} is kept in float64, so the difference is the window to float32
    rounding even where huge early outputs (the BOS position's) sit in both prefixes; the model's
    own float32 residual stream is not used for this, as differencing it would expose its rounding.
    A row's prefix is its own from the layer it joined on (source recursive), the clean one before.
    Mean ablation adds the prefix of the means, M_lo (a [d_model] vector), at the non-BOS positions
    and the clean P_lo at the BOS position. Prefixes are kept only up to the last reader any row
    patches (with only_layer N < L that is mlp_N); past it the rows just run on.
    """
    n_layers, batch = model.n_layers, clean.batch_size
    readout = readout or _logits_readout(model, batch)  # each row's logits unless told otherwise
    final = n_readers(n_layers)
    first_layer = rows[0][0]
    n_rows = len(rows)
    clean_prefix = clean.exact_reads  # clean P_1..P_{2L+1}, index i-1
    prefix: dict[int, torch.Tensor] = {}  # P_i of every active row, from the first layer's reader on
    last_use = _prefix_last_use(rows, n_layers)
    last_prefix = max(last_use)  # no P_i beyond it is ever read

    def slots(row: int) -> slice:
        return slice(row * batch, (row + 1) * batch)

    def row_prefix(row: int, i: int) -> torch.Tensor:
        layer, _, config = rows[row]
        if config.source == "recursive" and i >= 2 * layer + 1:
            return prefix[i][slots(row)]
        return clean_prefix[i - 1]

    def write_windows(j: int, current: torch.Tensor, out: torch.Tensor, first_row: int = 0) -> None:
        """Fill ``out`` with what reader j of rows first_row.. reads: the window if patched, else ``current``."""
        for local in range(current.shape[0] // batch):
            row, here = first_row + local, slots(local)
            config = rows[row][2]
            if not config.patches(j, n_layers):
                out[here] = current[here]
                continue
            lo = j - config.horizon_sublayers
            torch.sub(row_prefix(row, j), row_prefix(row, lo), out=out[here])
            if config.keep_embed:  # j > K, so the window never holds s_0 on its own
                out[here] += clean.outputs[0]
            if config.ablation == "mean":
                assert means is not None
                out[here] += means.fill(lo, config.keep_embed, out.dtype)
                if means.has_bos:  # position 0: the clean P_lo there, whether s_0 is kept or not
                    bos = row_prefix(row, lo)[:, 0] - clean_prefix[lo - 1][:, 0]  # 0 unless recursive
                    torch.sub(row_prefix(row, j)[:, 0], bos, out=out[here][:, 0])

    def read_window(j: int) -> Callable:
        def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
            for i in [i for i in prefix if last_use[i] < j]:  # no reader from here on subtracts it
                del prefix[i]
            if not any(rows[row][2].patches(j, n_layers) for row in range(activation.shape[0] // batch)):
                return activation
            # A new tensor: the norm's input may alias the residual stream, which must flow on intact.
            replaced = torch.empty_like(activation)
            write_windows(j, activation, replaced)
            return replaced

        return hook

    def add_output(j: int) -> Callable:
        def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
            if j + 1 <= last_prefix:
                prefix[j + 1] = prefix[j] + activation  # float64 + the sublayer's output s_j
            return activation

        return hook

    readers = range(2 * first_layer + 1, final)
    fwd_hooks = [(reader_hook(j, n_layers), read_window(j)) for j in readers]
    fwd_hooks += [(output_hook(j), add_output(j)) for j in readers]
    joined = 0
    hidden = clean.resid_pre.new_empty((0, *clean.resid_pre.shape[2:]))

    def join(layer: int, start: torch.Tensor) -> None:
        # Rows whose first patched reader is in this layer have seen clean inputs so far.
        nonlocal joined, hidden
        newcomers = 0
        while joined + newcomers < n_rows and rows[joined + newcomers][0] == layer:
            newcomers += 1
        if newcomers:
            i = 2 * layer + 1
            hidden = torch.cat((hidden, start.repeat(newcomers, 1, 1)))
            joining = clean_prefix[i - 1].repeat(newcomers, 1, 1)
            prefix[i] = torch.cat((prefix[i], joining)) if i in prefix else joining
            joined += newcomers

    # Progress: each row is one config's worth, spread evenly over its blocks and its readout.
    share = [1 / (n_layers - layer + 1) for layer, _, _ in rows]
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=fwd_hooks):
        for layer in range(first_layer, n_layers):
            join(layer, clean.resid_pre[layer])
            args, kwargs = clean.block_call(layer, joined)
            output = model.bridge.blocks[layer](hidden, *args, **kwargs)
            hidden = output[0] if isinstance(output, tuple) else output
            advance(sum(share[:joined]))
    with torch.inference_mode():
        join(n_layers, clean_prefix[final - 1].to(hidden.dtype))  # rows patched only at the final readout
        # The final reader of several rows at once (one unembedding matmul), in chunks that bound the logits' memory.
        if rows_per_readout is None:  # whole logits per row
            rows_per_readout = READOUT_BYTES // max(1, batch * hidden.shape[1] * int(model.bridge.cfg.d_vocab) * 4)
        per_chunk = max(1, rows_per_readout)
        for first in range(0, n_rows, per_chunk):
            last = min(n_rows, first + per_chunk)
            current = hidden[first * batch : last * batch]
            reads = torch.empty_like(current)
            write_windows(final, current, reads, first_row=first)
            items = readout(model.bridge.ln_final(reads))
            advance(sum(share[first:last]))
            for (_, index, _), item in zip(rows[first:last], items, strict=True):
                yield index, item


LinearHead = tuple[torch.Tensor, torch.Tensor | None]  # weight [vocab, d_model], bias or None


def _linear_head(model: LoadedModel) -> LinearHead | None:
    """The unembedding's weight [vocab, d_model] and bias (None if zero), when it is a plain linear layer.

    Applied directly, the head writes logits where the caller wants them; the bridge's module
    allocates a fresh tensor per call and broadcasts even an all-zero bias into it first, which
    costs as much as a quarter of the matmul on a CPU.
    """
    head = getattr(model.bridge.unembed, "original_component", None)
    if not isinstance(head, torch.nn.Linear):
        return None
    bias = head.bias if head.bias is not None and bool(head.bias.any()) else None
    return head.weight, bias


def _unembed(model: LoadedModel, normed: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The unembedding of ``normed`` written into ``out``."""
    head = _linear_head(model)
    if head is None:
        return out.copy_(model.bridge.unembed(normed))
    return _apply_head(head, normed, out)


def _apply_head(
    head: LinearHead, normed: torch.Tensor, out: torch.Tensor, columns: slice = slice(None)
) -> torch.Tensor:
    """The logits of vocabulary ``columns`` (all by default) under a linear head, written into ``out``."""
    weight, bias = head
    torch.matmul(normed, weight[columns].t(), out=out)
    if bias is not None:
        out += bias[columns]
    return out


def _prefix_last_use(rows: list[tuple[int, int, HorizonConfig]], n_layers: int) -> dict[int, int]:
    """For each prefix index i a pass holds: the last reader that subtracts it (then it can be freed)."""
    last_use: dict[int, int] = {}
    for layer, _, config in rows:
        last = config.last_patched_reader(n_layers)
        for i in range(2 * layer + 1, last + 1):
            # P_i is the minuend at reader i (and feeds P_{i+1}); with the recursive source, the
            # subtrahend at reader i + K.
            reader = i + config.horizon_sublayers if config.source == "recursive" else 0
            last_use[i] = max(last_use.get(i, 0), i, reader if reader <= last else 0)
    # The chain P_i -> P_{i+1} must not break between rows joining at different layers.
    for i in range(min(last_use), max(last_use) + 1):
        last_use[i] = max(last_use.get(i, 0), i)
    return last_use


# ----------------------------------------------------------------------------- metrics


def _vocab_tiles(vocab: int) -> list[slice]:
    return [slice(start, min(vocab, start + VOCAB_TILE)) for start in range(0, vocab, VOCAB_TILE)]


@dataclass
class CleanReference:
    """The clean run's next-token statistics at positions 0..T-2: what each patched run is compared with.

    A scan compares up to 2L+1 configs with one clean run, so everything that depends on the clean
    logits alone (probabilities, log-normaliser, loss, top-1) is computed here once.
    """

    logits: torch.Tensor  # [batch, pos-1, vocab], float32
    probs: torch.Tensor  # softmax of logits
    logsumexp: torch.Tensor  # [batch, pos-1]
    loss: torch.Tensor  # next-token cross-entropy [batch, pos-1]
    top1: torch.Tensor  # argmax token [batch, pos-1]
    targets: torch.Tensor  # the next tokens [batch, pos-1]
    valid: torch.Tensor  # the prediction at t counts when token t+1 is real (not padding)
    _tiles: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, clean_logits: torch.Tensor, batch: TokenBatch) -> CleanReference:
        logits = clean_logits[:, :-1].float()
        logsumexp = torch.logsumexp(logits, dim=-1)
        targets = batch.input_ids[:, 1:]
        return cls(
            logits=logits,
            probs=torch.softmax(logits, dim=-1),
            logsumexp=logsumexp,
            loss=logsumexp - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1),
            top1=logits.max(dim=-1).indices,
            targets=targets,
            valid=batch.mask[:, 1:],
        )

    def tile(self, columns: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean logits and probabilities over a vocabulary tile, contiguous, made once."""
        if columns.start == 0 and columns.stop == self.logits.shape[-1]:
            return self.logits, self.probs
        key = (columns.start, columns.stop)
        if key not in self._tiles:
            self._tiles[key] = (self.logits[..., columns].contiguous(), self.probs[..., columns].contiguous())
        return self._tiles[key]

    def unpatched(self) -> TokenMetrics:
        """The metrics of a config that patches nothing: the clean run against itself."""
        return _masked(self, self.loss, torch.zeros_like(self.loss), torch.ones_like(self.valid))


@dataclass
class TokenMetrics:
    """Per-prediction metrics of one token batch: [batch, pos-1] tensors, masked by ``valid``."""

    loss_clean: torch.Tensor
    loss_patched: torch.Tensor
    kl: torch.Tensor
    top1_agree: torch.Tensor
    valid: torch.Tensor


def token_metrics(clean: CleanReference, patched: torch.Tensor) -> TokenMetrics:
    """Next-token CE (clean and patched), KL(clean || patched) and top-1 agreement at positions 0..T-2."""
    (metrics,) = _logits_metrics(clean, patched[:, :-1], 1)
    return metrics


def _logits_metrics(clean: CleanReference, logits: torch.Tensor, n_rows: int) -> list[TokenMetrics]:
    """Metrics of ``n_rows`` stacked configs from whole logits at the predicting positions (one tile)."""
    return _vocab_metrics(clean, [(slice(0, logits.shape[-1]), logits.float())], n_rows)


def _vocab_metrics(
    clean: CleanReference, tiles: Iterable[tuple[slice, torch.Tensor]], n_rows: int
) -> list[TokenMetrics]:
    """Metrics of ``n_rows`` stacked configs from their logits, given one vocabulary tile at a time.

    Each tile is [n_rows * batch, pos-1, width]; the reductions over the vocabulary are combined
    across tiles, so a whole row of logits never has to exist at once.
    """
    shape = (n_rows, *clean.valid.shape)
    logsumexps: list[torch.Tensor] = []
    shift_dot = clean.logsumexp.new_zeros(shape)
    top_logit = clean.logsumexp.new_full(shape, -torch.inf)
    target_logit = clean.logsumexp.new_zeros(shape)
    clean_top1_logit = clean.logsumexp.new_zeros(shape)
    for columns, tile in tiles:
        tile = tile.view(*shape, -1)
        clean_logits, clean_probs = clean.tile(columns)
        logsumexps.append(torch.logsumexp(tile, dim=-1))
        # KL(c || p) = sum_v p_c (log p_c - log p_p) = (lse_p - lse_c) - sum_v p_c (z_p - z_c), as
        # sum_v p_c = 1. The logits are differenced before the weighted sum, so no large terms
        # cancel: as exact as the log-softmax form in float32, with fewer sweeps of the vocabulary.
        shift_dot += torch.linalg.vecdot(tile - clean_logits, clean_probs)
        torch.maximum(top_logit, tile.amax(dim=-1), out=top_logit)
        _pick(tile, columns, clean.targets, target_logit)
        _pick(tile, columns, clean.top1, clean_top1_logit)
    logsumexp = torch.logsumexp(torch.stack(logsumexps), dim=0) if len(logsumexps) > 1 else logsumexps[0]
    loss = logsumexp - target_logit
    kl = (logsumexp - clean.logsumexp) - shift_dot
    # The clean top-1 token is still the patched top-1 when its logit is the largest (an amax is
    # several times faster than an argmax over the vocabulary).
    agree = clean_top1_logit >= top_logit
    return [_masked(clean, loss[row], kl[row], agree[row]) for row in range(n_rows)]


def _pick(tile: torch.Tensor, columns: slice, tokens: torch.Tensor, out: torch.Tensor) -> None:
    """Copy into ``out`` the logits of ``tokens`` ([batch, pos-1]) that fall in this tile."""
    inside = (tokens >= columns.start) & (tokens < columns.stop)
    local = (tokens - columns.start).clamp(0, tile.shape[-1] - 1).expand(*tile.shape[:-1])
    picked = tile.gather(-1, local.unsqueeze(-1)).squeeze(-1)
    torch.where(inside, picked, out, out=out)


def _masked(clean: CleanReference, loss: torch.Tensor, kl: torch.Tensor, agree: torch.Tensor) -> TokenMetrics:
    valid = clean.valid
    zero = torch.zeros((), dtype=kl.dtype, device=kl.device)
    return TokenMetrics(
        loss_clean=torch.where(valid, clean.loss, zero),
        loss_patched=torch.where(valid, loss, zero),
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

    def row(self, n: int) -> dict[str, float]:
        """The means over ``n`` predictions, as a scan row's metrics."""
        return {"loss": self.loss_patched / n, "delta_loss": (self.loss_patched - self.loss_clean) / n,
                "kl": self.kl / n, "top1_agreement": self.agree / n}


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
    model: LoadedModel, token_ids: list[list[int]], batch_size: int = 8, has_bos: bool = True
) -> list[CleanRun]:
    """The clean runs of the prompts, in token batches: what patch and scan compare against.

    ``has_bos`` says whether position 0 is a BOS (mean ablation leaves it out of the means).
    """
    if not token_ids:
        raise HorizonError("no prompt to run")
    for index, ids in enumerate(token_ids):
        if len(ids) < 2:
            raise HorizonError(f"prompt {index + 1} has {len(ids)} token(s); a prediction needs at least 2")
    # has_bos only affects stat_mask (the ablation means); the metrics use every prediction 0..T-2.
    return [clean_run(model, batch) for batch in batches(model, token_ids, has_bos=has_bos, batch_size=batch_size)]


def patch(
    model: LoadedModel,
    token_ids: list[list[int]],
    config: HorizonConfig,
    keep_logits: bool = False,
    batch_size: int = 8,
    cleans: Sequence[CleanRun] | None = None,
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
    cleans = list(cleans) if cleans is not None else clean_runs(model, token_ids, batch_size, has_bos)
    if config.ablation == "mean" and means is None:
        means = ablation_means(cleans)
    totals = _Totals()
    per_clean: list[list[float]] = []
    per_patched: list[list[float]] = []
    per_kl: list[list[float]] = []
    kept: list[torch.Tensor] = []
    for clean in cleans:
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
    progress: Callable[[float], None] | None = None,
    batch_size: int = 8,
    max_pass_bytes: int = DEFAULT_PASS_BYTES,
    cleans: Sequence[CleanRun] | None = None,
    ablation: str = "zero",
    means: AblationMeans | None = None,
    has_bos: bool = True,
) -> ScanResult:
    """Loss increase, KL and top-1 agreement for every k and start layer.

    ``progress(n)`` advances by n rows' worth of work (fractions as layers complete); ``cleans``
    are the prompts' clean runs when the caller keeps them for reuse; ``means`` the ablation means
    with ``ablation="mean"`` (default: the prompts' own, position 0 a BOS when ``has_bos``).
    """
    ks = _check_scan(model, ks, unit, tol)
    if not start_layers or min(start_layers) < 0:
        raise HorizonError("the start layers must be integers >= 0")
    pairs = [(k, layer) for layer in dict.fromkeys(start_layers) for k in ks]
    configs = [
        HorizonConfig(horizon_sublayers(k, unit), source=source, keep_embed=keep_embed, final=final, start_layer=layer,
                      ablation=ablation)
        for k, layer in pairs
    ]
    totals, loss_clean, n = _evaluate(model, token_ids, configs, progress, batch_size, max_pass_bytes, cleans, means,
                                      has_bos)
    rows = []
    for (k, layer), config, total in zip(pairs, configs, totals, strict=True):
        rows.append({"k": k, "K": config.horizon_sublayers, "start_layer": layer, **total.row(n)})
    horizons = {layer: effective_horizon(rows, layer, tol) for layer in dict.fromkeys(start_layers)}
    return ScanResult(rows=rows, effective_horizon=horizons, loss_clean=loss_clean, tol=tol, n_tokens=n, unit=unit)


def _check_scan(model: LoadedModel, ks: Sequence[int] | None, unit: str, tol: float) -> list[int]:
    """Validate a scan's shared arguments; the distinct ks to run, in order."""
    check_unit(unit)
    if not tol >= 0:
        raise HorizonError(f"--tol must be >= 0, got {tol}")
    ks = default_ks(model.n_layers, unit) if ks is None else list(ks)
    if not ks or min(ks) < 1:
        raise HorizonError("the horizons to scan must be integers >= 1")
    check_model(model)
    return list(dict.fromkeys(ks))


def _evaluate(
    model: LoadedModel,
    token_ids: list[list[int]],
    configs: Sequence[HorizonConfig],
    progress: Callable[[float], None] | None,
    batch_size: int,
    max_pass_bytes: int,
    cleans: Sequence[CleanRun] | None,
    means: AblationMeans | None,
    has_bos: bool,
) -> tuple[list[_Totals], float, int]:
    """Every config's metric totals over the prompts, the clean loss, and the number of predictions.

    All configs go into one staircase per token batch: the largest batched matmuls, one readout.
    """
    cleans = list(cleans) if cleans is not None else clean_runs(model, token_ids, batch_size, has_bos)
    if _needs_means(configs) and means is None:
        means = ablation_means(cleans)
    totals = [_Totals() for _ in configs]
    clean_totals = _Totals()
    scaled = None if progress is None else (lambda n: progress(n / len(cleans)))
    for clean in cleans:
        clean_totals.add(clean.reference.unpatched())
        for index, metrics in patched_metrics(model, clean, configs, max_pass_bytes, scaled, means):
            totals[index].add(metrics)
    n = clean_totals.n_tokens
    return totals, clean_totals.loss_clean / n, n


@dataclass
class ByLayerResult:
    """The per-layer horizon matrix: row N = the horizon enforced at layer N only (N = L: the final readout).

    Every matrix is [L+1][len(ks)]; ``effective_horizon[N]`` is the smallest k of row N whose loss
    increase is <= tol (None: none of the ks).
    """

    layers: list[int]
    ks: list[int]
    loss: list[list[float]]
    delta_loss: list[list[float]]
    kl: list[list[float]]
    top1_agreement: list[list[float]]
    effective_horizon: list[int | None]
    loss_clean: float
    tol: float
    n_tokens: int
    unit: str = "layer"
    ablation: str = "zero"

    def payload(self) -> dict[str, Any]:
        """The ``by_layer`` JSON object of ``horizon scan --by-layer``."""
        return {"layers": self.layers, "ks": self.ks, "delta_loss": self.delta_loss, "kl": self.kl,
                "loss": self.loss, "top1_agreement": self.top1_agreement,
                "effective_horizon": self.effective_horizon, "tol": self.tol}


def by_layer_configs(
    n_layers: int, ks: Sequence[int], unit: str = "layer", **options: Any
) -> list[tuple[int, int, HorizonConfig]]:
    """(layer N, k, config) for every cell of the matrix, row by row."""
    return [(layer, k, HorizonConfig(horizon_sublayers(k, unit), only_layer=layer, **options))
            for layer in range(n_layers + 1) for k in ks]


def scan_by_layer(
    model: LoadedModel,
    token_ids: list[list[int]],
    ks: Sequence[int] | None = None,
    tol: float = DEFAULT_TOL,
    source: str = "recursive",
    keep_embed: bool = False,
    final: str = "window",
    unit: str = "layer",
    ablation: str = "zero",
    progress: Callable[[float], None] | None = None,
    batch_size: int = 8,
    max_pass_bytes: int = DEFAULT_PASS_BYTES,
    cleans: Sequence[CleanRun] | None = None,
    means: AblationMeans | None = None,
    has_bos: bool = True,
) -> ByLayerResult:
    """For every layer N = 0..L and every k: the loss increase with the horizon enforced at layer N only.

    With K = 2k (layer unit), layer N's readers are attn_N (j = 2N+1) and mlp_N (j = 2N+2), and the
    window of reader j reaches back to lo = max(0, j - 2k); the final readout (N = L) is j = 2L+1.
    For k > N every such lo is 0 (2N+2 - 2k <= 0; 2L+1 - 2k < 0 when N = L), so the cell is the
    clean run: ``HorizonConfig.patches`` returns False for all its readers and no pass runs for it.
    Every other cell is one row of the staircase: it starts at layer N from the cached clean
    residual (layers below N are unchanged) and runs on to the readout, the layers above N reading
    the full stream of the patched pass. All rows of all layers share the batched passes and the
    vocabulary-tiled readout of ``patched_metrics``. ``progress(n)`` advances by n cells' worth.
    """
    ks = _check_scan(model, ks, unit, tol)
    n_layers = model.n_layers
    cells = by_layer_configs(n_layers, ks, unit, source=source, keep_embed=keep_embed, final=final,
                             ablation=ablation)
    totals, loss_clean, n = _evaluate(model, token_ids, [config for _, _, config in cells], progress, batch_size,
                                      max_pass_bytes, cleans, means, has_bos)
    layers = list(range(n_layers + 1))
    matrices: dict[str, list[list[float]]] = {name: [] for name in BY_LAYER_METRICS}
    for layer in layers:
        row = [totals[layer * len(ks) + column].row(n) for column in range(len(ks))]
        for name, matrix in matrices.items():
            matrix.append([cell[name] for cell in row])
    return ByLayerResult(layers=layers, ks=ks, effective_horizon=row_horizons(ks, matrices["delta_loss"], tol),
                         loss_clean=loss_clean, tol=tol, n_tokens=n, unit=unit, ablation=ablation, **matrices)


BY_LAYER_METRICS = ("loss", "delta_loss", "kl", "top1_agreement")


def row_horizons(ks: Sequence[int], delta_loss: Sequence[Sequence[float]], tol: float) -> list[int | None]:
    """Per row of the matrix, the smallest k whose loss increase is <= tol (None: none)."""
    horizons: list[int | None] = []
    for row in delta_loss:
        qualifying = [k for k, value in zip(ks, row, strict=True) if value <= tol]
        horizons.append(min(qualifying) if qualifying else None)
    return horizons


def join_by_layer(parts: Sequence[ByLayerResult]) -> ByLayerResult:
    """One matrix from parts over disjoint ks of the same prompts (columns side by side, ks in order)."""
    first = parts[0]
    columns = sorted((k, index, column) for index, part in enumerate(parts) for column, k in enumerate(part.ks))
    ks = [k for k, _, _ in columns]
    if len(set(ks)) != len(ks):
        raise HorizonError("the parts of a by-layer matrix overlap in k")
    rows = range(len(first.layers))
    matrices = {
        name: [[getattr(parts[index], name)[row][column] for _, index, column in columns] for row in rows]
        for name in BY_LAYER_METRICS
    }
    horizons = row_horizons(ks, matrices["delta_loss"], first.tol)
    return ByLayerResult(layers=first.layers, ks=ks, effective_horizon=horizons, loss_clean=first.loss_clean,
                         tol=first.tol, n_tokens=first.n_tokens, unit=first.unit, ablation=first.ablation, **matrices)


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
