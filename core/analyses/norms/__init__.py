"""The norms analysis in the store: per position, layer and site, the residual norm and std (engine.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from horizon.core.analyses.base import Analysis, column
from horizon.core.errors import HorizonError
from horizon.core.memory import budget

if TYPE_CHECKING:
    from horizon.core.results.store import Results

SCHEMA = {"prompt": pa.int32(), "position": pa.int32(), "token": pa.string(), "layer": pa.int16(),
          "site": pa.string(), "norm": pa.float32(), "std": pa.float32()}


# The sites reported, in display order; resid_pre carries the final residual as its last row.
NORM_SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
# Sites a model does not have, and why: with parallel attention + MLP (GPT-NeoX, GPT-J, Phi,
# Cohere, parallel Falcon and StableLM) both sublayers read resid_pre and their outputs are added
# together, so no point of the stream lies between them. Reported as absent, never as a number.
PARALLEL_ABSENT = {"resid_mid": "parallel attention + MLP: both read resid_pre, no stream lies between them"}


def absent_sites(parallel_attn_mlp: bool) -> dict[str, str]:
    """Site -> why the model has none (empty for sequential blocks)."""
    return dict(PARALLEL_ABSENT) if parallel_attn_mlp else {}
QUANTILES = (5, 25, 75, 95)
FIT_TOLERANCE = 0.05
MIN_FIT_POINTS = 3


@dataclass
class Growth:
    """Per-layer growth ratios of the resid_pre mean norm and the fitted exponential rate."""

    ratios: list[float]  # g_i = mean_norm(resid_pre_{i+1}) / mean_norm(resid_pre_i), i = 0..L-1
    rate: float  # exp(slope) of log mean_norm over fit_layers
    fit_layers: tuple[int, int]  # inclusive [A, B] over resid_pre indices 0..L (L = final)
    r2: float
    rms_residual: float  # root-mean-square deviation of log mean_norm from the fitted line
    chosen: str  # "user" (--fit) or "auto" (the default rule above)

    def describe(self) -> str:
        """E.g. '1.087/layer over layers 12-29 (r^2 0.98)'."""
        return f"{self.rate:.3f}/layer over layers {self.fit_layers[0]}-{self.fit_layers[1]} (r^2 {self.r2:.2f})"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Growth:
        return cls(ratios=list(data["ratios"]), rate=data["rate"], fit_layers=tuple(data["fit_layers"]),
                   r2=data["r2"], rms_residual=data["rms_residual"], chosen=data["chosen"])

    def to_json(self) -> dict[str, Any]:
        return {
            "ratios": self.ratios,
            "rate": self.rate,
            "fit_layers": list(self.fit_layers),
            "r2": self.r2,
            "rms_residual": self.rms_residual,
            "chosen": self.chosen,
        }


@dataclass
class SiteStats:
    """Aggregates of one site over the statistics positions, one entry per row (layer)."""

    mean_norm: np.ndarray  # [rows]
    median_norm: np.ndarray  # [rows]
    std: np.ndarray  # [rows], mean over positions of the per-position std over d_model
    quantiles: dict[int, np.ndarray]  # percentile -> [rows]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SiteStats:
        def array(values: list[float | None]) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

        return cls(mean_norm=array(data["mean_norm"]), median_norm=array(data["median_norm"]), std=array(data["std"]),
                   quantiles={int(q): array(values) for q, values in data["quantiles"].items()})

    def to_json(self) -> dict[str, Any]:
        return {
            "mean_norm": self.mean_norm.tolist(),
            "median_norm": self.median_norm.tolist(),
            "std": self.std.tolist(),
            "quantiles": {str(q): values.tolist() for q, values in self.quantiles.items()},
        }


@dataclass
class NormsReport:
    """Everything `horizon norms` measures on activations.

    ``norms`` / ``stds``: site -> one numpy array [rows, T] per prompt (BOS included, no padding);
    resid_pre has L+1 rows, the last being the final residual; the other sites have L rows.
    ``absent``: the sites this model does not have (``absent_sites``), in none of the dicts.
    """

    n_layers: int
    d_model: int
    has_bos: bool
    include_bos: bool
    norms: dict[str, list[np.ndarray]]
    stds: dict[str, list[np.ndarray]]
    stats: dict[str, SiteStats]
    growth: Growth
    bos_mean_norm: np.ndarray | None  # [L+1] mean over prompts of the BOS position's resid_pre norm
    appendix1: dict[str, list[Any]] = field(default_factory=dict)
    n_positions: int = 0  # positions that entered the statistics
    absent: dict[str, str] = field(default_factory=dict)

    @property
    def sites(self) -> list[str]:
        """The sites measured, in display order."""
        return [site for site in NORM_SITES if site not in self.absent]

    def to_json(self) -> dict[str, Any]:
        """The issue's JSON keys, except model / token_ids / tokens, which the CLI adds.

        ``sites.<site>.quantiles`` maps each percentile ("5", "25", "75", "95") to a per-layer list;
        ``per_position`` is [prompt][layer][position], BOS included. A site the model does not
        have is null, and ``absent_sites`` says why.
        """
        sites: dict[str, Any] = {site: None for site in self.absent}
        for site in self.sites:
            entry = self.stats[site].to_json()
            entry["per_position"] = [array.tolist() for array in self.norms[site]]
            entry["per_position_std"] = [array.tolist() for array in self.stds[site]]
            sites[site] = entry
        return {
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "include_bos": self.include_bos,
            "n_positions": self.n_positions,
            "sites": {site: sites[site] for site in NORM_SITES},
            "absent_sites": dict(self.absent),
            "growth": self.growth.to_json(),
            "bos": {"mean_norm": None if self.bos_mean_norm is None else self.bos_mean_norm.tolist()},
            "appendix1": self.appendix1,
        }


# ----------------------------------------------------------------------------- growth fit


def _line_fit(log_norms: np.ndarray) -> tuple[float, float, float]:
    """Least-squares line through log norms at x = 0..n-1: (slope, r^2, rms residual)."""
    x = np.arange(len(log_norms), dtype=np.float64)
    slope, intercept = np.polyfit(x, log_norms, 1)
    residual = log_norms - (slope * x + intercept)
    total = float(((log_norms - log_norms.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / total if total > 0 else 1.0
    return float(slope), r2, float(np.sqrt((residual**2).mean()))


def default_fit_window(mean_norms: Sequence[float] | np.ndarray) -> tuple[int, int]:
    """The longest window whose log-norm is close to a straight line (rule in engine.py's module doc)."""
    y = np.log(np.asarray(mean_norms, dtype=np.float64))
    count = len(y)
    if count < MIN_FIT_POINTS:
        return 0, count - 1
    x = np.arange(count, dtype=np.float64)
    # Prefix sums give every window's regression in O(1): O(L^2) windows stay fast for deep models.
    sums = {name: np.concatenate(([0.0], np.cumsum(values)))
            for name, values in (("x", x), ("y", y), ("xx", x * x), ("xy", x * y), ("yy", y * y))}
    best: tuple[int, float, int] | None = None  # (length, -rms, start): larger is better
    for start in range(count):
        for stop in range(start + MIN_FIT_POINTS - 1, count):
            n = stop - start + 1
            sx, sy, sxx, sxy, syy = (sums[name][stop + 1] - sums[name][start] for name in ("x", "y", "xx", "xy", "yy"))
            cxx, cxy, cyy = sxx - sx * sx / n, sxy - sx * sy / n, syy - sy * sy / n
            rms = math.sqrt(max(cyy - cxy * cxy / cxx, 0.0) / n)
            if rms > FIT_TOLERANCE:
                continue
            key = (n, -rms, start)
            if best is None or key > best:
                best = key
    if best is None:
        return 0, count - 1
    length, _, start = best
    return start, start + length - 1


def fit_growth(mean_norms: Sequence[float] | np.ndarray, fit: tuple[int, int] | None = None) -> Growth:
    """Growth ratios of consecutive mean norms and exp(slope) of log mean norm over ``fit``.

    ``mean_norms`` is resid_pre_0..resid_pre_{L-1} then the final residual; ``fit`` is an
    inclusive [A, B] over those L+1 indices (None: the default window rule).
    """
    norms = np.asarray(mean_norms, dtype=np.float64)
    if norms.ndim != 1 or len(norms) < 2:
        raise HorizonError("the growth fit needs the mean norms of at least two layers")
    if not np.all(np.isfinite(norms)) or np.any(norms <= 0):
        raise HorizonError("the growth fit needs finite, positive mean norms")
    last = len(norms) - 1
    if fit is None:
        start, stop = default_fit_window(norms)
        chosen = "auto"
    else:
        start, stop = fit
        if not 0 <= start < stop <= last:
            raise HorizonError(
                f"--fit {start}:{stop} is out of range: it needs 0 <= A < B <= {last} "
                f"(layers 0..{last - 1}, and {last} for the final residual)"
            )
        chosen = "user"
    slope, r2, rms = _line_fit(np.log(norms[start : stop + 1]))
    ratios = (norms[1:] / norms[:-1]).tolist()
    return Growth(ratios=ratios, rate=math.exp(slope), fit_layers=(start, stop), r2=r2, rms_residual=rms,
                  chosen=chosen)


def aggregate_site(rows: list[np.ndarray], include_bos: bool, has_bos: bool) -> tuple[SiteStats, np.ndarray]:
    """Pool the statistics positions of all prompts: per-prompt [2, rows, T] -> SiteStats."""
    skip = 1 if has_bos and not include_bos else 0
    pooled = np.concatenate([array[:, :, skip:] for array in rows], axis=2)  # [2, rows, N]
    if pooled.shape[2] == 0:
        raise HorizonError("no position to aggregate: every prompt is only a BOS token")
    norms, stds = pooled[0], pooled[1]
    percentiles = np.percentile(norms, QUANTILES, axis=1)
    stats = SiteStats(
        mean_norm=norms.mean(axis=1),
        median_norm=np.median(norms, axis=1),
        std=stds.mean(axis=1),
        quantiles={q: percentiles[index] for index, q in enumerate(QUANTILES)},
    )
    return stats, norms


def appendix1_check(
    resid_pre_mean: Sequence[float] | np.ndarray, attn_mean: Sequence[float] | np.ndarray,
    mlp_mean: Sequence[float] | np.ndarray,
) -> dict[str, list[Any]]:
    """Seed 002 appendix 1: ||attn_out_i|| + ||mlp_out_i|| >= (g_i - 1) ||resid_pre_i||, per layer.

    With mean norms it always holds (triangle inequality, position by position, then averaged),
    so a failure means the captured sites do not add up: a sanity check of the decomposition.
    For parallel attention + MLP the same bound holds (both outputs still sum to the update).
    """
    pre = np.asarray(resid_pre_mean, dtype=np.float64)
    lhs = np.asarray(attn_mean, dtype=np.float64) + np.asarray(mlp_mean, dtype=np.float64)
    growth = pre[1:] / pre[:-1]
    rhs = (growth - 1.0) * pre[:-1]
    # A relative slack for float rounding when the bound is nearly tight.
    holds = lhs >= rhs - 1e-6 * np.maximum(pre[1:], pre[:-1])
    return {"lhs": lhs.tolist(), "rhs": rhs.tolist(), "holds": holds.tolist()}

def rows(worker: Any, indices: list[int], token_ids: list[list[int]], tokens: list[list[str]]) -> pa.Table:
    from horizon.core.analyses.norms.engine import analyse_norms

    plan = worker.plan("norms", token_ids)
    report = analyse_norms(worker.model, token_ids, worker.settings.bos, batch_size=plan.batch_size,
                           position_chunk=plan.position_chunk)
    return report_table(report, indices, token_ids, tokens)


def report_table(report: NormsReport, indices: list[int], token_ids: list[list[int]],
                 tokens: list[list[str]]) -> pa.Table:
    """A NormsReport as the table's long rows: one per prompt (numbered by ``indices``), site, layer and position."""
    columns: dict[str, list[np.ndarray]] = {key: [] for key in ("prompt", "position", "layer", "norm", "std")}
    sites: list[np.ndarray] = []
    token_text: list[np.ndarray] = []
    for row, prompt in enumerate(indices):
        length = len(token_ids[row])
        prompt_tokens = np.asarray(tokens[row], dtype=object)
        for site in report.sites:
            norms = report.norms[site][row]  # [layers, T]
            stds = report.stds[site][row]
            n_rows = norms.shape[0]
            columns["prompt"].append(np.full(n_rows * length, prompt))
            columns["layer"].append(np.repeat(np.arange(n_rows), length))
            columns["position"].append(np.tile(np.arange(length), n_rows))
            columns["norm"].append(norms.reshape(-1))
            columns["std"].append(stds.reshape(-1))
            sites.append(np.full(n_rows * length, site, dtype=object))
            token_text.append(np.tile(prompt_tokens, n_rows))
    return pa.table({
        "prompt": pa.array(np.concatenate(columns["prompt"]), pa.int32()),
        "position": pa.array(np.concatenate(columns["position"]), pa.int32()),
        "token": pa.array(np.concatenate(token_text), pa.string()),
        "layer": pa.array(np.concatenate(columns["layer"]), pa.int16()),
        "site": pa.array(np.concatenate(sites), pa.string()),
        "norm": pa.array(np.concatenate(columns["norm"]), pa.float32()),
        "std": pa.array(np.concatenate(columns["std"]), pa.float32()),
    })


def view(results: Results, table: pa.Table, manifest: dict[str, Any], has_bos: bool) -> dict[str, Any]:
    # Site names as small integer codes: comparing 1.5M strings would dominate the report's time.
    encoded = pa.chunked_array(table.column("site").combine_chunks().dictionary_encode())
    site_names = encoded.chunk(0).dictionary.to_pylist()
    site_code = encoded.chunk(0).indices.to_numpy()
    prompt, position, layer = column(table, "prompt"), column(table, "position"), column(table, "layer")
    norm, std = column(table, "norm").astype(np.float64), column(table, "std").astype(np.float64)
    site = np.asarray(site_names, dtype=object)[site_code]  # only used for the BOS row below
    stored_model = manifest.get("model")
    model: dict[str, Any] = stored_model if isinstance(stored_model, dict) else {}
    absent = absent_sites(model.get("parallel_attn_mlp") is True)
    stats = {}
    n_positions = 0
    for name in (name for name in NORM_SITES if name not in absent):
        if name not in site_names:
            raise HorizonError(f"the norms table has no {name} rows")
        selected = site_code == site_names.index(name)
        if has_bos:
            selected &= position >= 1  # BOS (position 0) is excluded from statistics (docs/SCIENCE.md s.2)
        # Rows are written prompt by prompt, layer-major with positions in order, so a stable sort by
        # layer alone lines every layer's positions up in the same (prompt, position) order.
        order = np.argsort(layer[selected], kind="stable")
        n_rows = int(layer[selected].max()) + 1
        pooled = np.stack((norm[selected][order], std[selected][order])).reshape(2, n_rows, -1)
        stats[name], _ = aggregate_site([pooled], include_bos=True, has_bos=False)
        n_positions = pooled.shape[2]
    growth = fit_growth(stats["resid_pre"].mean_norm)
    bos_mean = None
    if has_bos:
        at_bos = (site == "resid_pre") & (position == 0)
        bos_layers = layer[at_bos]
        bos_mean = (np.bincount(bos_layers, weights=norm[at_bos]) / np.bincount(bos_layers)).tolist()
    return {
        "n_prompts": len(np.unique(prompt)),
        "n_positions": int(n_positions),
        "sites": {name: stats[name].to_json() if name in stats else None for name in NORM_SITES},
        "absent_sites": absent,
        "growth": growth.to_json(),
        "bos": {"mean_norm": bos_mean},
        "appendix1": appendix1_check(stats["resid_pre"].mean_norm, stats["attn_out"].mean_norm,
                                     stats["mlp_out"].mean_norm),
    }


def expected_rows(lengths: list[int], settings: dict[str, Any], model: dict[str, Any]) -> int:
    n_layers: int = model["n_layers"]
    per_layer = len(NORM_SITES) - 1 - len(absent_sites(model.get("parallel_attn_mlp") is True))
    return sum(lengths) * (n_layers + 1 + per_layer * n_layers)  # resid_pre has the final row too


def cost_parts(dims: budget.ModelDims, batch: int, n_tokens: int, *, rows: int, windows: int, vocab_tile: int,
               held_tokens: int, position_chunk: int) -> dict[str, int]:
    parts = budget.forward_parts(dims, batch, n_tokens, logits=False)
    # per-position numbers, float32 then float64
    parts["norms"] = 5 * (dims.n_layers + 1) * 2 * batch * n_tokens * 8 * 2
    return parts


# Long prompts on a CPU run in position chunks; 1024 padded tokens per auto CPU batch (core/sweep/worker.py).
COST = budget.Cost(parts=cost_parts, speed_chunks=True, cpu_batch_tokens=1024)

ANALYSIS = Analysis(
    name="norms", table="norms", schema=SCHEMA, rows=rows, view=view,
    settings=lambda settings, n_layers: {"sites": list(NORM_SITES)},
    # Only the columns the view needs are read (the per-row token texts are the bulk of the table).
    view_columns=["prompt", "position", "layer", "site", "norm", "std"],
    expected_rows=expected_rows, render="horizon.tui.cli.report_render:render_norms", pane="norms", cost=COST,
)


def report_from_rows(view: dict[str, Any], table: pa.Table, prompt_numbers: list[int], has_bos: bool,
                     n_layers: int, d_model: int, site: str = "resid_pre") -> NormsReport:
    """A NormsReport from a corpus view and the stored rows: corpus statistics plus ``site``'s per-prompt norms.

    ``prompt_numbers[i]`` is the stored prompt shown as prompt ``i`` (None where it has no rows).
    """
    keep = np.asarray(column(table, "site") == site, dtype=bool)
    prompt, layer = column(table, "prompt")[keep], column(table, "layer")[keep]
    position = column(table, "position")[keep]
    order = np.argsort(prompt, kind="stable")
    prompt, layer, position = prompt[order], layer[order], position[order]
    values = {name: column(table, name)[keep][order].astype(np.float64) for name in ("norm", "std")}
    n_rows = int(layer.max()) + 1 if len(layer) else n_layers + 1
    per_prompt: dict[str, list[Any]] = {"norm": [], "std": []}
    for number in prompt_numbers:
        start, stop = np.searchsorted(prompt, [number, number + 1])
        for name in per_prompt:
            if stop == start:
                per_prompt[name].append(None)
                continue
            matrix = np.full((n_rows, int(position[start:stop].max()) + 1), np.nan)
            matrix[layer[start:stop], position[start:stop]] = values[name][start:stop]
            per_prompt[name].append(matrix)
    bos = view.get("bos", {}).get("mean_norm")
    return NormsReport(
        n_layers=n_layers, d_model=d_model, has_bos=has_bos, include_bos=False,
        norms={site: per_prompt["norm"]}, stds={site: per_prompt["std"]},
        stats={name: SiteStats.from_json(entry) for name, entry in view["sites"].items() if entry is not None},
        growth=Growth.from_json(view["growth"]),
        bos_mean_norm=None if bos is None else np.asarray(bos, dtype=np.float64),
        appendix1=view.get("appendix1", {}), n_positions=view.get("n_positions", 0),
        absent={name: str(why) for name, why in (view.get("absent_sites") or {}).items()},
    )
