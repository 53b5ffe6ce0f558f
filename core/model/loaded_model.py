"""``LoadedModel``: a booted TransformerBridge with everything the analyses need to know about it, and
``bridged_model``, which boots an HF model into one (the adapter's architecture, the norms' epsilons).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from horizon.core.errors import HorizonError
from horizon.core.model.gguf_files import (
    _quiet,
)
from horizon.core.model.model_files import short_text

if TYPE_CHECKING:  # torch is imported where it is used: the CLI and the app start without it
    import torch
from horizon.core.model.loader_hf import _reason


@dataclass
class LoadedModel:
    """A booted bridge with everything the analyses need to know about it."""

    spec: str
    source: str
    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any
    architecture: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    n_ctx: int
    default_bos: str | None
    device: torch.device
    dtype: torch.dtype
    parallel_attn_mlp: bool
    model_hash: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hf_model(self) -> Any:
        return self.bridge.original_model

    def bos_token_id(self, bos_token: str | None = None) -> int:
        """Id of the BOS token to prepend: an explicit token, else the model's default."""
        token = bos_token if bos_token is not None else self.default_bos
        if token is None:
            raise HorizonError(f"model {self.spec} has no BOS or EOS token; pass --bos-token or --no-bos")
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if token_id is None or (token_id == unk and token != getattr(self.tokenizer, "unk_token", None)):
            raise HorizonError(f"--bos-token {token!r} is not a single token of this model's vocabulary")
        return int(token_id)


def adapter_architecture(hf_model: Any) -> str:
    """The TransformerLens adapter name for the class transformers actually built.

    The bridge picks its adapter by ``config.architectures``, a list a config file may get wrong
    (another architecture than the weights, which transformers built by ``model_type``), and that
    TransformerLens spells its own way (``PhiMoEForCausalLM`` for transformers'
    ``PhimoeForCausalLM``): the built class, matched without regard to case, is the truth.
    """
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    built = type(hf_model).__name__
    by_case = {name.lower(): name for name in SUPPORTED_ARCHITECTURES}
    if built.lower() not in by_case:
        import transformer_lens

        model_type = getattr(hf_model.config, "model_type", "?")
        raise HorizonError(
            f"{short_text(built, 50)} (model_type {short_text(model_type, 30)}) has no adapter in TransformerLens "
            f"{getattr(transformer_lens, '__version__', '?')}: its residual stream cannot be hooked here"
        )
    return by_case[built.lower()]


def _align_norm_epsilons(bridge: Any) -> None:
    """Give each bridged norm the epsilon of the HF module it replaces.

    The bridge recomputes every norm itself with one epsilon read from the config under four
    names (rms_norm_eps, layer_norm_eps, layer_norm_epsilon, norm_eps); a family that names it
    otherwise (StarCoder2's norm_epsilon) got the default 1e-5, and its numbers were off by 7%
    on a tiny model with eps 1e-4. The module's own value is the one HF uses.
    """
    import copy

    from transformer_lens.model_bridge.generalized_components import NormalizationBridge

    for module in bridge.modules():
        if not isinstance(module, NormalizationBridge) or module.original_component is None:
            continue
        original = module.original_component
        eps = getattr(original, "variance_epsilon", None)
        eps = getattr(original, "eps", None) if eps is None else eps
        if isinstance(eps, float) and module.config is not None and eps != getattr(module.config, "eps", None):
            module.config = copy.copy(module.config)  # the config is shared: this norm gets its own
            module.config.eps = eps


def bridged_model(
    spec: str,
    boot_name: str,
    hf_model: Any,
    tokenizer: Any,
    dtype: torch.dtype,
    *,
    source: str,
    model_hash: str,
    default_bos: str | None,
    device: torch.device,
    placed: bool = False,
    extra: dict[str, Any] | None = None,
) -> LoadedModel:
    """Boot ``hf_model`` into a TransformerBridge and describe it (not verified: see load_model)."""
    from transformer_lens.model_bridge import TransformerBridge

    hf_model.config.architectures = [adapter_architecture(hf_model)]
    try:
        with _quiet():
            bridge = TransformerBridge.boot_transformers(boot_name, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype)
    except Exception as exc:
        raise HorizonError(f"TransformerLens cannot bridge {short_text(spec)}: {_reason(exc)}") from None
    _align_norm_epsilons(bridge)
    bridge.eval()
    cfg = bridge.cfg
    if placed:  # inputs go where the embedding lives
        device = hf_model.get_input_embeddings().weight.device
    return LoadedModel(
        spec=spec,
        source=source,
        bridge=bridge,
        tokenizer=tokenizer,
        architecture=str(getattr(hf_model.config, "model_type", "unknown")),
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        n_heads=int(cfg.n_heads),
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
        n_ctx=int(cfg.n_ctx),
        default_bos=default_bos,
        device=device,
        dtype=dtype,
        parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
        model_hash=model_hash,
        extra=dict(extra or {}),
    )
