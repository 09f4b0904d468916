"""The HTML report: built from a real evaluation + backtest of the demo world, self-contained, renders."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from llmhyper_feast import jobs
from llmhyper_feast.cli import cli as group
from llmhyper_feast.config import load_settings
from llmhyper_feast.errors import DataError
from llmhyper_feast.evaluation.report import write_report
from llmhyper_feast.store import feast_adapter as fa

pytestmark = pytest.mark.integration

PNG = re.compile(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
EXTERNAL = re.compile(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', re.IGNORECASE)


@pytest.fixture(scope="module")
def evaluated_repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the demo repo (like ``demo_copy``) with evaluation.json and backtest.json written."""
    repo = tmp_path_factory.mktemp("report") / "repo"
    shutil.copytree(demo_repo, repo, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "data" / "registry.db").unlink()
    fa.apply_repo(repo)
    settings = load_settings(repo).with_overrides(**{"llm.name": "none"})
    jobs.evaluate(repo, settings, n_boot=100, progress=False)
    jobs.run_backtest(repo, settings, sample=8, progress=False)
    return repo


def _pngs(page: str) -> list[Image.Image]:
    images = []
    for data in PNG.findall(page):
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        img.load()  # decodes the whole stream, not just the header
        images.append(img)
    return images


def test_report_is_self_contained_and_complete(evaluated_repo: Path) -> None:
    out = write_report(evaluated_repo)
    assert out == evaluated_repo / "data" / "report.html"
    page = out.read_text(encoding="utf-8")
    assert not EXTERNAL.search(page)
    assert "http://" not in page and "https://" not in page
    ev = json.loads((evaluated_repo / "data" / "evaluation.json").read_text())
    for row in ev["rows"]:
        assert f"<td>{row['model']}</td>" in page
    assert ev["feature_hash"] in page and ev["llm_model"] in page
    # metrics, calibration, heatmap, backtest, latency
    assert page.count("<img ") == 5
    images = _pngs(page)
    assert len(images) == 5
    for img in images:
        assert img.format == "PNG" and img.width > 200 and img.height > 150
        assert len(img.convert("L").getcolors(maxcolors=1 << 16) or range(2)) > 1  # not a blank canvas
    assert "true weights (demo world)" in page  # demo truth found and shown next to the kNN prior
    assert "knn_prior" in page and "Backtest on warm ads" in page


def test_report_without_backtest_or_truth_uses_lr_warm(evaluated_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    shutil.copy(evaluated_repo / "data" / "evaluation.json", repo / "data" / "evaluation.json")
    out = write_report(repo, tmp_path / "nested" / "r.html")  # the missing folder is created
    page = out.read_text(encoding="utf-8")
    assert out == tmp_path / "nested" / "r.html"
    assert len(_pngs(page)) == 4
    assert "Backtest on warm ads" not in page
    assert "lr_warm (trained on clicks)" in page and "true weights" not in page


def test_report_escapes_strings(evaluated_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    ev = json.loads((evaluated_repo / "data" / "evaluation.json").read_text())
    ev["llm_model"] = "<script>alert(1)</script>"
    ev["rows"][0]["model"] = "a&b<i>"
    (repo / "data" / "evaluation.json").write_text(json.dumps(ev))
    page = write_report(repo).read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<i>" not in page and "a&amp;b&lt;i&gt;" in page


def test_missing_evaluation_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"llmhyper evaluate"):
        write_report(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "evaluation.json").write_text('{"rows": []}')
    with pytest.raises(DataError, match=r"no 'rows'.*llmhyper evaluate"):
        write_report(tmp_path)


def test_cli_report_prints_the_path(evaluated_repo: Path, tmp_path: Path) -> None:
    target = tmp_path / "cli.html"
    result = CliRunner().invoke(group, ["report", "--repo", str(evaluated_repo), "--out", str(target)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(target) and target.stat().st_size > 0
    missing = CliRunner().invoke(group, ["report", "--repo", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and isinstance(missing.exception, DataError)


def _chromium() -> str | None:
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium")


@pytest.mark.browser
def test_report_renders_in_headless_chromium(evaluated_repo: Path, tmp_path: Path) -> None:
    binary = _chromium()
    if binary is None:
        pytest.skip("chromium not found at /usr/bin/chromium or on PATH; install it with `make system-deps`")
    report = write_report(evaluated_repo, tmp_path / "report.html")
    shot = tmp_path / "shot.png"
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        report.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    assert shot.stat().st_size > 20_000
    img = Image.open(shot).convert("RGB")
    lo, hi = zip(*img.getextrema())
    assert any(h > low for low, h in zip(lo, hi)), "the screenshot is a single colour"


@pytest.mark.slow  # a fresh feast apply plus a robustness run: ~1 minute
def test_report_shows_the_robustness_figures_when_a_check_ran(evaluated_repo: Path, tmp_path: Path) -> None:
    from llmhyper_feast.jobs.robustness import robustness

    repo = tmp_path / "repo"
    shutil.copytree(evaluated_repo, repo, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "data" / "registry.db").unlink()
    fa.apply_repo(repo)
    assert "Counterfactual robustness" not in write_report(repo).read_text(encoding="utf-8")
    result = robustness(repo, load_settings(repo).with_overrides(**{"llm.name": "none"}), progress=False)
    page = write_report(repo).read_text(encoding="utf-8")
    assert "<h2>Counterfactual robustness</h2>" in page
    for variant, s in result["by_variant"].items():
        assert f"<tr><td>{variant}</td><td>{s['n']}</td><td>{s['correct']}</td>" in page


def test_report_shows_the_user_priors_recall_when_evaluated(evaluated_repo: Path, tmp_path: Path) -> None:
    from llmhyper_feast.jobs.priors import evaluate_user_priors
    from tests.support.repos import clone_repo

    repo = clone_repo(evaluated_repo, tmp_path / "repo")
    assert "User priors" not in write_report(repo).read_text(encoding="utf-8")
    settings = load_settings(repo).with_overrides(
        **{"llm.name": "none", "user_priors.eval_users": 30, "user_priors.bootstrap": 50}
    )
    result = evaluate_user_priors(repo, settings, progress=False)
    page = write_report(repo).read_text(encoding="utf-8")
    assert "<h2>User priors: next advertiser</h2>" in page
    for method, m in result["methods"].items():
        r1 = m["recall@1"]
        assert f"<tr><td>{method}</td><td>{r1['mean']:.3f} [{r1['lo']:.3f}, {r1['hi']:.3f}]</td>" in page
    assert f"{result['users']} held-out users" in page and "No LLM row" in page
