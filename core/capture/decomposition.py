"""The sublayer decomposition of the residual stream (docs/SCIENCE.md section 1), in one place.

Sublayer outputs in order: s_0 = embedding (incl. positional), s_{2i+1} = attn_i, s_{2i+2} = mlp_i.
Reader j (sublayer j = 1..2L, and the final readout j = 2L+1) reads r_j = s_0 + ... + s_{j-1}:
resid_pre_i = r_{2i+1}, resid_mid_i = r_{2i+2}, resid_post_i = r_{2i+3}, final = r_{2L+1}.

Hook sites are the bridge's TransformerLens names. A reader's input is hooked at its *norm's*
input (``ln1.hook_in`` / ``ln2.hook_in`` / ``ln_final.hook_in``): patching there changes only
what that sublayer reads, while the residual stream flowing on still carries every output.
"""

from __future__ import annotations

import torch

# Residual-stream and output sites the capture engine can record.
SITES = ("embed", "attn_out", "mlp_out", "resid_pre", "resid_mid", "resid_post", "final")
PER_LAYER_SITES = ("attn_out", "mlp_out", "resid_pre", "resid_mid", "resid_post")


def site_hook(site: str, layer: int | None = None) -> str:
    """The bridge hook name of a site (``layer`` for per-layer sites)."""
    if site == "embed":
        # resid_pre of block 0 is exactly s_0: token plus positional embedding, for every
        # architecture, which the separate embed hooks are not (rotary models have no pos-embed).
        return "blocks.0.hook_resid_pre"
    if site == "final":
        return "ln_final.hook_in"
    if site not in PER_LAYER_SITES or layer is None:
        raise ValueError(f"unknown site {site!r} (layer {layer})")
    return f"blocks.{layer}.hook_{site}"


def n_readers(n_layers: int) -> int:
    """Readers are j = 1..2L+1: every sublayer, then the final readout."""
    return 2 * n_layers + 1


def reader_hook(j: int, n_layers: int) -> str:
    """Hook on the norm input of reader j: where a horizon patch replaces what it reads."""
    if j == 2 * n_layers + 1:
        return "ln_final.hook_in"
    if not 1 <= j <= 2 * n_layers:
        raise ValueError(f"reader {j} out of range 1..{2 * n_layers + 1}")
    layer, is_mlp = divmod(j - 1, 2)
    return f"blocks.{layer}.{'ln2' if is_mlp else 'ln1'}.hook_in"


def output_hook(j: int) -> str:
    """Hook on sublayer output s_j for j >= 1 (s_0 is site_hook('embed'))."""
    if j < 1:
        raise ValueError("s_0 is the embedding: use site_hook('embed')")
    layer, is_mlp = divmod(j - 1, 2)
    return f"blocks.{layer}.hook_{'mlp_out' if is_mlp else 'attn_out'}"


def reader_layer(j: int) -> int:
    """The layer a reader belongs to; the final readout (j = 2L+1) counts as layer L."""
    return (j - 1) // 2


def stack_outputs(embed: torch.Tensor, attn_out: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
    """s_0..s_{2L} as one tensor [2L+1, ...] from embed [...] and per-layer [L, ...] outputs."""
    n_layers = attn_out.shape[0]
    interleaved = torch.stack((attn_out, mlp_out), dim=1).reshape(2 * n_layers, *attn_out.shape[1:])
    return torch.cat((embed.unsqueeze(0), interleaved), dim=0)


def residual_reads(outputs: torch.Tensor) -> torch.Tensor:
    """r_1..r_{2L+1} (index j-1) as cumulative sums of the stacked outputs."""
    return outputs.cumsum(dim=0)


def window_read(outputs: torch.Tensor, j: int, horizon_sublayers: int, keep_embed: bool = False) -> torch.Tensor:
    """h_j = s_{max(0, j-K)} + ... + s_{j-1}: what reader j sees under horizon K (docs/SCIENCE.md s.3)."""
    start = max(0, j - horizon_sublayers)
    window = outputs[start:j].sum(dim=0)
    if keep_embed and start > 0:
        window = window + outputs[0]
    return window
