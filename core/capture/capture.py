"""One hooked forward pass that records the residual-stream sites an analysis asks for.

Only the requested sites are hooked (the bridge has ~1700 hook points; caching them all would
cost memory and time). A ``reduce`` function can shrink each activation inside the hook, e.g.
to per-position norms, so long runs never hold every [batch, pos, d_model] tensor at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from horizon.core.capture.decomposition import PER_LAYER_SITES, SITES, site_hook, stack_outputs
from horizon.core.model.loader import LoadedModel

Reducer = Callable[[str, torch.Tensor], torch.Tensor]


@dataclass
class Capture:
    """Recorded sites: per-layer sites as [L, batch, pos, ...], embed/final as [batch, pos, ...]."""

    acts: dict[str, torch.Tensor]
    logits: torch.Tensor | None = None

    def __getitem__(self, site: str) -> torch.Tensor:
        return self.acts[site]

    def outputs(self) -> torch.Tensor:
        """The stacked sublayer outputs s_0..s_{2L} ([2L+1, batch, pos, d_model])."""
        return stack_outputs(self.acts["embed"], self.acts["attn_out"], self.acts["mlp_out"])

    def resid_pre_and_final(self) -> torch.Tensor:
        """resid_pre_0..resid_pre_{L-1} then the final residual: the L+1 'layers' of the seeds."""
        return torch.cat((self.acts["resid_pre"], self.acts["final"].unsqueeze(0)), dim=0)


def stop_forward(activation: torch.Tensor, hook: object) -> torch.Tensor:
    """A hook that ends the forward pass: the bridge catches its StopAtLayerException and returns."""
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    raise StopAtLayerException(activation)


def position_chunks(n_positions: int, position_chunk: int) -> list[slice]:
    """0..n_positions-1 in even chunks of at most ``position_chunk`` (so no chunk is left nearly empty)."""
    n_chunks = -(-n_positions // max(1, position_chunk))
    size = -(-n_positions // n_chunks)
    return [slice(start, min(n_positions, start + size)) for start in range(0, n_positions, size)]


def new_cache(model: LoadedModel) -> Any:
    """An empty KV cache of the model's kind (sliding-window layers included) for chunked passes."""
    from transformers import DynamicCache

    return DynamicCache(config=model.hf_model.config)


def chunked_capture(
    model: LoadedModel,
    input_ids: torch.Tensor,
    sites: Iterable[str],
    position_chunk: int,
    reduce: Reducer | None = None,
    keep_logits: bool = False,
    stop_after_final: bool = False,
    position_axis: int = 1,
) -> Capture:
    """``run_capture`` a chunk of positions at a time, with a KV cache of the chunks before; the
    recorded activations are joined along ``position_axis`` (the reducer must keep positions apart).

    A causal model's position t sees earlier positions only through attention's keys and values, so
    the activations are the whole pass's (to the rounding of the smaller matmuls). On a CPU this is
    also faster for long inputs: eager attention's [heads, T, T] scores (151 MB per layer at 2048
    tokens of the bundled model) leave the caches, a chunk's [heads, 256, T] do far less (measured:
    a 2048-token forward 10.2 s whole, 5.3 s in chunks of 256; 1024 tokens 2.9 s vs 2.3 s).
    """
    from horizon.core.checks.chunking import require_exact_chunks

    require_exact_chunks(model)  # never other numbers than the whole pass (checked at the first use)
    # The bridge's manual KV-cache entry point: HF's own cache object, extended by each chunk.
    cache = new_cache(model)
    forward = {"past_key_values": cache, "use_cache": True}
    parts = [run_capture(model, input_ids[:, positions], sites, reduce, keep_logits, None, stop_after_final, forward)
             for positions in position_chunks(input_ids.shape[1], position_chunk)]
    acts = {key: torch.cat([part.acts[key] for part in parts], dim=position_axis + (key in PER_LAYER_SITES))
            for key in parts[0].acts}
    logits = torch.cat([part.logits for part in parts], dim=1) if keep_logits else None  # type: ignore[misc]
    return Capture(acts=acts, logits=logits)


def run_capture(
    model: LoadedModel,
    input_ids: torch.Tensor,
    sites: Iterable[str],
    reduce: Reducer | None = None,
    keep_logits: bool = False,
    extra_hooks: dict[str, str] | None = None,
    stop_after_final: bool = False,
    forward_kwargs: dict[str, Any] | None = None,
    position_chunk: int | None = None,
    position_axis: int = 1,
) -> Capture:
    """Run the bridge once on ``input_ids`` [batch, pos] and record ``sites``.

    ``extra_hooks`` maps a key to any other bridge hook name (e.g. attention patterns) whose
    per-layer ``{layer}`` placeholder is expanded over all layers and stacked like a site.
    ``stop_after_final`` ends the pass at the final norm's input (no final norm, no unembedding)
    when the logits are not needed; hooks after that point then never fire. ``forward_kwargs`` go
    to the bridge's forward (a KV cache: ``past_key_values``, ``use_cache``).

    ``position_chunk``: a longer input runs that many positions at a time, each chunk attending to
    the ones before through a KV cache (``chunked_capture``); ``position_axis`` is where the
    positions are in a recorded (reduced) activation.
    """
    if position_chunk and input_ids.shape[1] > position_chunk and not extra_hooks:
        return chunked_capture(model, input_ids, sites, position_chunk, reduce, keep_logits, stop_after_final,
                               position_axis)
    wanted = list(dict.fromkeys(sites))
    for site in wanted:
        if site not in SITES:
            raise ValueError(f"unknown site {site!r}; choose from {SITES}")
    n_layers = model.n_layers
    store: dict[str, list[torch.Tensor | None]] = {}
    stacked: set[str] = set()  # keys recorded once per layer, stacked to [L, ...]
    hooks = []

    def recorder(key: str, index: int) -> Callable[[torch.Tensor, object], torch.Tensor]:
        def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
            value = activation.detach()
            store[key][index] = reduce(key, value) if reduce is not None else value
            return activation

        return hook

    for site in wanted:
        if site in PER_LAYER_SITES:
            store[site] = [None] * n_layers
            stacked.add(site)
            hooks += [(site_hook(site, layer), recorder(site, layer)) for layer in range(n_layers)]
        else:
            store[site] = [None]
            hooks.append((site_hook(site), recorder(site, 0)))
    for key, pattern in (extra_hooks or {}).items():
        names = [pattern.format(layer=layer) for layer in range(n_layers)] if "{layer}" in pattern else [pattern]
        store[key] = [None] * len(names)
        if "{layer}" in pattern:
            stacked.add(key)
        hooks += [(name, recorder(key, index)) for index, name in enumerate(names)]

    with torch.inference_mode():
        if stop_after_final and not keep_logits:
            # Every site has fired once the final norm's input is reached: stop there, skipping
            # the final norm and the unembedding (a vocab-sized matmul, ~10% of a small model).
            hooks.append((site_hook("final"), stop_forward))
            model.bridge.run_with_hooks(input_ids, fwd_hooks=hooks, return_type=None, **(forward_kwargs or {}))
            logits = None
        else:
            logits = model.bridge.run_with_hooks(input_ids, fwd_hooks=hooks, return_type="logits",
                                                 **(forward_kwargs or {}))

    acts: dict[str, torch.Tensor] = {}
    for key, values in store.items():
        missing = [index for index, value in enumerate(values) if value is None]
        if missing:
            raise RuntimeError(f"hook for {key} did not fire at index {missing[0]} on {model.architecture}")
        tensors: list[torch.Tensor] = values  # type: ignore[assignment]
        acts[key] = torch.stack(tensors) if key in stacked else tensors[0]
    return Capture(acts=acts, logits=logits if keep_logits else None)
