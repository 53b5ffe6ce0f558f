"""The horizon's readout and metrics: the model's own head applied directly, and the per-prediction
loss, KL(clean || patched) and top-1 agreement against the clean run (docs/SCIENCE.md section 3).

A scan's readout reduces each vocabulary tile of the logits to these metrics while the tile is
in cache (``vocab_metrics``), so no config's full logits are ever held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from horizon.core.model.loader import LoadedModel

# What a family's causal-LM forward does to its head's output before it is a logit, in order:
# (where the forward reads the value: the HF model's config or the HF model itself, the attribute,
# the elementwise operation). transformers writes these inline in each family's forward, with no
# function to call, so this table is the one place the engine reproduces them. A family whose head
# does something else is caught by core/checks/verify.py's readout check (at every load: the engine's
# logits from the final residual against the model's own) and refused.
POST_HEAD: tuple[tuple[str, str, str], ...] = (
    ("config", "logits_scaling", "divide"),  # Granite (and its MoE / hybrid kinds): logits / logits_scaling
    # Cohere, Cohere 2: logits * self.logit_scale, read from the module: TransformerLens may fold the
    # scale into lm_head's weight and set the module's to 1, and the forward then multiplies by that
    ("model", "logit_scale", "multiply"),
    ("config", "final_logit_softcapping", "softcap"),  # Gemma 2, 3, 3n: cap * tanh(logits / cap)
)


@dataclass(frozen=True)
class PostHead:
    """The elementwise steps after the head (``POST_HEAD``): (operation, value, attribute) in order."""

    steps: tuple[tuple[str, float, str], ...] = ()

    def apply_(self, logits: torch.Tensor) -> torch.Tensor:
        """The steps on ``logits`` in place, with the operations and order of the model's forward."""
        for operation, value, _ in self.steps:
            if operation == "divide":
                logits.div_(value)
            elif operation == "multiply":
                logits.mul_(value)
            else:  # softcap, as transformers writes it: divide, tanh, multiply
                logits.div_(value).tanh_().mul_(value)
        return logits

    def describe(self) -> str:
        """'none', or e.g. 'logits / 8 (logits_scaling)', for checks and messages."""
        symbols = {"divide": "logits / {:g}", "multiply": "logits * {:g}", "softcap": "softcap {:g}"}
        return ", ".join(f"{symbols[op].format(value)} ({name})" for op, value, name in self.steps) or "none"


def post_head(model: LoadedModel) -> PostHead:
    """What ``model``'s forward does after its head (``POST_HEAD``; nothing for most families)."""
    hf_model = model.hf_model
    sources = {"config": getattr(hf_model, "config", None), "model": hf_model}
    steps = []
    for where, name, operation in POST_HEAD:
        value = getattr(sources[where], name, None)
        if isinstance(value, torch.Tensor):
            value = float(value)
        # 1 is no step (a Granite default, or a scale folded into the weights); softcaps of 0 are off
        if isinstance(value, int | float) and not isinstance(value, bool) and value and value != 1:
            steps.append((operation, float(value), name))
    return PostHead(tuple(steps))


@dataclass(frozen=True)
class LinearHead:
    """The unembedding as a plain linear layer (weight [vocab, d_model], bias or None) and what follows it."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    post: PostHead


def linear_head(model: LoadedModel) -> LinearHead | None:
    """The unembedding's weight, bias (None if zero) and post-head steps, when it is a plain linear layer.

    Applied directly, the head writes logits where the caller wants them; the bridge's module
    allocates a fresh tensor per call and broadcasts even an all-zero bias into it first, which
    costs as much as a quarter of the matmul on a CPU.
    """
    head = getattr(model.bridge.unembed, "original_component", None)
    if not isinstance(head, torch.nn.Linear):
        return None
    bias = head.bias if head.bias is not None and bool(head.bias.any()) else None
    return LinearHead(head.weight, bias, post_head(model))


def unembed(model: LoadedModel, normed: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The model's logits from the final norm's output ``normed``, written into ``out``: its head, then
    what its forward does after the head (``post_head``)."""
    head = linear_head(model)
    if head is None:
        return post_head(model).apply_(out.copy_(model.bridge.unembed(normed)))
    return apply_head(head, normed, out)


def apply_head(
    head: LinearHead, normed: torch.Tensor, out: torch.Tensor, columns: slice = slice(None)
) -> torch.Tensor:
    """The logits of vocabulary ``columns`` (all by default) under a linear head, written into ``out``
    (the post-head steps are elementwise, so a tile of columns gets them on its own)."""
    torch.matmul(normed, head.weight[columns].t(), out=out)
    if head.bias is not None:
        out += head.bias[columns]
    return head.post.apply_(out)


def logits_readout(model: LoadedModel, batch: int) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """Final-normed reads of stacked rows -> each row's logits [batch, pos, vocab], fresh tensors."""

    def readout(normed: torch.Tensor) -> list[torch.Tensor]:
        logits = unembed(model, normed, normed.new_empty((*normed.shape[:-1], int(model.bridge.cfg.d_vocab))))
        return list(torch.split(logits, batch))

    return readout


def readout_logits(model: LoadedModel, final: torch.Tensor) -> torch.Tensor:
    """The engine's logits from a final residual (the final norm's input) [batch, pos, d_model]: the
    staircase's readout, which core/checks/verify.py's readout check compares with the model's own logits."""
    with torch.inference_mode():
        (logits,) = logits_readout(model, final.shape[0])(model.bridge.ln_final(final))
    return logits


def vocab_tiles(vocab: int, width: int) -> list[slice]:
    """The vocabulary in tiles of ``width`` columns (the last one shorter)."""
    return [slice(start, min(vocab, start + width)) for start in range(0, vocab, width)]


@dataclass
class CleanReference:
    """The clean run's next-token statistics at positions 0..T-2: what each patched run is compared with.

    A scan compares up to 2L+1 configs with one clean run, so everything that depends on the clean
    logits alone (log-normaliser, loss, top-1) is computed here once. The probabilities are not
    held (a second [batch, T, vocab] tensor, 400 MB per 2048-token prompt of a 49k vocabulary):
    each vocabulary tile's are made from its logits when the tile is reduced.
    """

    logits: torch.Tensor  # [batch, pos-1, vocab], float32 (a view of the clean run's logits)
    logsumexp: torch.Tensor  # [batch, pos-1]
    loss: torch.Tensor  # next-token cross-entropy [batch, pos-1]
    top1: torch.Tensor  # argmax token [batch, pos-1]
    targets: torch.Tensor  # the next tokens [batch, pos-1]
    valid: torch.Tensor  # the prediction at t counts when token t+1 is real (not padding)

    @classmethod
    def of(cls, clean_logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> CleanReference:
        """From the clean logits [batch, pos, vocab] and the tokens their first positions predict
        (``targets`` [batch, n]: the next tokens, n = pos - 1 for a whole prompt, pos for a position
        chunk that is not the last) with ``valid`` marking the real ones."""
        logits = clean_logits[:, : targets.shape[1]].float()
        logsumexp = torch.logsumexp(logits, dim=-1)
        return cls(
            logits=logits,
            logsumexp=logsumexp,
            loss=logsumexp - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1),
            top1=logits.max(dim=-1).indices,
            targets=targets,
            valid=valid,
        )

    @property
    def n_predicting(self) -> int:
        """Positions whose prediction is scored (from the first)."""
        return self.targets.shape[1]

    def tile(self, columns: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean logits (a view) and probabilities (made now, from them) over a vocabulary tile."""
        logits = self.logits[..., columns]
        return logits, torch.exp(logits - self.logsumexp.unsqueeze(-1))

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
    (metrics,) = logits_metrics(clean, patched[:, : clean.n_predicting], 1)
    return metrics


def logits_metrics(clean: CleanReference, logits: torch.Tensor, n_rows: int) -> list[TokenMetrics]:
    """Metrics of ``n_rows`` stacked configs from whole logits at the predicting positions (one tile)."""
    return vocab_metrics(clean, [(slice(0, logits.shape[-1]), logits.float())], n_rows)


def vocab_metrics(
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


def row_sums(metrics: TokenMetrics) -> torch.Tensor:
    """Per prompt of the batch: the sums of clean loss, patched loss, KL, top-1 agreements and
    predictions, as [batch, 5] float64 on the metrics' device (no host sync: a batch's sums are
    copied to the host once, whatever the number of configs). Padded positions are 0 in every
    metric (``valid``), so they add nothing to any prompt's sums.
    """
    return torch.stack((metrics.loss_clean.double().sum(-1), metrics.loss_patched.double().sum(-1),
                        metrics.kl.double().sum(-1), metrics.top1_agree.sum(-1).double(),
                        metrics.valid.sum(-1).double()), dim=-1)


@dataclass
class Totals:
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

    @classmethod
    def of(cls, sums: Sequence[float]) -> Totals:
        """The totals of one prompt from its ``row_sums`` (copied to the host)."""
        loss_clean, loss_patched, kl, agree, n_tokens = sums
        return cls(loss_clean, loss_patched, kl, round(agree), round(n_tokens))

    def plus(self, other: Totals) -> Totals:
        """The pooled totals of two disjoint sets of predictions."""
        return Totals(self.loss_clean + other.loss_clean, self.loss_patched + other.loss_patched,
                      self.kl + other.kl, self.agree + other.agree, self.n_tokens + other.n_tokens)

    def row(self, n: int) -> dict[str, float]:
        """The means over ``n`` predictions, as a scan row's metrics."""
        return {"loss": self.loss_patched / n, "delta_loss": (self.loss_patched - self.loss_clean) / n,
                "kl": self.kl / n, "top1_agreement": self.agree / n}
