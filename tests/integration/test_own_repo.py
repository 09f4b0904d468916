"""README "Your own Feast repo", followed word for word; and `llmhyper doctor` on broken repos."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def walkthrough() -> tuple[dict[str, str], list[str]]:
    """(files: name -> text, shell commands) between the README's walkthrough markers."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- walkthrough:start -->(.*?)<!-- walkthrough:end -->", text, re.S)
    assert match, "README.md lost its walkthrough markers"
    files, commands = {}, []
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", match.group(1), re.S):
        if lang == "python":
            name = re.match(r"# (\S+\.py)", body)
            assert name, "a python block of the walkthrough must start with '# <file>.py'"
            files[name.group(1).rstrip(":")] = body
        elif lang == "bash":
            commands += [line for line in body.splitlines() if line.strip() and not line.startswith("#")]
    return files, commands


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FEAST_USAGE": "False",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env(), capture_output=True, text=True)


def test_walkthrough_is_well_formed() -> None:
    files, commands = walkthrough()
    assert "make_data.py" in files
    assert commands[0].startswith("llmhyper init --repo my_repo")
    used = {c.split()[1] for c in commands if c.startswith("llmhyper ")}
    assert {"init", "apply", "doctor", "train-warm", "materialize", "export"} <= used


@pytest.mark.slow  # ten CLI subprocesses, each importing Feast (minutes on a busy 2-core machine)
def test_readme_walkthrough_word_for_word(tmp_path: Path) -> None:
    files, commands = walkthrough()
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    outputs = []
    for command in commands:
        proc = run(command, tmp_path)
        outputs.append(proc.stdout)
        assert proc.returncode == 0, f"`{command}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    doctor_runs = [out for cmd, out in zip(commands, outputs) if cmd.startswith("llmhyper doctor")]
    assert all("FAIL" not in out for out in doctor_runs)
    assert "warn online weights" in doctor_runs[0]  # before train-warm
    assert re.search(r"^ok\s+online weights: .*warm=24", doctor_runs[-1], re.M), doctor_runs[-1]
    assert "cold-current=4" in doctor_runs[-1]
    ranked = outputs[-1]
    assert len(re.findall(r"^\s+[123]\s+ad\d\d\s", ranked, re.M)) == 3, ranked
    assert (tmp_path / "my_repo" / "data" / "onnx").is_dir()


def test_doctor_names_the_fix_of_a_broken_repo(tmp_path: Path) -> None:
    """A scaffolded repo: never applied -> FAIL registry; a user feature without description -> FAIL names it."""
    from llmhyper_feast.jobs.doctor import doctor
    from llmhyper_feast.jobs.init import init_repo

    repo = tmp_path / "shop"
    init_repo(repo)
    report = doctor(repo)
    by_name = {c.name: c for c in report.checks}
    assert by_name["feature_store.yaml"].status == "ok" and by_name["llmhyper.yaml"].status == "ok"
    assert by_name["registry"].status == "FAIL" and "llmhyper apply --repo" in by_name["registry"].fix
    assert by_name["roles"].status == "skip"

    proc = run(f"llmhyper doctor --repo {repo} --format json", tmp_path)
    assert proc.returncode == 3, proc.stderr
    document = json.loads(proc.stdout)  # stdout holds the JSON document only
    assert document["ok"] is False
    assert [c["status"] for c in document["checks"] if c["name"] == "registry"] == ["FAIL"]

    (repo / "llmhyper.yaml").write_text("generation: {shots: -1}\n")
    bad = {c.name: c for c in doctor(repo).checks}["llmhyper.yaml"]
    assert bad.status == "FAIL" and "generation.shots" in bad.detail


@pytest.mark.slow  # feast apply in a subprocess: about a minute on a busy 2-core machine
def test_doctor_on_an_applied_repo_lists_undescribed_features(tmp_path: Path) -> None:
    from llmhyper_feast.jobs.doctor import doctor
    from llmhyper_feast.jobs.init import init_repo
    from llmhyper_feast.store import feast_adapter as fa

    repo = tmp_path / "shop"
    init_repo(repo)
    defs = repo / "feature_definitions.py"
    text = defs.read_text()
    undescribed = re.sub(
        r'description="Share of the user\'s visits in the last 90 days to recipes[^"]*"', 'description=""', text
    )
    assert undescribed != text
    defs.write_text(undescribed)
    fa.apply_repo(repo)
    checks = {c.name: c for c in doctor(repo).checks}
    assert checks["registry"].status == "ok"
    assert checks["user features"].status == "FAIL"
    assert "user_profile:cooking has no description" in checks["user features"].detail
    assert "description" in checks["user features"].fix and "llmhyper apply" in checks["user features"].fix
    assert checks["role warm_weights"].status == "ok" and checks["role generated_weights"].status == "ok"
    assert checks["sources"].status == "skip"
    shutil.rmtree(repo)
