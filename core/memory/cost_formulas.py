"""The cost formulas: the working bytes of a forward pass, a kept clean run, staircase rows and chunked scans.

Every analysis's cost (its registry entry's ``Cost.parts``, core/analyses/<name>/) is built from
these: ``forward_parts``, ``staircase_parts`` and ``chunked_scan_parts``; the engine divides its pass
budget by ``row_bytes`` and keeps clean runs within ``clean_run_bytes``. ``readout_tile`` is the
readout's vocabulary tile width (core/patching/horizon.py uses the same). Part of the memory budget,
whose public face is core/memory/budget.py.
"""

from __future__ import annotations

from horizon.core.memory.device_budget import ModelDims

# What the allocators keep beyond the live tensors (heap fragmentation, BLAS and oneDNN scratch):
# measured on CPU as up to ~210 MB over the tensors' own bytes at 512-2048 tokens, varying run to run.
ALLOCATOR_SLACK = 224 << 20
# Query rows per step of the attention statistics (core/analyses/attention/engine.py imports it).
QUERY_CHUNK = 512
# Vocabulary columns per readout tile (cache-sized; core/patching/horizon.py imports it), and the narrowest
# tile a tight budget may use.
VOCAB_TILE = 2048
MIN_VOCAB_TILE = 256
# The heap's retention of a chunked scan's per-chunk tensors, as a share of the chunk's own bytes
# (``_chunked_scan``).
CHUNK_RETENTION = 0.6


def _forward(dims: ModelDims, batch: int, n_tokens: int, logits: bool, kv_tokens: int = 0) -> dict[str, int]:
    """One eager forward pass of ``n_tokens`` positions attending to ``kv_tokens`` (default: the same
    positions): a layer's activations, its attention scores, and (when asked) the logits."""
    e, bt = dims.element_bytes, batch * n_tokens
    parts = {
        "allocator slack": ALLOCATOR_SLACK,
        "activations": bt * (8 * dims.d_model + 3 * dims.d_mlp) * e,
        # Eager attention holds the scores, their softmax and the bridge's pattern hook copy; the
        # causal mask is one more [batch, T, T].
        "attention": batch * n_tokens * (kv_tokens or n_tokens) * (3 * dims.n_heads + 1) * e,
    }
    if logits:
        parts["logits"] = bt * dims.vocab * e
    return parts


def _clean_run(dims: ModelDims, batch: int, n_tokens: int) -> dict[str, int]:
    """A horizon clean run kept for its patched passes (core/patching/horizon.py CleanRun)."""
    e, bt, readers = dims.element_bytes, batch * n_tokens, 2 * dims.n_layers + 1
    return {
        # sublayer outputs s_0..s_2L, resid_pre per layer, and their float64 prefix sums
        "clean outputs": bt * dims.d_model * ((readers + dims.n_layers) * e + readers * 8),
        # the clean logits are the forward's own (its "logits" part); the reference's float32 view
        # is a copy only when the model computes in another dtype
        "clean logits": bt * dims.vocab * (4 if e != 4 else 0),
    }


def clean_run_bytes(dims: ModelDims, n_tokens: int) -> int:
    """What clean runs of ``n_tokens`` tokens in all hold once used (core/patching/horizon.py ``clean_runs``)."""
    return sum(_clean_run(dims, 1, n_tokens).values())


def row_bytes(dims: ModelDims, batch: int, n_tokens: int, position_chunk: int = 0) -> int:
    """One staircase row: core/patching/horizon.py's ``max_pass_bytes`` divided by this is the rows per pass
    (with ``position_chunk``: one row of a chunked pass, its KV cache and heap retention included)."""
    if 0 < position_chunk < n_tokens:
        width = readout_tile(batch, position_chunk)
        one, none = (sum(_chunked_scan(dims, batch, n_tokens, rows, width, position_chunk).values()) for rows in (1, 0))
        return one - none
    return _row_bytes(dims, batch, n_tokens)


def _row_bytes(dims: ModelDims, batch: int, n_tokens: int, kv_tokens: int = 0) -> int:
    """One staircase row (one config over the token batch, or over a position chunk of ``n_tokens``
    attending to ``kv_tokens``) inside a batched pass."""
    e = dims.element_bytes
    live_prefixes = 2 * dims.n_layers + 2  # float64 prefix sums still to be subtracted, at most
    per_position = (dims.d_model * (live_prefixes * 8 + 8 * e) + 3 * dims.d_mlp * e
                    + 3 * dims.n_heads * (kv_tokens or n_tokens) * e)
    return batch * n_tokens * per_position



def forward_parts(dims: ModelDims, batch: int, n_tokens: int, logits: bool) -> dict[str, int]:
    """One forward pass's working bytes by part (the formula every analysis's cost starts from)."""
    return _forward(dims, batch, n_tokens, logits=logits)


def staircase_parts(dims: ModelDims, batch: int, n_tokens: int, rows: int, vocab_tile: int, held_tokens: int,
                    whole_logits: bool) -> dict[str, int]:
    """Scan and patch: the clean run, then staircase passes of ``rows`` configs with a readout (one
    vocabulary tile of every row; ``whole_logits``: each config's whole logits, as patch holds them)."""
    bt = batch * n_tokens
    parts = _forward(dims, batch, n_tokens, logits=True)
    parts.update(_clean_run(dims, 1, max(held_tokens, batch * n_tokens)))
    parts["staircase rows"] = rows * _row_bytes(dims, batch, n_tokens)
    if whole_logits:  # the readout holds each config's whole logits
        parts["readout"] = rows * bt * dims.vocab * 4
    else:  # one vocabulary tile of every row in the readout chunk, and the metrics' temporaries
        parts["readout"] = max(1, rows) * bt * vocab_tile * 4 * 4
    return parts


def chunked_scan_parts(dims: ModelDims, batch: int, n_tokens: int, rows: int, vocab_tile: int,
                       chunk: int) -> dict[str, int]:
    """A scan whose prompts go ``chunk`` positions at a time (see ``_chunked_scan``)."""
    return _chunked_scan(dims, batch, n_tokens, rows, vocab_tile, chunk)


def _chunked_scan(dims: ModelDims, batch: int, n_tokens: int, rows: int, vocab_tile: int, chunk: int) -> dict[str, int]:
    """A scan whose prompts go ``chunk`` positions at a time: what one chunk holds, plus the KV caches
    (the clean pass's and one per staircase row) that grow to the whole prompt."""
    parts = _forward(dims, batch, chunk, logits=True, kv_tokens=n_tokens)
    parts.update(_clean_run(dims, batch, chunk))
    parts["staircase rows"] = rows * _row_bytes(dims, batch, chunk, kv_tokens=n_tokens)
    parts["readout"] = max(1, rows) * batch * chunk * vocab_tile * 4 * 4
    per_chunk = sum(size for name, size in parts.items() if name != "allocator slack")
    # The same chunk-sized tensors are allocated and freed once per chunk and pass, and the heap
    # keeps more of them than the live ones: measured on CPU (SmolLM2, 2048 tokens, chunks of 128,
    # 256 and 512) the peak exceeds the tensors by up to 0.6 of the chunk's own bytes.
    parts["allocator retention"] = int(CHUNK_RETENTION * per_chunk)
    parts["kv caches"] = (1 + rows) * batch * n_tokens * dims.kv_bytes_per_token
    return parts


def readout_tile(batch: int, n_tokens: int, widest: int = VOCAB_TILE) -> int:
    """Vocabulary columns per readout tile of one row: ``widest``, halved for long batches until a tile
    is at most 8 MB (core/patching/horizon.py's ``patched_metrics`` uses the same width)."""
    width = widest
    while width > MIN_VOCAB_TILE and batch * n_tokens * width * 4 > 8 << 20:
        width //= 2
    return width
