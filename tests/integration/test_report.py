"""The HTML report: self-contained, every model present, plots decode, renders in Chromium."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from llmhyper_feast import pipeline
from llmhyper_feast.config import load_settings
from llmhyper_feast.errors import DataError
from llmhyper_feast.report import write_report

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report_path(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    from support.repos import clone_repo

    repo = clone_repo(demo_repo, tmp_path_factory.mktemp("report") / "repo")
    settings = load_settings(repo).with_overrides(llm={"name": "knn", "options": {}})
    rows = pipeline.evaluate(repo, settings, n_boot=100, progress=False)
    pipeline.run_backtest(repo, settings, sample=8, progress=False)
    return write_report(repo), rows


def test_report_is_self_contained_with_every_model(report_path) -> None:
    from PIL import Image

    path, rows = report_path
    html = path.read_text()
    assert not re.search(r'(src|href)="https?://', html)
    for row in rows:
        assert row["model"] in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    # metrics, calibration, heatmap, backtest, latency
    assert len(images) >= 5
    for data in images:
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        assert img.size[0] > 100 and img.size[1] > 100


def test_missing_evaluation_names_the_command(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="llmhyper evaluate"):
        write_report(tmp_path)


@pytest.mark.browser
def test_report_renders_in_headless_chromium(report_path, tmp_path: Path) -> None:
    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (`make system-deps` installs it)")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
                    f"file://{report_path[0]}"], check=True, capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is None or len(colours) > 50  # not a blank page
