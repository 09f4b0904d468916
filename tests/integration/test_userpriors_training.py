"""Post-training of the user priors model and the ranking features derived from the priors, on real stores.

sft-data through the CLI (format, labels, no evaluation user), a tiny LoRA run on the bundled SmolLM2
whose checkpoint the local backend then serves under the answer constraint, the full demo-world
fine-tune (slow), and the opt-in user_prior_features view.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from support.repos import clone_repo

from llmhyper_feast.cli import main as cli_main
from llmhyper_feast.config import load_settings
from llmhyper_feast.jobs.priors import priors_context
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.userpriors import history as hist
from llmhyper_feast.userpriors.answers import parse_priors

pytestmark = pytest.mark.integration

SHORT = {"k": 3, "pool_max": 5, "pool_top": 3, "token_budget": 60, "max_interests": 1, "max_features": 1}


@pytest.fixture(scope="module")
def repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clone_repo(demo_repo, tmp_path_factory.mktemp("priors_training") / "repo")


def sft(repo: Path, out: Path, capfd: pytest.CaptureFixture[str], *extra: str) -> dict:
    cli_main(["priors", "sft-data", "--repo", str(repo), "--out", str(out), "--format", "json", *extra])
    return json.loads(capfd.readouterr().out)


def test_sft_data_holds_the_generate_prompts_and_no_evaluation_user(
    repo: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sft.jsonl"
    report = sft(repo, out, capfd)
    lines = out.read_text().splitlines()
    meta = json.loads(Path(f"{out}.meta.json").read_text())
    assert len(lines) == report["examples"] == len(meta["rows"]) > 100 and len(report["snapshots"]) == 2
    assert report["heldout_skipped"] > 0
    settings = load_settings(repo)
    cfg = settings.user_priors
    # the users `priors evaluate` may sample are never in the training file
    _, ctx, history = priors_context(repo, settings.with_overrides(**{"llm.name": "none"}), None, back_days=30)
    eval_pool = {u for u in history["user_id"].unique() if hist.is_heldout(u, cfg.eval_share, cfg.seed)}
    assert eval_pool and not eval_pool & {r["user_id"] for r in meta["rows"]}
    # every snapshot's label window ends before the evaluation snapshot
    assert max(pd.Timestamp(s) for s in report["snapshots"]) + pd.Timedelta(days=30) <= ctx.as_of
    for line, row in zip(lines[:50], meta["rows"][:50]):
        messages = json.loads(line)["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert "Candidate advertisers" in messages[1]["content"]
        answer = json.loads(messages[2]["content"])
        assert answer["advertisers"][0] == row["label"] and len(set(answer["advertisers"])) == cfg.k


@pytest.fixture(scope="module")
def short_sft(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few examples with short prompts (k=3, small pool and profile), written through the job."""
    from llmhyper_feast.jobs.priors import write_sft_data

    out = tmp_path_factory.mktemp("short") / "sft.jsonl"
    settings = load_settings(repo).with_overrides(**{f"user_priors.{k}": v for k, v in SHORT.items()})
    write_sft_data(repo, settings, out)
    return out


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer Llama with SmolLM2's tokenizer and chat template (random weights, ~0.8M parameters): the
    fine-tuning and serving code paths at a fraction of the real model's cost."""
    transformers = pytest.importorskip("transformers")
    from llmhyper_feast.backends.llm.local import default_gguf_path

    gguf = default_gguf_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    out = tmp_path_factory.mktemp("tiny") / "base"
    transformers.LlamaForCausalLM(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def test_tiny_finetune_through_the_cli_serves_with_model_dir(
    repo: Path, short_sft: Path, tiny_base: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("peft", reason="LoRA fine-tuning needs peft (pip install 'llmhyper-feast[test]')")
    from llmhyper_feast.backends.llm.local import LocalBackend
    from llmhyper_feast.userpriors.generate import build_request, profiles_for

    out = tmp_path / "ckpt"
    args = ["--data", str(short_sft), "--out", str(out), "--base", str(tiny_base), "--max-examples", "4"]
    cli_main(["priors", "finetune", *args, "--max-length", "512", "--format", "json", "--quiet"])
    report = json.loads(capfd.readouterr().out)
    assert report["examples"] == 4 and report["steps"] == 1 and report["answer_tokens"] > 0
    assert (out / "config.json").is_file() and not list(tmp_path.glob(".ckpt.tmp-*"))
    # the LoRA update was merged: the saved weights differ from the base's
    from safetensors.numpy import load_file

    before, after = load_file(str(tiny_base / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(after) == set(before) and any(not (before[k] == after[k]).all() for k in before)

    backend = LocalBackend({"model": str(out), "batch_size": 1})  # what --llm local --model DIR builds
    settings = load_settings(repo).with_overrides(**{f"user_priors.{k}": v for k, v in SHORT.items()})
    _, ctx, _ = priors_context(repo, settings.with_overrides(**{"llm.name": "none"}), None)
    user = json.loads(Path(f"{short_sft}.meta.json").read_text())["rows"][0]["user_id"]
    request, spec, _ = build_request(ctx, profiles_for(ctx, [user])[0])
    assert request is not None
    # the answer follows the constrained format: a JSON object whose ids all come from the pool (a random
    # one-layer model may repeat an id, which validation then re-asks; the real model is the slow test's)
    text = backend.complete_many([request], concurrency=1, progress=False)[0].samples[0]
    pool = set(spec[0])
    answer = json.loads(text)
    assert len(answer["advertisers"]) == SHORT["k"] and set(answer["advertisers"]) <= pool, text


@pytest.mark.slow  # loading the GGUF twice (training, then serving) alone takes 30-70 s on 2 shared cores
def test_tiny_lora_run_lowers_the_loss_and_serves_through_the_local_backend(
    repo: Path, short_sft: Path, tmp_path: Path
) -> None:
    pytest.importorskip("peft", reason="LoRA fine-tuning needs peft (pip install 'llmhyper-feast[test]')")
    from llmhyper_feast.backends.llm.local import LocalBackend
    from llmhyper_feast.userpriors.answers import request_priors
    from llmhyper_feast.userpriors.finetune import FinetuneConfig, finetune
    from llmhyper_feast.userpriors.generate import build_request, profiles_for

    out = tmp_path / "ckpt"
    config = FinetuneConfig(epochs=4, max_examples=2, grad_accum=1, lr=2e-3, max_length=512)
    report = finetune(short_sft, out, config=config, progress=False)
    assert report["steps"] == 8 and report["examples"] == 2
    # the same two examples every epoch: the loss on them falls
    assert report["epoch_losses"][-1] < report["epoch_losses"][0] * 0.8, report["epoch_losses"]
    assert (out / "config.json").is_file() and not list(tmp_path.glob(".ckpt.tmp-*"))

    backend = LocalBackend({"model": str(out), "batch_size": 1})
    assert backend.model_id.startswith("ckpt@")
    settings = load_settings(repo).with_overrides(**{f"user_priors.{k}": v for k, v in SHORT.items()})
    _, ctx, _ = priors_context(repo, settings.with_overrides(**{"llm.name": "none"}), None)
    user = json.loads(Path(f"{short_sft}.meta.json").read_text())["rows"][0]["user_id"]
    request, spec, _ = build_request(ctx, profiles_for(ctx, [user])[0])
    assert request is not None and request.answer_format is not None
    outcome = request_priors(backend, [request], [spec], concurrency=1)[0]
    assert outcome.answer is not None, outcome.errors
    assert parse_priors(json.dumps({"advertisers": list(outcome.answer.advertisers), "interests": []}), *spec)


@pytest.mark.slow  # about 6 minutes on 2 cores
def test_demo_world_finetune_runs_through_the_cli(
    repo: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("peft", reason="LoRA fine-tuning needs peft")
    data = tmp_path / "sft.jsonl"
    sft(repo, data, capfd)
    out = tmp_path / "tuned"
    cli_main(
        ["priors", "finetune", "--data", str(data), "--out", str(out), "--max-examples", "150", "--format", "json"]
    )
    report = json.loads(capfd.readouterr().out)
    assert report["examples"] == 150 and report["last_loss"] < report["first_loss"]
    assert json.loads((out / "llmhyper_finetune.json").read_text())["run_id"] == report["run_id"]


def test_prior_features_view_is_opt_in(demo_repo: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    repo = clone_repo(demo_repo, tmp_path / "repo")
    store = fa.open_store(repo)
    default_names = fa.read_feature_schema(store).names
    assert not any(n.startswith("prior_") for n in default_names)  # off: the schema is unchanged

    cli_main(["priors", "features", "--repo", str(repo), "--format", "json"])
    report = json.loads(capfd.readouterr().out)
    users, _ = fa.read_user_matrix(store, fa.read_feature_schema(store))
    assert report["users"] == len(users) and report["from_baseline"] == len(users)  # no priors generated yet
    rows = fa.read_latest(store, "user_prior_features").set_index("user_id")
    shares = rows.filter(like="prior_")
    assert shares.shape[1] == 16 and ((shares >= 0) & (shares <= 1)).all().all()
    assert (shares.sum(axis=1) <= 1.0001).all() and (shares.sum(axis=1) > 0.99).mean() > 0.9

    config = yaml.safe_load((repo / "llmhyper.yaml").read_text())
    config.setdefault("user_priors", {})["use_as_features"] = True
    (repo / "llmhyper.yaml").write_text(yaml.safe_dump(config))
    fa.apply_repo(repo)
    schema = fa.read_feature_schema(fa.open_store(repo))
    assert schema.names[: len(default_names)] == default_names and len(schema.names) == len(default_names) + 16
    described = {f.name: f.description for f in schema.features}
    assert "share of the user's next conversions in the pets category" in described["prior_pets"]
    ids, matrix = fa.read_user_matrix(fa.open_store(repo), schema)
    assert len(ids) == len(users) and matrix.shape[1] == len(schema.names)
    # the priors' own profiles never show the derived features
    _, ctx, _ = priors_context(repo, load_settings(repo).with_overrides(**{"llm.name": "none"}), None)
    assert not any(n.startswith("prior_") for n in ctx.stats.schema.names)

    # warm training reads them through Feast like any user feature: one trained weight per feature, and the
    # prior_ weights are fitted (non-zero), so their values reached the regression
    from llmhyper_feast import jobs

    retired = fa.read_ads(fa.open_store(repo), status="retired")[1]["ad_id"].tolist()[:3]
    report = jobs.train_warm(repo, load_settings(repo), ad_ids=retired, progress=False)
    assert report.trained == 3
    warm = fa.read_latest(fa.open_store(repo), "warm_ad_weights").set_index("ad_id").loc[retired]
    weights = np.array(warm["weights"].tolist())
    assert weights.shape == (3, len(schema.names)) and np.isfinite(weights).all()
    assert (np.abs(weights[:, len(default_names) :]) > 1e-6).any(axis=1).all()
