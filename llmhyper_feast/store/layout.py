"""Where everything the plugin keeps for a repo lives: the one owner of paths under ``data/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmhyper_feast.errors import FeatureRepoError

__all__ = ["CONFIG_FILE", "RepoLayout", "backup_of", "check_repo"]

CONFIG_FILE = "llmhyper.yaml"


def check_repo(repo: str | Path) -> Path:
    """Return the repo path, or raise if it holds no ``feature_store.yaml``."""
    path = Path(repo).resolve()
    if not (path / "feature_store.yaml").is_file():
        raise FeatureRepoError(
            f"No Feast feature repo at {path}: feature_store.yaml is missing. "
            "Pass --repo PATH pointing at the folder that holds feature_store.yaml."
        )
    return path


def backup_of(path: str | Path) -> Path:
    """Where the version of ``path`` before its last atomic rewrite is kept (a hard link)."""
    p = Path(path)
    return p.with_name(p.name + ".bak")


@dataclass(frozen=True)
class RepoLayout:
    """Paths of one Feast repo's plugin state; nothing outside ``root`` is ever named here."""

    root: Path

    @classmethod
    def of(cls, repo: str | Path) -> RepoLayout:
        """The layout of an existing Feast repo (raises when ``repo`` is not one)."""
        return cls(check_repo(repo))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def impressions(self) -> Path:
        return self.data / "impressions.parquet"

    @property
    def demo_truth(self) -> Path:
        return self.data / "demo_truth.parquet"

    @property
    def images(self) -> Path:
        return self.data / "images"

    @property
    def lr_cold(self) -> Path:
        return self.data / "lr_cold.json"

    @property
    def warm_index(self) -> Path:
        return self.data / "warm_index"

    @property
    def generation_log(self) -> Path:
        return self.data / "generation_log"

    @property
    def llm_cache(self) -> Path:
        return self.data / "llm_cache"

    @property
    def llm_batches(self) -> Path:
        """Records of LLM batch jobs (OpenAI Batch API ids, their requests and outcome; jobs/batch.py)."""
        return self.data / "llm_batches.json"

    @property
    def backtest(self) -> Path:
        return self.data / "backtest.json"

    @property
    def evaluation(self) -> Path:
        return self.data / "evaluation.json"

    @property
    def robustness(self) -> Path:
        """Results of the last counterfactual robustness run (jobs/robustness.py)."""
        return self.data / "robustness.json"

    @property
    def report(self) -> Path:
        return self.data / "report.html"

    @property
    def onnx(self) -> Path:
        return self.data / "onnx"

    @property
    def lock(self) -> Path:
        return self.data / ".llmhyper.lock"

    @property
    def pending_writes(self) -> Path:
        """Journal of Feast writes whose online half may not have happened yet (store/journal.py)."""
        return self.data / "pending_writes.json"

    @property
    def user_history(self) -> Path:
        """Time-stamped user events (impression, click, conversion) per advertiser: the user priors' input."""
        return self.data / "user_history.parquet"

    @property
    def advertisers(self) -> Path:
        """Advertisers (id, name, category) of the ads."""
        return self.data / "advertisers.parquet"

    @property
    def user_priors_log(self) -> Path:
        """Append-only parts of user priors runs (the checkpoint a killed run resumes from)."""
        return self.data / "user_priors_log"

    @property
    def user_priors_evaluation(self) -> Path:
        return self.data / "user_priors_evaluation.json"

    def impressions_or(self, override: str | Path | None) -> Path:
        """``override`` when given, else the repo's impressions file."""
        return Path(override) if override else self.impressions
