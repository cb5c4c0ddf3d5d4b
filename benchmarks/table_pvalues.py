"""Welch's t-test and its Holm adjustment for every cell of a paper-vs-clrun markdown table (the README's), from
the table's own printed numbers: the same functions `clrun-report --compare-paper` uses, for a table whose rows
were pooled or whose run directories are gone. The paper's run counts come from conf/protocol/NAME.yaml.

    python benchmarks/table_pvalues.py README.md            # prints the table with the two columns
    python benchmarks/table_pvalues.py README.md --write    # puts them into the file

The printed means and stds are rounded to two decimals, so a p-value here can differ from the report's on the
unrounded runs in its second digit."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pandas as pd
import yaml

from clrun.report import format_differs, format_p, holm, welch_against_paper

CONF = Path(__file__).resolve().parents[1] / "conf" / "protocol"
HEADER = "| protocol | method | scenario | buffer | paper | clrun (mean ± std, n) | diff | within |"
NEW = ["p (Welch)", "differs (Holm 5%)"]
PAPER = re.compile(r"([\d.]+) ± ([\d.]+) \((std|sem)\)")
CLRUN = re.compile(r"([\d.]+) ± ([\d.na]+) \((\d+)\)")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def add_columns(lines: list[str]) -> list[str]:
    """The table's lines (header, rule, rows) with the p-value and Holm columns after "within"."""
    header = _cells(lines[0])
    at = header.index("within") + 1
    present = header[at : at + len(NEW)] == NEW
    stats = []
    for line in lines[2:]:
        cells = _cells(line)
        paper, ours = PAPER.fullmatch(cells[4]), CLRUN.fullmatch(cells[5])
        if not (paper and ours):  # a mean published without a spread: no test
            stats.append(math.nan)
            continue
        runs = yaml.safe_load((CONF / f"{cells[0]}.yaml").read_text())["runs"]
        mean, std, n = float(ours[1]), float(ours[2]), int(ours[3])
        stats.append(welch_against_paper(mean - float(paper[1]), float(paper[2]), paper[3], runs, std, n)[2])
    p = pd.Series(stats)
    p_holm = holm(p)
    skip = len(NEW) if present else 0  # a second pass replaces the columns instead of adding them again
    header = header[:at] + NEW + header[at + skip :]
    out = [_row(header), "|" + "---|" * len(header)]
    for line, pv, ph in zip(lines[2:], p, p_holm):
        cells = _cells(line)
        new = [format_p(pv), format_differs(ph)]
        out.append(_row(cells[:at] + new + cells[at + skip :]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--write", action="store_true", help="replace the table in the file")
    a = ap.parse_args()
    text = a.file.read_text().splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith(HEADER))
    end = next((i for i in range(start, len(text)) if not text[i].startswith("|")), len(text))
    table = add_columns(text[start:end])
    if a.write:
        a.file.write_text("\n".join(text[:start] + table + text[end:]) + "\n")
        print(f"{a.file}: {len(table) - 2} rows")
    else:
        print("\n".join(table))


if __name__ == "__main__":
    main()
