"""Shared fixtures: offline environment, a small demo feature repo built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.repos import clone_repo, copy_repo

os.environ.setdefault("FEAST_USAGE", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SMALL_WORLD = dict(users=3000, retired=64, active=16, impressions_per_ad=1500, seed=11)


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature repo with a small demo world, applied, with warm models trained. Treat as read-only."""
    from llmhyper_feast import jobs
    from llmhyper_feast.config import load_settings
    from llmhyper_feast.datasets.demo_world import WorldSize

    repo = copy_repo(tmp_path_factory.mktemp("demo") / "feature_repo")
    jobs.make_demo_data(repo, WorldSize(**SMALL_WORLD), progress=False)
    jobs.train_warm(repo, load_settings(repo), progress=False)
    return repo


@pytest.fixture
def empty_repo(tmp_path: Path) -> Path:
    """A fresh copy of the feature repo definitions without data."""
    return copy_repo(tmp_path / "feature_repo")


@pytest.fixture
def demo_copy(demo_repo: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the session's demo repo."""
    return clone_repo(demo_repo, tmp_path / "repo")
