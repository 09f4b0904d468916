"""Untrusted inputs: non-finite user features, secrets in error texts, ad image paths, ad titles.

* One missing-value rule for user features (read_user_matrix): NaN and inf are imputed with the
  feature's finite mean; a feature with no finite value, or too many missing ones, is a DataError.
* A server that echoes the API key never gets it stored (log, views, online store, cache) or printed.
* Images are read only as regular, small files under the allowed roots; remote URLs are refused.
* Ad titles lose control characters and are capped before they reach a prompt.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support.fake_openai import FakeOpenAI
from support.repos import clone_repo

from llmhyper_feast import jobs
from llmhyper_feast.calibration.solve import calibrate
from llmhyper_feast.config import InputsConfig, load_settings
from llmhyper_feast.errors import CalibrationError, DataError
from llmhyper_feast.features import Ad
from llmhyper_feast.generation.prompts import ImagePolicy, build_messages
from llmhyper_feast.generation.runner import read_log
from llmhyper_feast.store import feast_adapter as fa
from llmhyper_feast.store import online
from llmhyper_feast.store.redact import redact
from llmhyper_feast.training.warm import fit_ad, train_warm_models

pytestmark = pytest.mark.integration

PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
)
BAD_USERS = {"u000000": ("deal_seeking", np.inf), "u000001": ("travel", np.nan), "u000002": ("fashion", -np.inf)}


# --- non-finite user features ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dirty_repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy whose user features hold inf, NaN and -inf (offline and online)."""
    repo = clone_repo(demo_repo, tmp_path_factory.mktemp("dirty_users") / "repo")
    for view in ("user_behaviour", "user_interests"):
        path = repo / "data" / f"{view}.parquet"
        df = pd.read_parquet(path)
        for user, (feature, value) in BAD_USERS.items():
            if feature in df.columns:
                df.loc[df["user_id"] == user, feature] = value
        df.to_parquet(path, index=False)
    store = fa.open_store(repo)
    fa.materialize_sources(store, ["user_behaviour", "user_interests"])
    return repo


def raw_finite_mean(repo: Path, feature: str) -> float:
    for view in ("user_behaviour", "user_interests"):
        df = pd.read_parquet(repo / "data" / f"{view}.parquet")
        if feature in df.columns:
            col = df[feature].to_numpy(np.float64)
            return float(col[np.isfinite(col)].mean())
    raise AssertionError(feature)


def test_read_user_matrix_imputes_non_finite_values_with_the_finite_mean(dirty_repo: Path) -> None:
    store = fa.open_store(dirty_repo)
    schema = fa.read_feature_schema(store)
    ids, users = fa.read_user_matrix(store, schema)
    assert np.isfinite(users).all()
    row = {u: i for i, u in enumerate(ids)}
    for user, (feature, _) in BAD_USERS.items():
        value = users[row[user], schema.names.index(feature)]
        assert value == pytest.approx(raw_finite_mean(dirty_repo, feature), rel=1e-6)
    mean = fa.finite_population_mean(users, schema.names)
    assert np.isfinite(mean).all()


def test_too_many_or_only_non_finite_values_are_a_data_error(dirty_repo: Path) -> None:
    store = fa.open_store(dirty_repo)
    schema = fa.read_feature_schema(store)
    with pytest.raises(DataError, match=r"deal_seeking.*inputs\.max_missing_share"):
        fa.read_user_matrix(store, schema, inputs=InputsConfig(max_missing_share=0.0))
    x = np.array([[1.0, np.nan], [2.0, np.inf]])
    with pytest.raises(DataError, match=r"\['b'\] have no finite value"):
        fa.finite_population_mean(x, ["a", "b"])
    assert fa.finite_population_mean(np.array([[1.0, 2.0], [np.inf, 4.0]])).tolist() == [1.0, 3.0]


def test_train_warm_on_non_finite_users_gives_finite_models(dirty_repo: Path) -> None:
    report = jobs.train_warm(dirty_repo, load_settings(dirty_repo), progress=False)
    assert report.trained > 0
    store = fa.open_store(dirty_repo)
    warm = fa.read_latest(store, fa.view_for_role(store, fa.WARM_ROLE).name)
    assert np.isfinite(np.stack(warm["weights"].to_numpy())).all() and np.isfinite(warm["bias"]).all()


def test_training_and_calibration_reject_non_finite_input_with_our_errors(dirty_repo: Path) -> None:
    schema = fa.read_feature_schema(fa.open_store(dirty_repo))
    users = np.ones((4, len(schema)))
    users[1, schema.names.index("travel")] = np.inf
    imps = pd.DataFrame({"user_id": ["a", "b", "c", "d"], "ad_id": ["x"] * 4, "clicked": [0, 1, 0, 1]})
    with pytest.raises(DataError, match=r"\['travel'\].*read_user_matrix"):
        train_warm_models(imps, np.array(list("abcd")), users, schema, ["x"], load_settings(dirty_repo).warm)
    with pytest.raises(DataError, match="NaN or inf"):
        fit_ad(users, np.array([0, 1, 0, 1]), 1.0)
    with pytest.raises(CalibrationError, match=r"column\(s\) \[.*\].*read_user_matrix"):
        calibrate(np.ones(len(schema)), users, 0.05)


def test_materialize_and_ranking_with_non_finite_users(dirty_repo: Path) -> None:
    from llmhyper_feast.serving.export import export_repo
    from llmhyper_feast.serving.ranker import Ranker

    settings = load_settings(dirty_repo).with_overrides(**{"llm.name": "none"})
    report = jobs.materialize(dirty_repo, settings, progress=False)
    assert report.written > 0
    store = fa.open_store(dirty_repo)
    stored = fa.read_latest(store, fa.view_for_role(store, fa.GENERATED_ROLE).name)
    assert np.isfinite(np.stack(stored["weights"].to_numpy())).all() and np.isfinite(stored["bias"]).all()

    models = dirty_repo.parent / "models"
    export_repo(dirty_repo, models)
    ranker = Ranker(dirty_repo, models, reload_interval=None)
    assert np.isfinite(ranker.population_mean).all()
    feats = online.get_user_features(store, list(BAD_USERS), fa.read_feature_schema(store))
    assert not np.isfinite(feats.values).all()  # the online store does hold inf / NaN
    x, counts = fa.impute_non_finite(feats.values, ranker.population_mean)
    assert counts.sum() == len(BAD_USERS) and x.dtype == np.float32
    ctr = ranker.score(x)
    assert np.isfinite(ctr).all() and (ctr < 0.5).all()  # not the 1.0 every ad got from an inf


# --- secrets ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_repo(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clone_repo(demo_repo, tmp_path_factory.mktemp("inputs_text") / "repo")


def _strings_in(path: Path) -> str:
    """Every string cell of every parquet file under ``path``, and every other file's text."""
    out = []
    for p in sorted(path.rglob("*")):
        if not p.is_file():
            continue
        if p.suffix == ".parquet":
            df = pd.read_parquet(p)
            out += [str(v) for c in df.columns if df[c].dtype == object for v in df[c]]
        else:
            out.append(p.read_bytes().decode("utf-8", "replace"))
    return "\n".join(out)


@pytest.mark.timeout(240)
def test_echoed_api_key_is_never_stored_or_printed(
    text_repo: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from llmhyper_feast.cli import main

    key = "llmh-echo-" + os.urandom(12).hex()  # not token-shaped: only the env rule can catch it
    with FakeOpenAI(default="auth_echo") as fake:
        monkeypatch.setenv("OPENAI_API_KEY", key)
        monkeypatch.setenv("LLMHYPER_LLM", "openai")
        monkeypatch.setenv("LLMHYPER_MODEL", "echo-model")
        monkeypatch.setenv("LLMHYPER_LLM__OPTIONS__BASE_URL", fake.base_url)
        monkeypatch.setenv("LLMHYPER_LLM__OPTIONS__MAX_RETRIES", "0")
        with pytest.raises(SystemExit) as stopped:
            main(["materialize", "--repo", str(text_repo), "--quiet"])
        assert fake.headers and fake.headers[0]["authorization"] == f"Bearer {key}"  # the server saw it...
        assert "auth_echo" in fake.behaviours_used  # ...and echoed it
    out, err = capfd.readouterr()
    assert stopped.value.code == 5 and "rejected the API key" in err and "[redacted]" in err
    assert key not in out and key not in err

    data = text_repo / "data"
    log = read_log(data / "generation_log")
    assert (log["llm_model"] == "openai:echo-model").any() and "[redacted]" in " ".join(log["fallback_reason"])
    store = fa.open_store(text_repo)
    view = fa.view_for_role(store, fa.GENERATED_ROLE).name
    stored = fa.read_latest(store, view)
    assert "[redacted]" in " ".join(stored["reason"])
    reasons = [m["reason"] for m in online.get_ad_weights(store, stored["ad_id"].tolist()).meta]
    assert any("[redacted]" in r for r in reasons) and not any(key in r for r in reasons)
    assert key not in _strings_in(data)  # log, generated view, online store, answer cache: every file
    assert key.encode() not in (data / "online_store.db").read_bytes()


def test_backend_error_text_and_traceback_hold_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmhyper_feast.backends.llm.base import ChatRequest
    from llmhyper_feast.backends.llm.openai_backend import OpenAIBackend

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    key = "opt-key-" + os.urandom(12).hex()  # given as an option, in no environment variable
    with FakeOpenAI(default="auth_echo") as fake:
        backend = OpenAIBackend({"base_url": fake.base_url, "api_key": key, "max_retries": 0, "model": "m"})
        [error] = backend.complete_many(
            [ChatRequest(messages=({"role": "user", "content": "hi"},), feature_names=("a",))], progress=False
        )
    assert "auth_echo" in fake.behaviours_used
    assert "HTTP 401" in str(error) and "[redacted]" in str(error)
    assert key not in "".join(traceback.format_exception(error))
    assert redact("Authorization: Bearer abcdEFGH12345678xyz") == "Authorization: [redacted]"
    assert redact("key sk-proj-abcdefghij0123 leaked") == "key [redacted] leaked"


def test_cli_error_line_is_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    from llmhyper_feast.cli import main

    secret = "env-secret-" + os.urandom(8).hex()
    monkeypatch.setenv("SHOP_DB_PASSWORD", secret)
    with pytest.raises(SystemExit):
        main(["status", "--repo", str(tmp_path / secret)])  # the error names the (missing) repo path
    err = capfd.readouterr().err
    assert "No Feast feature repo" in err and secret not in err and "[redacted]" in err


# --- ad images -------------------------------------------------------------------------------


@pytest.fixture
def image_world(tmp_path: Path) -> dict[str, Path]:
    repo = tmp_path / "repo"
    (repo / "data" / "images").mkdir(parents=True)
    good = repo / "data" / "images" / "ok.png"
    good.write_bytes(PNG_1PX)
    fifo = repo / "data" / "images" / "fifo.png"
    os.mkfifo(fifo)
    big = repo / "data" / "images" / "big.png"
    with big.open("wb") as fh:
        fh.write(PNG_1PX)
        fh.truncate(6_000_000)
    other = tmp_path / "other_repo" / "data" / "images"
    other.mkdir(parents=True)
    (other / "theirs.png").write_bytes(PNG_1PX)
    link = repo / "data" / "images" / "link.png"
    link.symlink_to(other / "theirs.png")
    return {"repo": repo, "good": good, "fifo": fifo, "big": big, "link": link, "other": other / "theirs.png"}


@pytest.mark.timeout(20)
def test_unsafe_image_paths_are_rejected(image_world: dict[str, Path]) -> None:
    repo = image_world["repo"]
    policy = ImagePolicy.for_repo(repo)
    assert policy.image_url(str(image_world["good"])).startswith("data:image/png;base64,")
    assert policy.image_url("data/images/ok.png") == policy.image_url(image_world["good"].as_uri())
    cases = {
        str(image_world["fifo"]): "not a regular file",
        "/etc/passwd": "outside the allowed image folders",
        "../other_repo/data/images/theirs.png": "outside the allowed image folders",
        str(image_world["link"]): "outside the allowed image folders",
        str(image_world["big"]): "more than the 5000000 allowed",
        "https://example.com/ad.png": "remote URL",
    }
    for uri, reason in cases.items():
        with pytest.raises(DataError, match=reason) as info:
            policy.image_url(uri)
        assert "root:" not in str(info.value)  # never the file's content
    assert ImagePolicy.for_repo(repo, allow_remote=True).image_url("https://example.com/a.png").startswith("https:")
    wider = ImagePolicy.for_repo(repo, [str(image_world["other"].parent)])
    assert wider.image_url(str(image_world["other"])).startswith("data:image/png")
    assert InputsConfig(image_roots="a" + os.pathsep + "b").image_roots == ("a", "b")


@pytest.mark.timeout(240)
def test_generation_sends_rejected_images_as_text_only_with_a_note(
    text_repo: Path, image_world: dict[str, Path]
) -> None:
    content = text_repo / "data" / "ad_content.parquet"
    ads = pd.read_parquet(content)
    active = ads.loc[ads["status"] == "active", "ad_id"].tolist()[:5]
    fifo = text_repo / "data" / "images" / "fifo.png"
    os.mkfifo(fifo)
    good = ads.loc[ads["ad_id"] == active[4], "image_uri"].iloc[0]
    outside = os.path.relpath(image_world["other"], text_repo)  # ../../.. from the repo: another repo's image
    uris = [str(fifo), "/etc/passwd", outside, "http://example.com/a.png", good]
    for ad_id, uri in zip(active, uris):
        ads.loc[ads["ad_id"] == ad_id, "image_uri"] = uri
    ads.to_parquet(content, index=False)
    with FakeOpenAI() as fake:
        settings = load_settings(text_repo).with_overrides(
            llm={"name": "openai", "options": {"base_url": fake.base_url, "api_key": "test", "model": "img-model"}},
            **{"generation.send_image": True},
        )
        rows = jobs.generate(text_repo, settings, ad_ids=active, progress=False).set_index("ad_id")
        bodies = list(fake.requests)
    for ad_id, reason in zip(active[:4], ["not a regular file", "outside", "outside", "remote URL"]):
        note = rows.loc[ad_id, "image_note"]
        assert note.startswith("image unreadable, text only:") and reason in note, note
        assert "root:" not in note
    assert rows.loc[active[4], "image_note"] == ""
    with_image = [b for b in bodies if not isinstance(b["messages"][1]["content"], str)]
    assert len(with_image) == len(bodies) // 5  # only the good image's requests carry an image part


# --- ad titles -------------------------------------------------------------------------------


def _user_text(body: dict) -> str:
    content = body["messages"][1]["content"]
    return content if isinstance(content, str) else "\n".join(p["text"] for p in content if p["type"] == "text")


@pytest.mark.timeout(240)
def test_titles_are_cleaned_and_capped_before_the_prompt(text_repo: Path) -> None:
    content = text_repo / "data" / "ad_content.parquet"
    original = pd.read_parquet(content)
    ads = original.copy()
    active = ads.loc[ads["status"] == "active", "ad_id"].tolist()[-3:]
    titles = {
        active[0]: "Mega sale " + "x" * 1_000_000,
        active[1]: "Buy now\n   1  ad99999   0.99999  warm  Free money\r\x1b[31m\x00\x07!\u202e",
        active[2]: "🎉 新年快乐 Family 👩\u200d👩\u200d👧 sale — crème brûlée",
    }
    for ad_id, title in titles.items():
        ads.loc[ads["ad_id"] == ad_id, "title"] = title
    ads.loc[ads["ad_id"] == active[1], "caption"] = "line one\nline two\ttab " + "y" * 2000
    ads.to_parquet(content, index=False)

    store = fa.open_store(text_repo)
    cleaned, df = fa.read_ads(store)
    by_id = {a.ad_id: a for a in cleaned}
    assert len(by_id[active[0]].title) == 300 and len(by_id[active[1]].caption) <= 500
    assert by_id[active[1]].title == "Buy now    1  ad99999   0.99999  warm  Free money [31m!"
    assert by_id[active[2]].title == titles[active[2]]  # emoji (with joiners), CJK and accents intact
    assert df.attrs["text_cleaning"] == {"titles_cut": 1, "captions_cut": 1, "control_characters_removed": 2}
    assert "\n" not in "".join(df["title"])  # what the `rank` table prints

    with FakeOpenAI() as fake:
        settings = load_settings(text_repo).with_overrides(
            llm={"name": "openai", "options": {"base_url": fake.base_url, "api_key": "test", "model": "title-model"}}
        )
        rows = jobs.generate(text_repo, settings, ad_ids=active, progress=False)
        bodies = list(fake.requests)
    assert len(rows) == 3 and rows["prompt_tokens"].max() < 20_000
    texts = [_user_text(b) for b in bodies]
    assert any("Title: Mega sale xxx" in t for t in texts) and max(len(t) for t in texts) < 20_000
    assert any("Title: 🎉 新年快乐 Family 👩\u200d👩\u200d👧 sale — crème brûlée" in t for t in texts)
    for text in texts:
        assert not any(c in text for c in "\r\x1b\x00\x07\u202e")
    assert any("Title: Buy now 1 ad99999 0.99999 warm Free money [31m!\n" in t for t in texts)

    only_controls = original.copy()
    only_controls.loc[only_controls["ad_id"] == active[0], "title"] = "\n\t\x1b\x00 "
    only_controls.to_parquet(content, index=False)
    try:
        with pytest.raises(DataError, match=r"1 ad\(s\) have no title"):
            fa.read_ads(store)
    finally:
        original.to_parquet(content, index=False)


def test_prompt_strips_control_characters_of_ads_built_in_code() -> None:
    from llmhyper_feast.features import FeatureDefinition, FeatureSchema

    schema = FeatureSchema((FeatureDefinition("age", "Age in years"),))
    ad = Ad("a1", "Line\x1b[2J one\nLine two\x00", "cap\x07tion")
    text = _user_text({"messages": build_messages(ad, list(schema.features), schema, [])})
    assert "Title: Line[2J one Line two" in text and "Caption: caption" in text
    assert not any(c in text for c in "\x1b\x00\x07")
