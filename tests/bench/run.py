"""`make bench`: run every tests/bench/bench_*.py, print one table, write bench-results.json.

Contract for a benchmark module: it defines functions named ``bench_<name>()`` (the name starts
with the analysis it times: capture, patch, scan, truncate, norms, sweep, tui, load), each
returning a dict with at least ``ratio`` (measured, side by side in the same run) and ``target``
(the bar from the issue; ``None`` when the ratio is only reported), plus any raw timings.
A ratio passes when it is <= target.

``make bench ONLY="scan truncate"`` runs the benchmarks whose names start with those prefixes.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]


def discover(selected: list[str]) -> list[tuple[str, object]]:
    found = []
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        module = importlib.import_module(f"tests.bench.{path.stem}")
        for name in dir(module):
            if name.startswith("bench_") and callable(getattr(module, name)):
                short = name.removeprefix("bench_")
                if not selected or any(short.startswith(prefix) for prefix in selected):
                    found.append((short, getattr(module, name)))
    return found


def main(argv: list[str]) -> int:
    console = Console()
    suite_started = time.perf_counter()
    results: dict[str, dict] = {}
    for name, function in discover(argv):
        console.print(f"[dim]running {name} ...[/]")
        started = time.perf_counter()
        try:
            result = dict(function())
        except Exception as exc:  # a broken benchmark is reported, the others still run
            traceback.print_exc()
            result = {"ratio": None, "target": None, "error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = round(time.perf_counter() - started, 2)
        results[name] = result
    table = Table(title="horizon benchmarks (ratios measured side by side in this run)")
    for column in ("benchmark", "ratio", "target", "pass", "details"):
        table.add_column(column)
    failed = 0
    for name, result in results.items():
        ratio, target = result.get("ratio"), result.get("target")
        ok = ratio is not None and (target is None or ratio <= target)
        failed += not ok
        details = ", ".join(f"{k}={v}" for k, v in result.items() if k not in {"ratio", "target"})
        table.add_row(
            name,
            "-" if ratio is None else f"{ratio:.3f}",
            "report" if target is None else f"<= {target}",
            "[green]yes[/]" if ok else "[red]no[/]",
            details,
        )
    console.print(table)
    (ROOT / "bench-results.json").write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {ROOT / 'bench-results.json'}")
    console.print(f"suite wall time: {time.perf_counter() - suite_started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
