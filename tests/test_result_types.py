"""Every analysis's result type lives in a torch-free module: rebuilt from rows, it imports no torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import sys

    import numpy as np
    import pyarrow as pa
    from horizon.core import analyses
    from horizon.core.analyses import attention, norms, scan, truncate

    L, T, H = 2, 4, 3
    # norms: two prompts, every site (resid_pre has L+1 rows)
    records = []
    for prompt in range(2):
        for site in norms.NORM_SITES:
            for layer in range(L + 1 if site == "resid_pre" else L):
                for position in range(T):
                    records.append({"prompt": prompt, "position": position, "token": "x", "layer": layer,
                                    "site": site, "norm": 1.0 + layer + 0.1 * position + prompt, "std": 0.5})
    table = pa.Table.from_pylist(records, schema=pa.schema(list(norms.SCHEMA.items())))
    view = analyses.REGISTRY["norms"].view(None, table, {}, True)
    report = norms.report_from_rows(view, table, [0, 1], True, L, 8)
    assert isinstance(report, norms.NormsReport) and report.norms["resid_pre"][1].shape == (L + 1, T)
    assert report.growth.to_json() == view["growth"] and report.stats["mlp_out"].to_json() == view["sites"]["mlp_out"]

    # truncate: one prompt, lengths 1 and 2
    records = []
    for length in (1, 2):
        for position in range(length + 1, T):
            for layer in range(L + 1):
                records.append({"prompt": 0, "position": position, "token": "x", "category": "word",
                                "length": length, "layer": layer, "cos": 0.5 + 0.1 * layer, "cos_raw": 0.9})
    table = pa.Table.from_pylist(records, schema=pa.schema(list(truncate.SCHEMA.items())))
    report = truncate.report_from_rows(table, [[1, 2, 3, 4]], "m")
    assert isinstance(report, truncate.TruncationReport) and report.cos.shape == (3, L + 1)
    truncate.summarise(report)
    report.outliers = truncate.find_outliers(report, [["<bos>", "a", "b", "c"]], 2)
    assert len(report.to_json()["per_token"]) == 3 and len(report.outliers) == 2

    # scan: one prompt, k = 1..2 at start layer 0, plus the layer x k matrix
    records = [{"prompt": 0, "n_tokens": 3, "k": k, "K": 2 * k, "start_layer": 0, "loss_clean": 2.0,
                "loss": 2.0 + 1 / k, "delta_loss": 1 / k, "kl": 0.1, "top1": 0.5, "only_layer": only}
               for only in (-1, 0, 1, 2) for k in (1, 2)]
    table = pa.Table.from_pylist(records, schema=pa.schema(list(scan.WRITTEN.items())))
    view = analyses.REGISTRY["scan"].view(None, table, {"analyses": {"scan": {"tol": 0.6}}}, True)
    result = scan.report_from_view(view)
    assert isinstance(result, scan.ScanResult) and result.effective_horizon == {0: 2}
    assert view["by_layer"]["effective_horizon"] == [2, 2, 2]

    # attention: one prompt
    size = L * H
    columns = {"prompt": [0] * size, "n_queries": [3] * size, "layer": [i // H for i in range(size)],
               "head": [i % H for i in range(size)]}
    for name in ("mean_distance", *attention.MASSES.values()):
        for suffix in ("", "_no_bos"):
            columns[name + suffix] = [0.25] * size
    table = pa.table(columns, schema=pa.schema(list(attention.SCHEMA.items())))
    report = attention.report_from_rows(table, "m", [[1, 2, 3]], True)
    assert isinstance(report, attention.AttentionReport) and report.mean_distance.shape == (L, H)
    assert attention.report_rows(report, 0).column("mean_distance").to_pylist() == [0.25] * size
    assert report.to_json()["n_heads"] == H

    sys.exit(3 if "torch" in sys.modules else 0)
''')


def test_result_types_rebuild_without_torch():
    """Importing every result-type module and rebuilding each type from rows leaves torch unimported."""
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode != 3, "rebuilding a result type from rows imported torch"
    assert done.returncode == 0, done.stderr


def test_engines_reexport_the_one_type():
    """The engines hand out the registry modules' types, not copies of them."""
    from horizon.core import analyses
    from horizon.core.analyses.attention import engine as attention
    from horizon.core.analyses.norms import engine as norms
    from horizon.core.analyses.scan import engine as horizon_scan
    from horizon.core.analyses.truncate import engine as truncation

    assert norms.NormsReport is analyses.norms.NormsReport
    assert norms.aggregate_site is analyses.norms.aggregate_site
    assert truncation.TruncationReport is analyses.truncate.TruncationReport
    assert attention.AttentionReport is analyses.attention.AttentionReport
    assert horizon_scan.ScanResult is analyses.scan.ScanResult
    assert horizon_scan.ByLayerResult is analyses.scan.ByLayerResult
