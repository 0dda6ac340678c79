"""Render bench/results.json as the README's performance table (between the bench markers).

    .venv/bin/python scripts/bench_table.py [--check]

``--check`` exits non-zero when the README table differs from the results file, without writing.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchlib import REPO, RESULTS, meets

README = REPO / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _cell(x) -> str:
    return "–" if x is None else f"{x:g}"


def table(entries: list[dict]) -> str:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    entries = json.loads(RESULTS.read_text())
    text = README.read_text()
    if START not in text or END not in text:
        print(f"README.md has no {START} ... {END} block", file=sys.stderr)
        return 1
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    new = f"{head}{START}\n{table(entries)}\n{END}{tail}"
    if args.check:
        return 0 if new == text else 1
    README.write_text(new)
    print(f"README.md: {len(entries)} figures from {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
