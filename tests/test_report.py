"""`harness report` on a tiny evaluated zoo: every generated statement checked against the
result.json figures it claims to summarise (recomputed here with plain dictionaries)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness import config
from harness.cli.main import main

ARGS = [
    "--quick", "-t", "mortality_in_hospital", "-t", "phenotype", "--encoder", "test_tiny",
    "--max-epochs", "2", "--trusted",
]  # fmt: skip
ZOO = ("ehr_lstm", "cxr_probe", "late_fusion", "mmtm")
FUSION = ("late_fusion", "mmtm")


@pytest.fixture(scope="module")
def reported(tiny_pipeline_copy):
    cache = tiny_pipeline_copy
    for name in ZOO:
        assert main(["evaluate", f"submissions/{name}", *ARGS]) == 0
    assert main(["report"]) == 0
    return cache


def _result(cache: Path, name: str) -> dict:
    path = cache / "results" / config.DEFAULT_DATASET / name / "result.json"
    return json.loads(path.read_text())


def _verdict(d: dict) -> str:
    if d["ci_low"] > 0:
        return "better"
    return "worse" if d["ci_high"] < 0 else "tied"


@pytest.mark.slow
def test_report_states_what_the_results_hold(reported):
    cache = reported
    md = (cache / "leaderboard" / "report.md").read_text()
    html = (cache / "leaderboard" / "report.html").read_text()
    for question in ("1. When does fusion", "2. How do fusion", "3. How robust", "4. Do fusion"):
        assert question in md and question in html
    results = {n: _result(cache, n) for n in ZOO}
    for task in ("mortality_in_hospital", "phenotype"):
        for cohort in ("base", "matched"):
            blocks = {n: r["tasks"][task][cohort] for n, r in results.items()}
            best = blocks["late_fusion"]["references"]["best_unimodal"]
            metric = blocks["late_fusion"]["main_metric"]
            verdicts = {n: _verdict(blocks[n]["paired_deltas"][best][metric]) for n in FUSION}
            better = sum(v == "better" for v in verdicts.values())
            worse = sum(v == "worse" for v in verdicts.values())
            sentence = (
                f"**{task} · {cohort}** ({metric}): against the best unimodal reference `{best}`"
            )
            assert sentence in md
            line = next(ln for ln in md.splitlines() if ln.startswith(sentence))
            assert f"{better} of 2 fusion entries are significantly better" in line
            assert f", {worse} significantly worse" in line
            if better == 0:
                assert "the data do not show a benefit of fusion" in line
            # robustness: with every image removed, against the EHR-only reference
            ehr = blocks["late_fusion"]["references"]["ehr_only"]
            last = {
                n: _verdict({k: v[-1] for k, v in blocks[n]["robustness"]["cxr_missing_mcar"][
                    "versus"][ehr].items()})
                for n in FUSION
            }  # fmt: skip
            head = f"**{task} · {cohort}** ({metric}): with every image removed, "
            line = next(ln for ln in md.splitlines() if ln.startswith(head))
            n_better = sum(v == "better" for v in last.values())
            assert f"{n_better} of 2 fusion entries remain significantly better" in line
            # reliance: the dominant modality as result.json says
            dominant = [blocks[n]["reliance"]["dominant"] for n in FUSION]
            line = next(
                ln
                for ln in md.splitlines()
                if ln.startswith(f"Modality reliance on {task} · {cohort}")
            )
            assert f"{dominant.count('ehr')} of 2 fusion entries are EHR-dominant" in line
    # complementarity of a phenotype label: the smaller of the two references' AUROCs - 0.5
    per_ehr = results["ehr_lstm"]["tasks"]["phenotype"]["base"]["per_label"]
    per_cxr = results["cxr_probe"]["tasks"]["phenotype"]["base"]["per_label"]
    label = sorted(per_ehr)[0]
    comp = min(per_ehr[label]["auroc"]["value"], per_cxr[label]["auroc"]["value"]) - 0.5
    table = md[md.index("phenotype · base: complementarity per label") :]
    row = next(ln for ln in table.splitlines() if ln.startswith(f"| {label} |"))
    assert f"| {comp:.3f} |" in row
    # the ranking answer names the leader the leaderboard ranks first
    board = json.loads((cache / "leaderboard" / "leaderboard.json").read_text())
    ranking = next(
        t for t in board["rankings"] if (t["task"], t["cohort"]) == ("phenotype", "matched")
    )
    leader = ranking["rows"][0]
    assert f"**phenotype · matched** ({ranking['metric']}): `{leader['name']}` leads" in md
    tied = [r["name"] for r in ranking["rows"][1:] if r["tied_with_leader"]]
    if tied:
        assert f"{len(tied)} of {len(ranking['rows']) - 1} other entries are not" in md
    # the HTML carries the same statements and a chart with a text alternative
    assert re.search(r"<figure id='[^']+'><svg", html) and "<figcaption>" in html
    assert re.search(r"<b>phenotype · base</b> \(auroc_macro\): against", html)


@pytest.mark.slow
def test_report_says_what_it_lacks(reported, tmp_path, monkeypatch, capsys):
    """A dataset with only the EHR-only reference gets no answers, and is told why."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(reported, cache)
    results = cache / "results" / config.DEFAULT_DATASET
    for name in ("cxr_probe", "late_fusion", "mmtm"):
        shutil.rmtree(results / name)
    monkeypatch.setenv("HARNESS_CACHE", str(cache))
    assert main(["report", "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "No answers: the report needs the CXR-only reference (cxr_probe)" in md
    assert "a fusion entry" in md
    assert "no answers; the report needs" in capsys.readouterr().out
    assert main(["report", "--dataset", "nope"]) == 2
    assert "no evaluated entry of dataset 'nope'" in " ".join(capsys.readouterr().err.split())


# --------------------------------------------------------------------------------------------
# The leaderboard site (leaderboard.html), written by the same run


def _site(cache: Path) -> str:
    return (cache / "leaderboard" / "leaderboard.html").read_text()


def _ids(html: str) -> list[str]:
    return re.findall(r"""\bid=['"]([^'"]+)['"]""", html)


@pytest.mark.slow
def test_site_structure_and_numbers(reported):
    cache = reported
    html = _site(cache)
    ids = _ids(html)
    assert len(ids) == len(set(ids)), "duplicate ids (charts' clip paths collide)"
    targets = re.findall(r"href='#([^']+)'", html)
    assert targets and set(targets) <= set(ids)
    # the answers come before the boards, the report's first answer among them
    assert html.index("id='answers'") < html.index("id='boards'")
    assert "1. When does fusion" in html[: html.index("id='boards'")]
    # every chart is an accessible image with a title, a caption and its numbers as a table
    svgs = re.findall(r"<svg\b[^>]*>", html)
    assert svgs and all('role="img"' in s and "aria-labelledby" in s for s in svgs)
    assert html.count("<figure") == len(svgs) == html.count("<details>")
    assert html.count("<figcaption>") == len(svgs)
    # offline: nothing is fetched
    offline = html.replace('xmlns="http://www.w3.org/2000/svg"', "").replace(
        'xmlns:xlink="http://www.w3.org/1999/xlink"', ""
    )
    assert "http://" not in offline and "https://" not in offline and " src=" not in html
    # a robustness chart's table holds result.json's values and CIs
    curve = _result(cache, "late_fusion")["tasks"]["phenotype"]["base"]["robustness"]
    curve = curve["cxr_missing_mcar"]
    board = next(i for i in ids if i.endswith("phenotype-base"))
    figure = html[html.index(f"id='{board}-robustness-cxr-missing-mcar'") :]
    numbers = figure[figure.index("<details>") : figure.index("</figure>")]
    start = numbers.index("<td>late_fusion</td>")
    row = numbers[start : numbers.index("</tr>", start)]
    for j in (0, len(curve["values"]) - 1):
        v, lo, hi = curve["values"][j], curve["values_ci_low"][j], curve["values_ci_high"][j]
        assert f"{v:.3f} [{lo:.3f}, {hi:.3f}]" in row
    # the per-label gain chart carries each fusion entry's deltas with their q-values
    gain = _result(cache, "mmtm")["tasks"]["phenotype"]["base"]["fusion_gain_unimodal"]
    label, d = next((k, v) for k, v in gain["labels"].items() if v.get("delta") is not None)
    figure = html[html.index(f"id='{board}-gain'") :]
    figure = figure[: figure.index("</figure>")]
    assert f"<td>mmtm</td><td>{label}</td><td>{d['delta']:+.3f} [" in figure
    assert f"q={d['q_value']:.3f}" in figure
    # rendering is deterministic
    from harness.leaderboard.site import render_html

    doc = json.loads((cache / "leaderboard" / "leaderboard.json").read_text())
    assert render_html(doc) == render_html(doc)


def _column(table, i: int) -> list[str]:
    from selenium.webdriver.common.by import By

    return [
        row.find_elements(By.CSS_SELECTOR, "td, th")[i].text
        for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    ]


@pytest.mark.slow
def test_site_in_chromium(reported, tmp_path):
    """The page in a real browser: no console error, the navigation scrolls to its board, the
    ranking sorts by value and by name, and a screenshot is produced."""
    import numpy as np
    from browser import chromium, console_errors
    from PIL import Image
    from selenium.webdriver.common.by import By

    cache = reported
    page = cache / "leaderboard" / "leaderboard.html"
    values = {
        n: _result(cache, n)["tasks"]["phenotype"]["matched"]["metrics"]["auroc_macro"]["value"]
        for n in ZOO
    }
    with chromium(1400, 1000) as driver:
        driver.get(page.as_uri())
        assert console_errors(driver) == []
        link = driver.find_element(By.CSS_SELECTOR, "nav a[href$='phenotype-matched']")
        target = link.get_attribute("href").rsplit("#", 1)[1]
        link.click()
        where, top = driver.execute_script(
            "return [location.hash, document.getElementById(arguments[0])"
            ".getBoundingClientRect().top]",
            target,
        )
        assert where == f"#{target}" and abs(top) < 2
        table = driver.find_element(By.CSS_SELECTOR, f"#{target} table.sortable")
        rank_order = [float(v) for v in _column(table, 4)]
        assert rank_order == sorted((float(f"{v:.3f}") for v in values.values()), reverse=True)
        buttons = table.find_elements(By.CSS_SELECTOR, "thead th button")
        buttons[4].click()
        assert [float(v) for v in _column(table, 4)] == sorted(rank_order)
        assert table.find_elements(By.CSS_SELECTOR, "thead th")[4].get_attribute("aria-sort") == (
            "ascending"
        )
        buttons[4].click()
        assert [float(v) for v in _column(table, 4)] == sorted(rank_order, reverse=True)
        buttons[1].click()
        assert _column(table, 1) == sorted(ZOO)
        assert console_errors(driver) == []
        shot = tmp_path / "site.png"
        driver.save_screenshot(str(shot))
    image = np.asarray(Image.open(shot).convert("L"), dtype=float)
    # the viewport (the window less its frame), and not a blank page
    assert image.shape[1] == 1400 and image.shape[0] > 500 and image.std() > 10
