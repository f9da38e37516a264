"""meshlearn report: one self-contained HTML page, checked from its text and in a real browser."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import tomli_w

from conftest import small_config
from meshlearn.cli import main
from meshlearn.report import find_runs, write_report
from meshlearn.runner import run_experiment
from meshlearn.topology import build, mixing_matrix, spectral_gap

# Final mean accuracies of the hand-made seeds: group "slow" 0.80/0.82/0.84 → 82.00 ± t(0.975, 2)·0.02/√3
# = 82.00 ± 4.97 %; group "fast" 0.90/0.90 (two equal seeds) → 90.00 ± 0.00 %.
FINALS = {"slow": [0.80, 0.82, 0.84], "fast": [0.90, 0.90]}


def hand_made_run(root: Path, name: str, seed: int, final: float, lr: float, degree: int) -> Path:
    """A run folder as the runner writes it, with a curve rising to ``final``."""
    out = root / name / f"seed={seed}"
    out.mkdir(parents=True)
    records = [{"round": r, "wall_time_s": 0.5 * r, "sim_time_s": None, "bytes_sent_per_node": 1e6 * r,
                "test_acc_mean": final * r / 4, "test_acc_min": final * r / 4 - 0.1,
                "test_acc_max": final * r / 4 + 0.05, "test_loss_mean": 2.0 - 0.3 * r,
                "avg_model_acc": final + 0.01} for r in range(5)]
    (out / "rounds.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in records))
    cfg = small_config(name=name, seed=seed, training__lr=lr, topology__degree=degree, rounds=4)
    (out / "config.toml").write_text(tomli_w.dumps(cfg.to_toml_dict()))
    (out / "summary.json").write_text(json.dumps({
        "name": name, "status": "completed", "engine": "sim", "final": records[-1], "time_per_round_s": 0.5,
        "setup_time_s": 1.0, "peak_rss_bytes": 300 * 2 ** 20, "bytes_sent_per_node": 4e6}))
    return out


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A sweep-like folder: two groups of seeds that differ in lr and degree, and one real run."""
    root = tmp_path / "sweep"
    for seed, final in enumerate(FINALS["slow"], start=1):
        hand_made_run(root, "slow", seed, final, lr=0.01, degree=3)
    for seed, final in enumerate(FINALS["fast"], start=1):
        hand_made_run(root, "fast", seed, final, lr=0.1, degree=4)
    run_experiment(small_config(name="real", rounds=2), root / "real")
    return root


class Elements(HTMLParser):
    """Tags with their attributes, and each table's rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.tables: list[list[list[str]]] = []
        self.in_row = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
            self.in_row = True

    def handle_endtag(self, tag):
        self.in_row = self.in_row and tag != "tr"

    def handle_data(self, data):
        if self.in_row and data.strip():
            self.tables[-1][-1].append(data.strip())

    def table(self, k: int) -> dict[str, list[str]]:
        """Table ``k``'s rows by their first cell."""
        return {row[0]: row for row in self.tables[k] if row}


def test_report_holds_curves_intervals_configs_topologies_and_needs_nothing_else(runs, tmp_path):
    out = write_report([runs], tmp_path / "report.html", title="two groups")
    page = Elements()
    page.feed(out.read_text())
    tags = [t for t, _ in page.tags]
    # curves: accuracy and loss, each with the seed interval and the node range; 3 topologies
    assert tags.count("svg") == 4 + 3 and tags.count("figure") == 7
    # self-contained: no script, style sheet, image or frame from anywhere
    assert not {"script", "link", "img", "iframe"} & set(tags)
    assert not [a for _, a in page.tags if "src" in a or ("href" in a and not a["href"].startswith("#"))]
    finals, configs, system = page.table(0), page.table(1), page.table(-1)
    assert finals["slow (3 seeds)"][1:5] == ["3", "3 completed", "4", "82.00 ± 4.97"]
    assert finals["fast (2 seeds)"][4] == "90.00 ± 0.00" and finals["real"][1:4] == ["1", "1 completed", "2"]
    # groups in the order of their folders: fast, real, slow
    assert configs["training.lr"][1:] == ["0.1", "0.05", "0.01"] and configs["seed"][1:] == ["1, 2", "3", "1, 2, 3"]
    differing = [a for t, a in page.tags if t == "tr" and a.get("class") == "differs"]
    assert len(differing) == 4   # name, rounds, training.lr and topology.options.degree
    assert system["slow (3 seeds)"][1:4] == ["sim", "0.500 ± 0.000", "1.0 ± 0.0"]
    text = out.read_text()
    gap = spectral_gap(mixing_matrix(build("regular", 8, seed=1, degree=3)))   # the first seed's graph
    assert f"slow (3 seeds): regular, 8 nodes, 12 edges, degree 3–3, spectral gap {gap:.4f}" in text
    assert "fast (2 seeds): regular, 8 nodes, 16 edges, degree 4–4" in text


def test_report_in_parts_heads_each_with_its_own_sections(runs, tmp_path):
    out = write_report({"Slow learners": [runs / "slow"], "Both": [runs / "slow", runs / "fast"]},
                       tmp_path / "parts.html", title="parts")
    page = Elements()
    page.feed(out.read_text())
    text = out.read_text()
    assert [a for t, a in page.tags if t == "h2"] == [{}, {}] and "<h2>Slow learners</h2>" in text
    assert text.count("<h3>Final figures</h3>") == 2 and text.index("<h2>Both</h2>") < text.rindex("<h3>Final")
    assert "3 runs in 1 groups" in text and "5 runs in 2 groups" in text
    assert page.table(0)["slow (3 seeds)"][4] == "82.00 ± 4.97"


def test_report_imports_nothing_a_results_folder_names(runs, tmp_path):
    """A run folder is data: its config's plug-ins are neither imported to group runs nor to
    draw the topology, and graph files are not read."""
    evil = runs / "fast" / "seed=1"
    (evil / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('x')\ndef graph(n): pass\n")
    text = (evil / "config.toml").read_text().replace('name = "mlp"', 'name = "evil.py:Net"')
    (evil / "config.toml").write_text(text.replace('kind = "regular"', 'kind = "evil.py:graph"'))
    page = write_report([runs / "fast"], tmp_path / "evil.html").read_text()
    assert not (tmp_path / "ran").exists()
    assert "evil.py:graph not drawn (a plug-in is not imported from a results folder)" in page


def test_report_cli_finds_runs_below_folders_and_refuses_what_is_not_a_run(runs, tmp_path, capsys):
    assert len(find_runs([runs])) == 6 and find_runs([runs / "real", runs / "real"]) == [runs / "real"]
    assert main(["report", str(runs / "real"), "-o", str(tmp_path / "one.html")]) == 0
    assert "1 runs in 1 groups" in (tmp_path / "one.html").read_text()
    assert main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "x.html")]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "-o", str(tmp_path / "x.html")]) == 2
    assert "no run directory below it" in capsys.readouterr().err and not (tmp_path / "x.html").exists()


def _chromium():
    """A headless Chromium driven by Selenium with Debian's chromedriver, or a skip."""
    webdriver = pytest.importorskip("selenium.webdriver")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("Chromium or chromedriver is not installed (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


@pytest.mark.slow
def test_report_opens_in_headless_chromium_without_errors_and_shows_its_figures(runs, tmp_path):
    out = write_report([runs], tmp_path / "report.html", title="in a browser")
    browser = _chromium()
    try:
        browser.get(out.resolve().as_uri())
        assert browser.title == "in a browser"
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
        # every figure is drawn at a visible size, and the page loaded nothing besides itself
        sizes = browser.execute_script(
            "return [...document.querySelectorAll('figure svg')].map(s => {"
            "const r = s.getBoundingClientRect(); return [r.width, r.height]; });")
        assert len(sizes) == 7 and all(w > 200 and h > 150 for w, h in sizes)
        assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
        cells = browser.execute_script("return [...document.querySelectorAll('td')].map(td => td.innerText)")
        assert "82.00 ± 4.97" in cells
    finally:
        browser.quit()
