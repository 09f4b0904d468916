"""Settings precedence: flag > env > llmhyper.yaml > default, the same way for every key and backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmhyper_feast.cli.options import SETTING_FLAGS, settings_from_flags
from llmhyper_feast.config import ENV_ALIASES, Settings, env_layer, resolve_settings
from llmhyper_feast.errors import ConfigError


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in list(__import__("os").environ):
        if var.startswith("LLMHYPER_"):
            monkeypatch.delenv(var)
    (tmp_path / "feature_store.yaml").write_text("project: t\n")
    return tmp_path


def _write(repo: Path, data: dict) -> None:
    (repo / "llmhyper.yaml").write_text(yaml.safe_dump(data))


def _get(settings: Settings, dotted: str):
    node = settings.model_dump()
    for part in dotted.split("."):
        node = node[part]
    return node


# one (dotted key, file value, env value, flag value) per setting kind; env values are strings.
# Each value differs from the layer below it (and the file value from the default), so every step is observable.
LAYERS = [
    ("generation.shots", 2, "3", 4),
    ("generation.temperature", 0.1, "0.2", 0.3),
    ("generation.reasoning", True, "false", True),
    ("generation.concurrency", 2, "3", 5),
    ("calibration.scale", "unit", "neighbours", "unit"),
    ("calibration.user_sample", 100, "200", 300),
    ("warm.min_clicks", 6, "7", 8),
    ("gate.mode", "warn", "blend", "refuse"),
    ("embedder.name", "clip", "minilm", "clip"),
    ("prior.name", "pkg.file:Prior", "pkg.env:Prior", "pkg.flag:Prior"),
]


@pytest.mark.parametrize("dotted, file_value, env_value, flag_value", LAYERS, ids=[x[0] for x in LAYERS])
def test_each_layer_overrides_the_one_below(
    repo: Path, monkeypatch: pytest.MonkeyPatch, dotted: str, file_value, env_value, flag_value
) -> None:
    default = _get(Settings(), dotted)
    assert _get(resolve_settings(repo), dotted) == default
    section, key = dotted.split(".")
    _write(repo, {section: {key: file_value}})
    assert _get(resolve_settings(repo), dotted) == file_value
    monkeypatch.setenv(f"LLMHYPER_{section.upper()}__{key.upper()}", env_value)
    expected_env = type(default)(env_value) if not isinstance(default, bool) else env_value == "true"
    assert _get(resolve_settings(repo), dotted) == expected_env
    assert _get(resolve_settings(repo, {dotted: flag_value}), dotted) == flag_value
    assert _get(resolve_settings(repo, {dotted: None}), dotted) == expected_env  # an unset flag changes nothing


@pytest.mark.parametrize(
    "backend, file_options",
    [
        ("local", {"batch_size": 2}),
        ("openai", {"base_url": "http://127.0.0.1:1/v1"}),
    ],
)
def test_model_means_the_same_for_every_backend(
    repo: Path, monkeypatch: pytest.MonkeyPatch, backend: str, file_options: dict
) -> None:
    _write(repo, {"llm": {"name": backend, "options": {**file_options, "model": "from-file"}}})
    assert resolve_settings(repo).llm.options == {**file_options, "model": "from-file"}
    monkeypatch.setenv("LLMHYPER_MODEL", "from-env")
    got = resolve_settings(repo).llm
    assert (got.name, got.options) == (backend, {**file_options, "model": "from-env"})
    got = settings_from_flags(repo, model="from-flag").llm
    assert (got.name, got.options) == (backend, {**file_options, "model": "from-flag"})


def test_llmhyper_model_reaches_the_default_local_backend(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect: LLMHYPER_MODEL=foo made the default local backend fail with "unknown option 'model'"."""
    from llmhyper_feast.backends.llm import get_backend
    from llmhyper_feast.backends.llm.local import LocalBackend

    gguf = repo / "foo.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("LLMHYPER_MODEL", str(gguf))
    settings = resolve_settings(repo)
    assert settings.llm.name == "local" and settings.llm.options == {"model": str(gguf)}
    backend = get_backend(settings.llm.name, settings.llm.options)
    assert isinstance(backend, LocalBackend) and backend.path == gguf and backend.model_id == "foo.gguf"
    legacy = get_backend("local", {"gguf_path": str(gguf)})  # the older option name still works
    assert legacy.path == gguf and legacy.options == backend.options


def test_naming_another_backend_drops_the_options_of_the_previous_one(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(repo, {"llm": {"name": "local", "options": {"batch_size": 2}}})
    monkeypatch.setenv("LLMHYPER_LLM", "openai")
    assert resolve_settings(repo).llm.model_dump() == {"name": "openai", "options": {}}
    monkeypatch.setenv("LLMHYPER_MODEL", "gpt-x")
    assert resolve_settings(repo).llm.model_dump() == {"name": "openai", "options": {"model": "gpt-x"}}
    flagged = settings_from_flags(repo, llm="local")
    assert flagged.llm.model_dump() == {"name": "local", "options": {}}
    same = settings_from_flags(repo, llm="openai", model="gpt-y")
    assert same.llm.model_dump() == {"name": "openai", "options": {"model": "gpt-y"}}


def test_every_alias_and_flag_maps_to_a_real_setting(repo: Path) -> None:
    keys = set(ENV_ALIASES.values()) | set(SETTING_FLAGS.values())
    defaults = Settings().model_dump()
    for dotted in keys:
        section, *rest = dotted.split(".")
        assert section in defaults, dotted
        if rest and rest[0] != "options":  # top-level keys (engine) have no rest
            assert rest[0] in defaults[section], dotted


@pytest.mark.parametrize(
    "var, value, fragment",
    [
        ("LLMHYPER_CONCURRENCY", "many", "generation.concurrency"),
        ("LLMHYPER_GENERATION__SHOTS", "-1", "generation.shots"),
        ("LLMHYPER_GENERATION__NO_SUCH_KEY", "1", "no_such_key"),
        ("LLMHYPER_SHOTZ", "1", "Unknown environment variable LLMHYPER_SHOTZ"),
    ],
)
def test_bad_environment_values_name_the_key(
    repo: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=fragment):
        resolve_settings(repo)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("generation: [1, 2", "not valid YAML"),
        ("- a\n- b\n", "must hold a mapping"),
        ("generation:\n  shots: many\n", "generation.shots"),
        ("llm:\n  name: openai\n  options:\n    api_key: sk-123\n", "secret"),
        ("surprise: 1\n", "surprise"),
    ],
)
def test_bad_files_name_the_file_and_key(repo: Path, text: str, fragment: str) -> None:
    (repo / "llmhyper.yaml").write_text(text)
    with pytest.raises(ConfigError, match=fragment) as info:
        resolve_settings(repo)
    assert "llmhyper.yaml" in str(info.value)


def test_env_layer_reads_only_our_prefix() -> None:
    assert env_layer({"LLMHYPER_PRIOR": "knn", "PATH": "/bin", "LLMHYPER_LLM__OPTIONS__BASE_URL": "http://x"}) == {
        "prior.name": "knn",
        "llm.options.base_url": "http://x",
    }
