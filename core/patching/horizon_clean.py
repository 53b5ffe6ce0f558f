"""The clean run every patched pass of a token batch reuses: sublayer outputs, ``resid_pre`` per layer,
logits and each block's recorded call (``CleanRun``); the same made position chunk by position chunk
with a KV cache (``ChunkedClean``); a prompt set's runs, kept or made when read (``clean_runs``,
``CleanRuns``); and the corpus-wide mean-ablation means from clean captures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from horizon.core.capture.capture import new_cache, position_chunks, run_capture
from horizon.core.capture.decomposition import stack_outputs
from horizon.core.errors import HorizonError
from horizon.core.memory import budget
from horizon.core.model.loader import LoadedModel
from horizon.core.model.prompts import TokenBatch, batches
from horizon.core.patching.ablation import AblationMeans, MeanAccumulator
from horizon.core.patching.horizon_config import check_model
from horizon.core.patching.horizon_metrics import CleanReference

# The clean runs of a whole prompt set are kept (for reuse by every pass) up to this size; above
# it they are made batch by batch as they are used (``clean_runs``).
KEEP_CLEAN_BYTES = 1 << 30
# A block's recorded call: its positional arguments after hidden_states, and its keyword arguments.
BlockCall = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass
class CleanRun:
    """What every patched pass of one token batch reuses from the unpatched run."""

    batch: TokenBatch
    outputs: torch.Tensor  # s_0..s_{2L}: [2L+1, batch, pos, d_model]
    resid_pre: torch.Tensor  # [L, batch, pos, d_model]
    logits: torch.Tensor  # [batch, pos, vocab]
    block_args: list[BlockCall]  # per layer: the block's call arguments after hidden_states
    targets: torch.Tensor  # the token each scored position predicts [batch, n_predicting]
    valid: torch.Tensor  # whether that token is real (not padding)
    offset: int = 0  # the first position's index in the prompt (a position chunk's start; else 0)
    # per layer, where the clean call passed its KV cache (an index into the block's arguments, a
    # keyword, or None): a chunk's patched pass puts its rows' cache there
    cache_slots: list[int | str | None] = field(default_factory=list)
    _tiled: dict[tuple[int, int], BlockCall] = field(default_factory=dict, repr=False)
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

    def block_call(self, layer: int, copies: int, cache: Any = None) -> BlockCall:
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
    block_args: list[BlockCall | None] = [None] * model.n_layers
    cache_slots: list[int | str | None] = [None] * model.n_layers

    def recorder(layer: int) -> Callable[[torch.nn.Module, tuple[Any, ...], dict[str, Any]], None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
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

    For long prompts under a tight memory budget (core/memory/budget.py chooses ``position_chunk``): a
    causal model's position t depends on earlier positions only through attention's keys and
    values, and a horizon window is a sum over sublayers at one position, so the clean run and
    every patched pass can go through the prompt a chunk at a time, each keeping a KV cache of
    the chunks before (the clean pass its own, each staircase pass its rows'). Memory then grows
    with the chunk (activations, attention scores [chunk, T], logits, the outputs' prefix sums)
    instead of the prompt, plus the caches' keys and values. Each use runs the chunks again.
    """

    def __init__(self, model: LoadedModel, batch: TokenBatch, position_chunk: int) -> None:
        from horizon.core.checks.chunking import require_exact_chunks

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


def clean_runs(
    model: LoadedModel, token_ids: list[list[int]], batch_size: int = 8, has_bos: bool = True,
    keep_bytes: int = KEEP_CLEAN_BYTES, position_chunk: int | None = None,
) -> Sequence[CleanRun | ChunkedClean]:
    """The clean runs of the prompts, in token batches: what patch and scan compare against.

    ``has_bos`` says whether position 0 is a BOS (mean ablation leaves it out of the means).
    When all of them would hold more than ``keep_bytes`` (core/memory/budget.py's clean-run cost), they
    are not kept: the sequence makes each batch's run when it is read, so one batch's is alive at
    a time (and a second reading runs it again). With ``position_chunk`` (core/memory/budget.py's choice
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
