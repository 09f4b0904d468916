"""The jobs the CLI runs, one module each; every job takes a repo path and Settings.

``demo`` (seeded demo data) -> ``train`` (warm models, LR_cold) -> ``generate`` (LLM or prior
weights into the generation log) -> ``materialize`` (calibrate, write to Feast; status) ->
``evaluate`` (baselines, ablations, backtest).
"""

from llmhyper_feast.jobs.demo import make_demo_data
from llmhyper_feast.jobs.evaluate import ABLATIONS, evaluate, run_backtest
from llmhyper_feast.jobs.generate import build_index, generate, load_warm_ads, make_backend
from llmhyper_feast.jobs.materialize import MaterializeReport, materialize, status
from llmhyper_feast.jobs.train import WarmReport, load_lr_cold, read_impressions, train_warm

__all__ = [
    "ABLATIONS",
    "MaterializeReport",
    "WarmReport",
    "build_index",
    "evaluate",
    "generate",
    "load_lr_cold",
    "load_warm_ads",
    "make_backend",
    "make_demo_data",
    "materialize",
    "read_impressions",
    "run_backtest",
    "status",
    "train_warm",
]
