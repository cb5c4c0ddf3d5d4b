"""The docs pages that show measurements (docs/reproductions/*.md, docs/results.md, docs/diagnostics.md,
docs/performance.md) rendered from the committed CSVs under results/ and each page's prose, which lives at the
same path under scripts/reproduce/pages/.

    python scripts/reproduce/render.py            # rewrite the pages
    python scripts/reproduce/render.py --check    # exit 1 if a committed page differs from its rendering
    python scripts/reproduce/render.py --import SWEEP/compare_paper.csv [--variant TEXT]

``--import`` merges the rows of a ``clrun-report SWEEP --compare-paper`` table into the committed tables
(results/papers/<paper>/compare_paper.csv; a cell measured again replaces its row). In a page's prose,
``{{table PROTOCOL}}`` is that protocol's paper-vs-clrun table and ``{{table PROTOCOL VARIANT}}`` the rows
measured with a variant of its settings (for example ``benchmark.shuffle_rng=numpy``); ``{{summary PAPER}}``
counts a paper's cells; ``{{csv DIR/NAME.csv}}`` is any committed measurement under results/ as a table.
Difference, "within", Welch's p and its Holm adjustment (over a paper's cells) are computed here, with
clrun-report's own functions.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from pathlib import Path

import pandas as pd

from clrun.report import format_differs, format_mean_std, format_p, holm, standard_deviation, welch_against_paper

ROOT = Path(__file__).resolve().parents[2]
RESULTS, DOCS = ROOT / "results", ROOT / "docs"
PAGES = Path(__file__).resolve().parent / "pages"  # each page's prose, at its path under docs/
KEY = ["protocol", "method", "scenario", "buffer", "variant"]
PLACEHOLDER = re.compile(r"\{\{(table|csv|summary)([^}]*)\}\}")


def load(paper: str) -> pd.DataFrame:
    """A paper's committed cells, with the comparison worked out: diff, within, Welch's p and Holm's p."""
    cells = pd.read_csv(RESULTS / "papers" / paper / "compare_paper.csv", keep_default_na=False, na_values=[""],
                        dtype={"buffer": str, "variant": str, "seeds": str})
    cells[["buffer", "variant"]] = cells[["buffer", "variant"]].fillna("")
    spread = cells.paper_spread.fillna("").str.extract(r"([\d.]+) \((std|sem)\)")
    cells["spread"], cells["kind"] = pd.to_numeric(spread[0]), spread[1].fillna("std")
    cells["diff"] = cells.clrun_ACC - cells.paper_ACC
    paper_std = [standard_deviation(s, k, r) for s, k, r in zip(cells.spread, cells.kind, cells.paper_runs)]
    # compared as printed (two decimals): 19.57 - 19.27 is not more than a 0.30 std
    cells["within"] = [None if math.isnan(s) else round(abs(d), 2) <= round(s, 2)
                       for d, s in zip(cells["diff"], paper_std)]
    cells["p_value"] = [welch_against_paper(d, None if pd.isna(s) else s, k, r, c, n)[2]
                        for d, s, k, r, c, n in zip(cells["diff"], cells.spread, cells.kind, cells.paper_runs,
                                                    cells.clrun_std, cells.n)]
    cells["p_holm"] = holm(cells.p_value)
    return cells


def _minutes(text: str) -> str:
    """``cpu: 3.3; cuda:0 (NVIDIA H200): 2.2`` -> ``3.3 (CPU) / 2.2 (NVIDIA H200)``; one CPU number stays bare."""
    parts = [p.rsplit(": ", 1) for p in str(text).split("; ") if p]
    if len(parts) == 1 and parts[0][0] == "cpu":
        return parts[0][1]
    return " / ".join(f"{m} ({'CPU' if d == 'cpu' else d.split(' (', 1)[-1].rstrip(')')})" for d, m in parts)


def table(cells: pd.DataFrame) -> str:
    """The markdown of some cells of one page (the page's Holm adjustment already in them)."""
    forgetting = cells.paper_forgetting.notna().any()
    head = ["method", "scenario", "buffer", "paper", "clrun (mean ± std, n)", "seeds", "diff", "within",
            "p (Welch)", "differs (Holm 5%)", *(["forgetting: paper / clrun"] if forgetting else []), "min/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in cells.itertuples():
        paper = f"{r.paper_ACC:.2f} ± {r.paper_spread}" if isinstance(r.paper_spread, str) else \
            f"{r.paper_ACC:.2f} (no spread)"
        within = "–" if r.within is None else "yes" if r.within else "**no**"
        row = [r.method, r.scenario, r.buffer, paper, format_mean_std(r.clrun_ACC, r.clrun_std, r.n), r.seeds,
               f"{r.diff:+.2f}", within, format_p(r.p_value), format_differs(r.p_holm)]
        if forgetting:
            row.append("–" if pd.isna(r.paper_forgetting) else
                       f"{r.paper_forgetting:.2f} ± {r.paper_forgetting_spread:.3f} / "
                       f"{r.clrun_forgetting:.3f} ± {r.clrun_forgetting_std:.3f}")
        row.append(_minutes(r.minutes_by_device))
        lines.append("| " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines)


def summary(cells: pd.DataFrame) -> str:
    tested = cells.within.notna()
    within = int(cells.within.fillna(False).astype(bool).sum())
    differs = int((cells.p_holm < 0.05).sum())
    return (f"{len(cells)} cells: {within} within the paper's spread, {int(tested.sum()) - within} outside it"
            f"{'' if tested.all() else f', {int((~tested).sum())} without a published spread'}; {differs} "
            f"{'differs' if differs == 1 else 'differ'} from the paper's mean after the Holm adjustment")


def csv_table(name: str) -> str:
    """A committed side measurement (results/papers/PAPER/NAME.csv, its first row the header) as markdown."""
    with (RESULTS / name).open(newline="") as f:
        rows = list(csv.reader(f))
    return "\n".join(["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0]),
                      *("| " + " | ".join(row) + " |" for row in rows[1:])])


def papers() -> list[str]:
    return sorted(p.parent.name for p in (RESULTS / "papers").glob("*/compare_paper.csv"))


def render(page: str, shown: dict[str, set[int]] | None = None) -> str:
    """A page (its path under docs/): its prose with every placeholder replaced, a table keeping its
    placeholder's indentation. ``shown`` collects, per paper, the cells its tables showed."""
    shown = {} if shown is None else shown
    cells: dict[str, pd.DataFrame] = {}

    def fill(match: re.Match) -> str:
        if match[1] == "csv":
            return csv_table(match[2].strip())
        if match[1] == "summary":
            paper = match[2].strip()
            return summary(cells.setdefault(paper, load(paper)))
        protocol, _, variant = match[2].strip().partition(" ")
        paper = protocol.split("/")[0]
        frame = cells.setdefault(paper, load(paper))
        part = frame[(frame.protocol == protocol) & (frame.variant == variant.strip())]
        if part.empty:
            raise SystemExit(f"render.py: {page}: no cells for {match[0]}")
        shown.setdefault(paper, set()).update(part.index)
        return table(part)

    out = []
    for line in (PAGES / page).read_text().splitlines():
        indent = line[: len(line) - len(line.lstrip())]
        filled = PLACEHOLDER.sub(fill, line)
        out.append("\n".join(indent + part if i else part for i, part in enumerate(filled.split("\n"))))
    return "\n".join(out) + "\n"


def render_all() -> dict[str, str]:
    """Every page, by its path under docs/; every committed cell of every paper must appear in some table."""
    shown: dict[str, set[int]] = {}
    pages = {str(p.relative_to(PAGES)): "" for p in sorted(PAGES.rglob("*.md"))}
    for page in pages:
        pages[page] = render(page, shown)
    for paper in papers():
        cells = load(paper)
        missing = cells.index.difference(sorted(shown.get(paper, set())))
        if len(missing):
            raise SystemExit(f"render.py: {paper}: cells in no table: {cells.loc[missing, KEY].to_dict('records')}")
    return pages


def import_table(path: Path, variant: str) -> None:
    """Merge a clrun-report compare_paper.csv into the committed tables, one file per paper."""
    new = pd.read_csv(path, dtype={"buffer": str, "seeds": str}, keep_default_na=False, na_values=[""])
    new["buffer"] = new.buffer.fillna("").str.replace(r"\.0$", "", regex=True)
    new["variant"] = variant
    for paper, rows in new.groupby(new.protocol.str.split("/").str[0]):
        target = RESULTS / "papers" / paper / "compare_paper.csv"
        old = pd.read_csv(target, dtype=str, keep_default_na=False) if target.exists() else pd.DataFrame()
        columns = list(old.columns) if len(old.columns) else list(rows.columns)
        rows = rows.astype(str).replace("nan", "").reindex(columns=columns, fill_value="")
        merged = pd.concat([old, rows]).drop_duplicates(KEY, keep="last") if len(old) else rows
        target.parent.mkdir(parents=True, exist_ok=True)
        merged.to_csv(target, index=False)
        print(f"{target}: {len(rows)} cells from {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare the committed pages with their rendering")
    ap.add_argument("--import", dest="table", type=Path, help="a clrun-report --compare-paper table to merge")
    ap.add_argument("--variant", default="", help="with --import: the settings these runs changed")
    a = ap.parse_args(argv)
    if a.table:
        import_table(a.table, a.variant)
        return 0
    stale = []
    for name, text in render_all().items():
        page = DOCS / name
        if a.check:
            if not page.exists() or page.read_text() != text:
                stale.append(str(page.relative_to(ROOT)))
        else:
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python scripts/reproduce/render.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
