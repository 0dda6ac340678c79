"""Print bench/results.json as a Markdown table (the table the docs' benchmarks page renders at build time).

    .venv/bin/python scripts/bench_table.py [--prefix "NIH boxes"]

``--prefix`` keeps the figures whose names start with it.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchlib import RESULTS, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", default="", help="only the figures whose names start with this")
    args = parser.parse_args(argv)
    entries = [e for e in json.loads(RESULTS.read_text()) if e["name"].startswith(args.prefix)]
    print(table(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
