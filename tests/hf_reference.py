"""An independent computation of horizon's numbers with plain transformers: forward hooks on the HF
model (never the TransformerLens bridge), the model's own forward for the logits.

Written from docs/SCIENCE.md alone, the literal way: each reader's norm input is replaced by the
literal sum of the outputs in its window (no prefix sums, no staircase, no replay of blocks), every
horizon is a fresh whole forward pass, and the metrics come from ``log_softmax`` of the logits the
HF model itself returns (so whatever the model does after its head is included). The tests compare
the engine with it on tiny models with realistic settings (tests/test_readout.py,
tests/test_chunk_check.py).

Decoder layouts (``LAYOUTS``): where each layer's two readers (the norms before attention and MLP)
are, and what each sublayer adds to the residual stream: Llama-like blocks add the attention and MLP
outputs, Granite multiplies them by ``residual_multiplier`` first, Gemma 2/3 add the outputs of the
post-attention / post-feedforward norms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Layout:
    mlp_reader: str  # the layer's norm before the MLP
    attn_writer: str  # the module whose output (times ``scale``) the attention sublayer adds
    mlp_writer: str
    scaled: bool = False  # Granite: outputs times config.residual_multiplier


LLAMA = Layout("post_attention_layernorm", "self_attn", "mlp")
LAYOUTS = {
    "llama": LLAMA,
    "granite": Layout("post_attention_layernorm", "self_attn", "mlp", scaled=True),
    "gemma2": Layout("pre_feedforward_layernorm", "post_attention_layernorm", "post_feedforward_layernorm"),
    "gemma3_text": Layout("pre_feedforward_layernorm", "post_attention_layernorm", "post_feedforward_layernorm"),
}


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class HFHorizon:
    """Sites and patched passes of one HF causal LM (``LAYOUTS`` names its decoder's layout)."""

    def __init__(self, hf_model: Any) -> None:
        self.hf = hf_model
        self.layout = LAYOUTS[hf_model.config.model_type]
        self.layers = list(hf_model.model.layers)
        self.n_layers = len(self.layers)
        self.scale = float(getattr(hf_model.config, "residual_multiplier", 1.0)) if self.layout.scaled else 1.0

    def _readers(self) -> list[torch.nn.Module]:
        """Reader j (1..2L+1) is readers[j-1]: attention's norm, the MLP's norm, ..., the final norm."""
        readers = []
        for layer in self.layers:
            readers += [layer.input_layernorm, getattr(layer, self.layout.mlp_reader)]
        return [*readers, self.hf.model.norm]

    def _writers(self) -> list[torch.nn.Module]:
        """Sublayer j (1..2L) is written by writers[j-1]."""
        writers = []
        for layer in self.layers:
            writers += [getattr(layer, self.layout.attn_writer), getattr(layer, self.layout.mlp_writer)]
        return writers

    def run(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The clean forward pass: (logits, outputs s_0..s_{2L} [2L+1, batch, pos, d], resid_pre_0..L-1
        then the final norm's input [L+1, batch, pos, d])."""
        outputs: list[torch.Tensor] = []
        resid: list[torch.Tensor] = []
        handles = []

        def embed(module: Any, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            resid.append(hidden.detach().clone())
            if not outputs:
                outputs.append(hidden.detach().clone())  # s_0: what enters layer 0

        def writer(module: Any, args: tuple, output: Any) -> None:
            outputs.append(_first(output).detach().clone() * self.scale)

        def final(module: Any, args: tuple, kwargs: dict) -> None:
            resid.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

        for layer in self.layers:
            handles.append(layer.register_forward_pre_hook(embed, with_kwargs=True))
        for writer_module in self._writers():
            handles.append(writer_module.register_forward_hook(writer))
        handles.append(self.hf.model.norm.register_forward_pre_hook(final, with_kwargs=True))
        try:
            with torch.inference_mode():
                logits = self.hf(ids).logits
        finally:
            for handle in handles:
                handle.remove()
        return logits, torch.stack(outputs), torch.stack(resid)

    def patched(self, ids: torch.Tensor, horizon: int, source: str = "recursive", ablation: str = "zero",
                means: torch.Tensor | None = None, has_bos: bool = True) -> torch.Tensor:
        """Logits with horizon ``horizon`` (sublayers) at every reader, source recursive or clean."""
        _, clean, _ = self.run(ids)
        live: list[torch.Tensor] = []
        handles = []

        def embed(module: Any, args: tuple, kwargs: dict) -> None:
            if not live:
                live.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

        def writer(module: Any, args: tuple, output: Any) -> None:
            live.append(_first(output).detach().clone() * self.scale)

        def reader(j: int) -> Callable:
            def hook(module: Any, args: tuple, kwargs: dict) -> Any:
                lo = max(0, j - horizon)
                if lo == 0:
                    return None
                outputs = clean if source == "clean" else live
                window = sum(outputs[i] for i in range(lo, j))
                if ablation == "mean":
                    assert means is not None
                    filled = sum(means[i] for i in range(lo)).to(window.dtype).expand_as(window).clone()
                    if has_bos:  # position 0 keeps its own clean outputs
                        filled[:, 0] = sum(clean[i][:, 0] for i in range(lo))
                    window = window + filled
                return ((window, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": window})

            return hook

        handles.append(self.layers[0].register_forward_pre_hook(embed, with_kwargs=True))
        for writer_module in self._writers():
            handles.append(writer_module.register_forward_hook(writer))
        for j, module in enumerate(self._readers(), start=1):
            handles.append(module.register_forward_pre_hook(reader(j), with_kwargs=True))
        try:
            with torch.inference_mode():
                return self.hf(ids).logits
        finally:
            for handle in handles:
                handle.remove()

    def means(self, ids: torch.Tensor, has_bos: bool = True) -> torch.Tensor:
        """Each clean output's mean over the positions after the BOS (all positions without one)."""
        _, clean, _ = self.run(ids)
        kept = clean[:, :, 1:] if has_bos else clean
        return kept.double().mean(dim=(1, 2))


def metrics(clean_logits: torch.Tensor, patched_logits: torch.Tensor, ids: torch.Tensor) -> dict[str, float]:
    """docs/SCIENCE.md 3.3, literally: mean CE clean and patched, Δloss, KL(clean || patched), top-1 agreement."""
    clean = torch.log_softmax(clean_logits[:, :-1].double(), dim=-1)
    patched = torch.log_softmax(patched_logits[:, :-1].double(), dim=-1)
    targets = ids[:, 1:].unsqueeze(-1)
    loss_clean = -clean.gather(-1, targets).mean()
    loss = -patched.gather(-1, targets).mean()
    kl = (clean.exp() * (clean - patched)).sum(-1).mean()
    agree = (patched.gather(-1, clean.argmax(-1, keepdim=True)) >= patched.max(-1, keepdim=True).values).double().mean()
    return {"loss_clean": float(loss_clean), "loss": float(loss), "delta_loss": float(loss - loss_clean),
            "kl": float(kl), "top1_agreement": float(agree)}


def bridged(hf_model: Any, spec: str | None = None) -> Any:
    """A copy of ``hf_model`` booted into the bridge the way load_model boots a tiny model (the HF model
    itself stays independent of the bridge); a LoadedModel on the CPU in the model's dtype."""
    import copy

    from horizon.core.model.loader import LoadedModel, _quiet, bundled_tokenizer
    from transformer_lens.model_bridge import TransformerBridge

    tokenizer = bundled_tokenizer()
    family = hf_model.config.model_type
    hf_model.config.architectures = [type(hf_model).__name__]  # the bridge picks its adapter by this
    with _quiet():
        bridge = TransformerBridge.boot_transformers(family, hf_model=copy.deepcopy(hf_model), tokenizer=tokenizer)
    bridge.eval()
    cfg = bridge.cfg
    return LoadedModel(
        spec=spec or f"tiny-{family}",
        source="random weights",
        bridge=bridge,
        tokenizer=tokenizer,
        architecture=family,
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        n_heads=int(cfg.n_heads),
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
        n_ctx=int(cfg.n_ctx),
        default_bos="<|endoftext|>",
        device=torch.device("cpu"),
        dtype=next(hf_model.parameters()).dtype,
        parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
        model_hash=spec or f"tiny-{family}",
    )
