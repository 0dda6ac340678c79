"""What every benchmark script shares: the ``bench/results.json`` record, the device argument, and the table.

Each script measures a figure and its baseline side by side in one run, then calls :func:`record`, which merges the
entry into ``bench/results.json`` by name (a re-run replaces its own entries and keeps the others). An entry is
``{"name", "value", "baseline", "ratio", "goal", "higher_is_better", "unit", "command", "device"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results.json"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"where to record (default {RESULTS})")
    parser.add_argument("--no-record", action="store_true", help="print only; leave the results file alone")


def command_line() -> str:
    """The command that produced this run, as a user would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    if script.is_relative_to(REPO):
        script = script.relative_to(REPO)
    return shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])


def record(
    args: argparse.Namespace,
    name: str,
    *,
    value: float,
    baseline: float | None,
    ratio: float | None,
    goal: float | None,
    higher_is_better: bool,
    unit: str,
) -> dict:
    """Print one figure and merge it into the results file (unless ``--no-record``)."""
    entry = {
        "name": name,
        "value": _round(value),
        "baseline": _round(baseline),
        "ratio": _round(ratio),
        "goal": goal,
        "higher_is_better": higher_is_better,
        "unit": unit,
        "command": command_line(),
        "device": args.device,
    }
    met = "" if goal is None or ratio is None else ("  goal met" if meets(entry) else "  GOAL MISSED")
    shown = f"{entry['value']} {unit} vs {entry['baseline']} -> ratio {entry['ratio']} (goal {goal}){met}"
    print(f"[bench] {name}: {shown}")
    if not args.no_record:
        path = Path(args.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = json.loads(path.read_text()) if path.is_file() else []
        entries = [e for e in entries if e["name"] != name] + [entry]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=1) + "\n")
        os.replace(tmp, path)
    return entry


def meets(entry: dict) -> bool:
    if entry["goal"] is None or entry["ratio"] is None:
        return True
    return entry["ratio"] >= entry["goal"] if entry["higher_is_better"] else entry["ratio"] <= entry["goal"]


def table(entries: list[dict]) -> str:
    """The entries as a Markdown table: what ``scripts/bench_table.py`` prints and the docs' benchmarks page shows."""
    lines = [
        "| figure | value | baseline | ratio | goal | met | device | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        goal = "–" if e["goal"] is None else ("≥ " if e["higher_is_better"] else "≤ ") + f"{e['goal']:g}"
        met = "–" if e["goal"] is None else ("yes" if meets(e) else "**no**")
        lines.append(
            f"| {e['name']} | {_cell(e['value'])} {e['unit']} | {_cell(e['baseline'])} | {_cell(e['ratio'])} | {goal} "
            f"| {met} | {e['device']} | `{e['command']}` |"
        )
    return "\n".join(lines)


def _cell(x) -> str:
    return "–" if x is None else f"{x:g}"


def _round(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.4g}")
