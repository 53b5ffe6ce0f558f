"""The staircase pass of the horizon engine: many horizon configs in one batched forward pass.

Row r of the batch (rows sorted by first patched layer) occupies batch slots r*B..(r+1)*B-1 and
joins the pass at its own first patched layer, from the clean ``resid_pre`` there, so no block
ever runs on a row whose input is clean. ``StaircasePass`` holds the pass's state (the float64
prefix sums of every active row, the rows joined so far, the hidden state) and names its steps:
``join`` (rows enter at their layer), ``read_window`` / ``add_output`` (the reader and output
hooks), ``write_windows`` (what a reader reads: its window, or the stream), ``readout`` (the
final reader of several rows at once). ``run()`` yields (config index, readout item) per row.

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

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from horizon.core.capture.decomposition import n_readers, output_hook, reader_hook
from horizon.core.patching.horizon_metrics import logits_readout

if TYPE_CHECKING:
    from horizon.core.model.loader import LoadedModel
    from horizon.core.patching.horizon import AblationMeans, CleanRun, HorizonConfig

# Logits one batched readout may hold.
READOUT_BYTES = 128 << 20

Row = tuple[int, int, "HorizonConfig"]  # (first patched layer, config index, config)


def prefix_last_use(rows: list[Row], n_layers: int) -> dict[int, int]:
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


class StaircasePass:
    """One batched pass over ``rows`` (sorted by first patched layer); see the module's docstring."""

    def __init__(self, model: LoadedModel, clean: CleanRun, rows: list[Row],
                 readout: Callable[[torch.Tensor], list[Any]] | None = None,
                 advance: Callable[[float], None] = lambda n: None, rows_per_readout: int | None = None,
                 means: AblationMeans | None = None, cache: Any = None) -> None:
        self.model, self.clean, self.rows, self.means = model, clean, rows, means
        # A position chunk's pass (``clean.offset`` > 0 or more chunks to come): the rows' keys and
        # values of the chunks before, extended as the blocks run (core/patching/horizon.py ChunkedClean).
        self.cache = cache
        self.n_layers, self.batch = model.n_layers, clean.batch_size
        self.read_out = readout or logits_readout(model, self.batch)  # each row's logits unless told otherwise
        self.advance = advance
        self.rows_per_readout = rows_per_readout
        self.final = n_readers(self.n_layers)
        self.first_layer = rows[0][0]
        self.clean_prefix = clean.exact_reads  # clean P_1..P_{2L+1}, index i-1
        self.prefix: dict[int, torch.Tensor] = {}  # P_i of every active row, from the first layer's reader on
        self.last_use = prefix_last_use(rows, self.n_layers)
        self.last_prefix = max(self.last_use)  # no P_i beyond it is ever read
        self.joined = 0  # rows in the pass so far
        self.hidden = clean.resid_pre.new_empty((0, *clean.resid_pre.shape[2:]))
        # Progress: each row is one config's worth, spread evenly over its blocks and its readout.
        self.share = [1 / (self.n_layers - layer + 1) for layer, _, _ in rows]

    # -- the steps

    def slots(self, row: int) -> slice:
        return slice(row * self.batch, (row + 1) * self.batch)

    def row_prefix(self, row: int, i: int) -> torch.Tensor:
        layer, _, config = self.rows[row]
        if config.source == "recursive" and i >= 2 * layer + 1:
            return self.prefix[i][self.slots(row)]
        return self.clean_prefix[i - 1]

    def write_windows(self, j: int, current: torch.Tensor, out: torch.Tensor, first_row: int = 0) -> None:
        """Fill ``out`` with what reader j of rows first_row.. reads: the window if patched, else ``current``."""
        clean, means = self.clean, self.means
        for local in range(current.shape[0] // self.batch):
            row, here = first_row + local, self.slots(local)
            config = self.rows[row][2]
            if not config.patches(j, self.n_layers):
                out[here] = current[here]
                continue
            lo = j - config.horizon_sublayers
            torch.sub(self.row_prefix(row, j), self.row_prefix(row, lo), out=out[here])
            if config.keep_embed:  # j > K, so the window never holds s_0 on its own
                out[here] += clean.outputs[0]
            if config.ablation == "mean":
                assert means is not None
                out[here] += means.fill(lo, config.keep_embed, out.dtype)
                if means.has_bos and clean.offset == 0:  # position 0: the clean P_lo there, kept s_0 or not
                    bos = self.row_prefix(row, lo)[:, 0] - self.clean_prefix[lo - 1][:, 0]  # 0 unless recursive
                    torch.sub(self.row_prefix(row, j)[:, 0], bos, out=out[here][:, 0])

    def read_window(self, j: int) -> Callable[[torch.Tensor, object], torch.Tensor]:
        """The hook on reader j's input: the rows it patches read their windows."""

        def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
            for i in [i for i in self.prefix if self.last_use[i] < j]:  # no reader from here on subtracts it
                del self.prefix[i]
            if not any(self.rows[row][2].patches(j, self.n_layers) for row in range(activation.shape[0] // self.batch)):
                return activation
            # A new tensor: the norm's input may alias the residual stream, which must flow on intact.
            replaced = torch.empty_like(activation)
            self.write_windows(j, activation, replaced)
            return replaced

        return hook

    def add_output(self, j: int) -> Callable[[torch.Tensor, object], torch.Tensor]:
        """The hook on sublayer j's output: P_{j+1} = P_j + s_j (float64)."""

        def hook(activation: torch.Tensor, hook: object) -> torch.Tensor:
            if j + 1 <= self.last_prefix:
                self.prefix[j + 1] = self.prefix[j] + activation
            return activation

        return hook

    def join(self, layer: int, start: torch.Tensor) -> None:
        """Rows whose first patched reader is in ``layer`` enter the pass (they have seen clean inputs so far)."""
        newcomers = 0
        while self.joined + newcomers < len(self.rows) and self.rows[self.joined + newcomers][0] == layer:
            newcomers += 1
        if newcomers:
            i = 2 * layer + 1
            self.hidden = torch.cat((self.hidden, start.repeat(newcomers, 1, 1)))
            joining = self.clean_prefix[i - 1].repeat(newcomers, 1, 1)
            self.prefix[i] = torch.cat((self.prefix[i], joining)) if i in self.prefix else joining
            self.joined += newcomers

    def blocks(self) -> None:
        """Run the blocks from the first patched layer on, rows joining at their layers."""
        model, clean = self.model, self.clean
        readers = range(2 * self.first_layer + 1, self.final)
        fwd_hooks = [(reader_hook(j, self.n_layers), self.read_window(j)) for j in readers]
        fwd_hooks += [(output_hook(j), self.add_output(j)) for j in readers]
        with torch.inference_mode(), model.bridge.hooks(fwd_hooks=fwd_hooks):
            for layer in range(self.first_layer, self.n_layers):
                self.join(layer, clean.resid_pre[layer])
                args, kwargs = clean.block_call(layer, self.joined, self.cache)
                output = model.bridge.blocks[layer](self.hidden, *args, **kwargs)
                self.hidden = output[0] if isinstance(output, tuple) else output
                self.advance(sum(self.share[: self.joined]))

    def readout(self) -> Iterator[tuple[int, Any]]:
        """The final reader of several rows at once (one unembedding matmul), in chunks bounding the logits."""
        model, hidden, n_rows, batch = self.model, self.hidden, len(self.rows), self.batch
        rows_per_readout = self.rows_per_readout
        if rows_per_readout is None:  # whole logits per row
            rows_per_readout = READOUT_BYTES // max(1, batch * hidden.shape[1] * int(model.bridge.cfg.d_vocab) * 4)
        per_chunk = max(1, rows_per_readout)
        for first in range(0, n_rows, per_chunk):
            last = min(n_rows, first + per_chunk)
            current = hidden[first * batch : last * batch]
            reads = torch.empty_like(current)
            self.write_windows(self.final, current, reads, first_row=first)
            items = self.read_out(model.bridge.ln_final(reads))
            self.advance(sum(self.share[first:last]))
            for (_, index, _), item in zip(self.rows[first:last], items, strict=True):
                yield index, item

    def run(self) -> Iterator[tuple[int, Any]]:
        """(config index, readout item) for every row."""
        self.blocks()
        with torch.inference_mode():
            self.join(self.n_layers, self.clean_prefix[self.final - 1].to(self.hidden.dtype))  # final-readout-only rows
            yield from self.readout()
