"""The patched pass: configs grouped into staircase passes (core/patching/staircase.py) that start at their first
patched layer from the clean run, read out as logits or as metrics reduced per vocabulary tile
(``patched_logits``, ``patched_metrics``), or summed per prompt over position chunks (``metric_sums``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from horizon.core.capture.capture import new_cache
from horizon.core.capture.decomposition import reader_layer
from horizon.core.memory import budget
from horizon.core.memory.budget import VOCAB_TILE  # vocabulary columns per readout tile, defined once there
from horizon.core.model.loader import LoadedModel
from horizon.core.patching.ablation import AblationMeans, ablation_means, needs_means
from horizon.core.patching.horizon_clean import ChunkedClean, CleanRun
from horizon.core.patching.horizon_config import HorizonConfig
from horizon.core.patching.horizon_metrics import (
    LinearHead,
    TokenMetrics,
    apply_head,
    linear_head,
    logits_metrics,
    logits_readout,
    post_head,
    row_sums,
    vocab_metrics,
    vocab_tiles,
)
from horizon.core.patching.staircase import Row, StaircasePass

# Memory one batched pass may hold (window buffers, activations, attention scores, logits).
DEFAULT_PASS_BYTES = 2 << 30
# The memory one tile of stacked rows may take (tiles of core/memory/budget.py's VOCAB_TILE vocabulary
# columns): small enough to stay in cache while it is reduced, and for the allocator to reuse
# instead of mapping anew.
TILE_BYTES = 10 << 20

def _row_bytes(model: LoadedModel, clean: CleanRun) -> int:
    """Memory of one row (one config over the whole token batch) inside a batched pass (the budget's model)."""
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
    a time (``vocab_tile`` columns; default: core/memory/budget.py's ``readout_tile``, VOCAB_TILE unless the
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
