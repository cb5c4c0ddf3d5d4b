"""The reproduction pages are data: docs/reproductions/*.md is what scripts/reproduce/render.py makes of the
committed CSVs, and a report's compare_paper.csv merges into them."""

import importlib.util
import shutil

import pandas as pd
import pytest

from clrun.report import format_mean_std, welch_against_paper
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("render", REPO / "scripts" / "reproduce" / "render.py")
render = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render)


@pytest.mark.parametrize("page", sorted(str(p.relative_to(render.PAGES)) for p in render.PAGES.rglob("*.md")))
def test_committed_page_is_byte_identical_to_its_rendering_from_the_committed_csvs(page):
    assert (render.DOCS / page).read_text() == render.render(page), (
        f"docs/{page} is stale: run python scripts/reproduce/render.py")


def test_check_mode_fails_on_a_hand_edited_page(tmp_path, monkeypatch, capsys):
    docs = tmp_path / "docs"
    shutil.copytree(render.DOCS, docs)
    monkeypatch.setattr(render, "DOCS", docs)
    monkeypatch.setattr(render, "ROOT", tmp_path)
    assert render.main(["--check"]) == 0
    page = docs / "reproductions" / "der2020.md"
    page.write_text(page.read_text().replace("| 40.70 ± 2.33 (std) |", "| 40.70 ± 2.00 (std) |"))
    assert render.main(["--check"]) == 1 and "stale: docs/reproductions/der2020.md" in capsys.readouterr().err


def test_the_page_computes_the_comparison_from_the_csv_with_the_reports_test():
    cells = render.load("der2020").set_index(["protocol", "method", "buffer"])
    naive = cells.loc[("der2020/perm_mnist", "naive", "")]
    p = welch_against_paper(naive.clrun_ACC - naive.paper_ACC, 2.33, "std", 10, naive.clrun_std, naive.n)[2]
    assert naive.p_value == pytest.approx(p) and naive.within == (abs(naive.clrun_ACC - 40.70) <= 2.33)
    # compared as printed: +0.30 against a 0.30 std is within, whatever the float subtraction gives
    assert cells.loc[("der2020/seq_mnist", "si", "")].within == True  # noqa: E712
    # a SEM is the standard error itself; "within" turns it into a std with the paper's runs
    vdv = render.load("vandeven2019").set_index(["protocol", "method", "scenario", "variant"])
    cell = vdv.loc[("vandeven2019/split_mnist", "naive", "domain_il", "benchmark.shuffle_rng=torch")]
    assert cell.within == (abs(cell.clrun_ACC - 59.21) <= 2.04 * 20**0.5) and cell.seeds == "0-2"
    # the same cell at the authors' seeds and pairs, the preset's own, is a row of its own
    assert vdv.loc[("vandeven2019/split_mnist", "naive", "domain_il", "")].seeds == "1-20"
    # every cell has the seeds, devices and clrun version it was measured with
    for paper in ("der2020", "vandeven2019", "agem2019"):
        raw = pd.read_csv(render.RESULTS / "papers" / paper / "compare_paper.csv", dtype=str, keep_default_na=False)
        assert (raw.seeds != "").all() and (raw.device != "").all() and (raw.clrun_version != "").all()


def test_import_merges_a_reports_table_replacing_the_cells_it_measured_again(tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(render.RESULTS, results)
    monkeypatch.setattr(render, "RESULTS", results)
    before = render.load("agem2019")
    report = tmp_path / "compare_paper.csv"
    pd.DataFrame([{"protocol": "agem2019/perm_mnist", "method": "naive", "scenario": "domain_il", "buffer": "",
                   "paper_ACC": 47.55, "paper_spread": "2.37 (std)", "paper_runs": 5, "clrun_ACC": 48.0,
                   "clrun_std": 1.0, "n": 10, "seeds": "0-9", "p_value": 0.5, "device": "cpu",
                   "minutes_by_device": "cpu: 2.0", "clrun_version": "0.2.0"}]).to_csv(report, index=False)
    render.import_table(report, "")
    after = render.load("agem2019")
    assert len(after) == len(before)
    naive = after.set_index("method").loc["naive"]
    assert (naive.clrun_ACC, naive.n, naive.seeds, naive.clrun_version) == (48.0, 10, "0-9", "0.2.0")
    # a variant of the settings is a cell of its own, which the page must then show
    render.import_table(report, "method.lam=1")
    assert len(render.load("agem2019")) == len(before) + 1
    with pytest.raises(SystemExit, match="agem2019: cells in no table"):
        render.render_all()


def test_a_one_seed_cell_shows_its_mean_and_no_std():
    """A cell run at one seed (a long protocol on a CPU) has no spread over seeds: no '± nan' in the tables."""
    assert format_mean_std(92.593, float("nan"), 1) == "92.59 (1)"
    assert format_mean_std(91.8237, 0.47191, 3) == "91.82 ± 0.47 (3)"
