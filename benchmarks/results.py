"""Measured results as committed files, and the documentation's tables spliced from them.

A benchmark run with `--results NAME` writes `benchmarks/results/NAME.json` (its arguments and every
number) and `benchmarks/results/NAME.md` (the command that produced it and its table). The
documentation never types a measured number: `docs/results.md` holds markers

    <!-- result: NAME -->
    ...
    <!-- /result -->

and `python -m benchmarks.results` replaces what lies between them with `NAME.md`.
`python -m benchmarks.results --check` exits 1 when a marked block differs from its file (the suite runs
it), and both refuse a table outside the markers, so a table in the docs is always the one a script wrote.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
DOC = os.path.join(ROOT, "docs", "results.md")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
BLOCK = re.compile(r"(<!-- result: (?P<name>[^ ]+) -->\n)(?P<body>.*?)(<!-- /result -->)", re.S)
# A Markdown table's header separator, `|---|---:|` (a table has one whatever its rows).
TABLE_RULE = re.compile(r"^\s*\|\s*:?-{3,}:?\s*\|", re.M)


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise ValueError(f"--results takes a plain file name (letters, digits, _ . -). Received: --results {name!r}")
    return name


def save(name: str, table_markdown: str, payload: dict, module: str, argv: Sequence[str],
         results_dir: str = RESULTS_DIR) -> str:
    """Writes `NAME.json` (payload) and `NAME.md` (command + table); returns the Markdown path."""
    check_name(name)
    os.makedirs(results_dir, exist_ok=True)
    command = f"python -m {module} " + shlex.join(list(argv))
    with open(os.path.join(results_dir, name + ".json"), "w", encoding="utf-8") as f:
        json.dump({"command": command, **payload}, f, indent=2)
        f.write("\n")
    path = os.path.join(results_dir, name + ".md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{table_markdown.rstrip()}\n\n```bash\n{command}\n```\n")
    return path


def splice(text: str, results_dir: str = RESULTS_DIR) -> str:
    """`text` with every marked block replaced by its result file (FileNotFoundError naming a missing one)."""
    def block(match):
        path = os.path.join(results_dir, match.group("name") + ".md")
        if not os.path.exists(path):
            raise FileNotFoundError(f"docs marker names {match.group('name')!r}, but {path} does not exist")
        with open(path, encoding="utf-8") as f:
            return match.group(1) + f.read() + match.group(4)

    return BLOCK.sub(block, text)


def tables_outside_markers(text: str) -> list:
    """Line numbers (from 1) of the tables of `text` that no result block (`BLOCK`) encloses: typed by hand."""
    blocks = [m.span() for m in BLOCK.finditer(text)]
    return [text.count("\n", 0, rule.start()) + 1 for rule in TABLE_RULE.finditer(text)
            if not any(start <= rule.start() < end for start, end in blocks)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Splice benchmarks/results/*.md into docs/results.md.")
    parser.add_argument("--check", action="store_true",
                        help="only check; exit 1 when the docs are out of date or hold a table outside the markers")
    parser.add_argument("--doc", default=DOC)
    args = parser.parse_args(argv)
    with open(args.doc, encoding="utf-8") as f:
        text = f.read()
    typed = tables_outside_markers(text)
    if typed:
        print(f"benchmarks.results: {args.doc}:{typed[0]}: a table outside <!-- result: NAME --> markers; "
              "write it with a benchmark's --results NAME", file=sys.stderr)
        return 1
    try:
        new = splice(text)
    except FileNotFoundError as e:
        print(f"benchmarks.results: error: {e}", file=sys.stderr)
        return 1
    if args.check:
        if new != text:
            print(f"benchmarks.results: {args.doc} differs from benchmarks/results/: run python -m benchmarks.results",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        with open(args.doc, "w", encoding="utf-8") as f:
            f.write(new)
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
