"""Settings of llmhyper-feast: ``<repo>/llmhyper.yaml``, environment variables and flags.

Precedence, highest first: command-line flag > environment variable > ``llmhyper.yaml`` >
default, applied the same way to every key by :func:`resolve_settings`. Each layer is a set
of dotted keys (``generation.shots``, ``llm.options.model``, ...):

* the file: the nested YAML mapping;
* the environment: ``LLMHYPER_<SECTION>__<KEY>`` for any key (``LLMHYPER_GENERATION__SHOTS=3``,
  ``LLMHYPER_LLM__OPTIONS__BASE_URL=...``), plus the short names in :data:`ENV_ALIASES`
  (``LLMHYPER_LLM``, ``LLMHYPER_MODEL``, ``LLMHYPER_EMBEDDER``, ``LLMHYPER_PRIOR``,
  ``LLMHYPER_CONCURRENCY``, ``LLMHYPER_ENGINE``);
* flags: the CLI's options, mapped to the same dotted keys.

Options belong to a backend: a layer that names a different ``llm``, ``embedder`` or ``prior``
drops the options the lower layers gave the previous one. Every backend takes its model as
the option ``model`` (a model name for ``openai``, a GGUF path for ``local``), so ``--model``
and ``LLMHYPER_MODEL`` mean the same thing everywhere. Secrets are never read from the file.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llmhyper_feast.errors import ConfigError

CONFIG_FILE = "llmhyper.yaml"
ENV_PREFIX = "LLMHYPER_"
ENV_ALIASES: dict[str, str] = {
    "LLMHYPER_LLM": "llm.name",
    "LLMHYPER_MODEL": "llm.options.model",
    "LLMHYPER_EMBEDDER": "embedder.name",
    "LLMHYPER_PRIOR": "prior.name",
    "LLMHYPER_CONCURRENCY": "generation.concurrency",
    "LLMHYPER_ENGINE": "engine",
}
# environment variables with our prefix that are not settings (test switches)
_ENV_IGNORED = {"LLMHYPER_REGEN_GOLDEN", "LLMHYPER_TEST_KILL_AT", "LLMHYPER_TEST_CRASH_ONCE"}
_PLUGIN_SECTIONS = ("llm", "embedder", "prior")
_SECRET_WORDS = ("api_key", "apikey", "secret", "password", "token")

_STRICT = ConfigDict(extra="forbid", frozen=True)


class BackendConfig(BaseModel):
    """A named plugin (LLM backend, embedder or prior) and the options passed to it."""

    model_config = _STRICT
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class GenerationConfig(BaseModel):
    model_config = _STRICT
    shots: int = Field(5, ge=0, le=50)
    batch_size: int = Field(10, ge=0, description="features per LLM call; 0 = all at once")
    samples: int = Field(1, ge=1, le=20)
    temperature: float = Field(0.5, ge=0.0, le=2.0)
    reasoning: bool = False
    include_caption: bool = True
    send_image: bool = False
    max_abs: Literal["auto"] | Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        "auto",
        description="largest |weight| the prompt states and answers keep; 'auto' derives it from the warm ads' "
        "trained weights (1.2x the largest, so copying an example is never rejected); answers up to 3x beyond it "
        "are clipped and recorded, larger ones rejected",
    )
    concurrency: int = Field(4, ge=1, le=256)
    seed: int = 0
    allow_fallback: bool = Field(
        False, description="let prior weights from a run that could not reach the backend replace stored LLM weights"
    )
    judge: Literal["off", "on"] = Field(
        "off", description="a second LLM call flags weights that contradict the ad; flagged batches are redone once"
    )

    @field_validator("judge", mode="before")
    @classmethod
    def _judge_from_bool(cls, value: Any) -> Any:
        # YAML 1.1 reads the words on/off as booleans
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class CalibrationConfig(BaseModel):
    model_config = _STRICT
    scale: Literal["unit", "neighbours"] = "neighbours"
    alpha_weighting: Literal["similarity", "mean"] = "similarity"
    alpha_source: Literal["neighbours", "learned"] = Field(
        "neighbours",
        description="target mean CTR: the retrieved neighbours' (see alpha_weighting) or the learned prior's "
        "estimate (needs prior.name learned or blend)",
    )
    user_sample: int = Field(20000, ge=1)


class WarmConfig(BaseModel):
    model_config = _STRICT
    min_impressions: int = Field(300, ge=1)
    min_clicks: int = Field(5, ge=1)
    l2_c: float = Field(1.0, gt=0, description="inverse L2 strength of the per-ad regressions")


class GateConfig(BaseModel):
    """Deployment gate: compare the backend's backtest with the weight prior before materializing."""

    model_config = _STRICT
    mode: Literal["off", "warn", "refuse", "blend"] = "off"


class InputsConfig(BaseModel):
    """Limits on what is read from the repo: user feature values, ad texts and ad images."""

    model_config = _STRICT
    max_missing_share: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="largest share of one user feature's values that may be missing or non-finite (imputed "
        "with the feature's finite mean); above it reading users fails",
    )
    max_title_chars: int = Field(300, ge=1, description="longer ad titles are cut (with a warning)")
    max_caption_chars: int = Field(500, ge=0, description="longer ad captions are cut (with a warning)")
    image_roots: tuple[str, ...] = Field(
        (), description="folders ad images may be read from (relative to the repo); empty: the repo's data folder"
    )
    max_image_bytes: int = Field(5_000_000, ge=1, description="larger ad images are not sent")
    allow_remote_images: bool = Field(False, description="pass http(s) image URIs to the LLM as they are")

    @field_validator("image_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        # environment variables hold one string: folders separated like PATH
        return tuple(p for p in value.split(os.pathsep) if p) if isinstance(value, str) else value


class PriorsFilterConfig(BaseModel):
    """How ``candidates="priors"`` uses a user's predicted advertisers when ranking (see ``userpriors/filter.py``)."""

    model_config = _STRICT
    mode: Literal["restrict", "boost"] = Field(
        "restrict",
        description="restrict: reserve `quota` of the k slots for ads of the predicted advertisers (best first), the "
        "rest to the best of all remaining ads; boost: order by ctr * (1 + boost * the advertiser's prior score)",
    )
    advertisers: int = Field(5, ge=1, le=200, description="how many of the user's predicted advertisers count")
    quota: float = Field(1.0, ge=0.0, le=1.0, description="restrict: share of the k slots reserved for them")
    boost: float = Field(1.0, ge=0.0, le=100.0, description="boost: the multiplier's strength (0: plain ranking)")


class UserPriorsConfig(BaseModel):
    """User priors (``llmhyper priors``): which users are inferred, what the prompt holds, how lists are judged."""

    model_config = _STRICT
    k: int = Field(20, ge=1, le=200, description="advertisers in each user's ranked list")
    max_interests: int = Field(5, ge=0, le=20, description="interests asked for per user")
    active_days: int = Field(90, ge=1, description="a daily run selects users with an event in this many days")
    history_days: int = Field(180, ge=1, description="events this old or newer enter the profile")
    pool_top: int = Field(20, ge=0, description="top advertisers of the period added to every user's candidates")
    pool_max: int = Field(60, ge=1, description="largest candidate pool (the user's own advertisers come first)")
    token_budget: int = Field(500, ge=50, description="estimated tokens the profile text may take")
    min_z: float = Field(1.0, ge=0, description="user features this many standard deviations from the mean are shown")
    max_features: int = Field(6, ge=0, description="most user features shown in a profile")
    fallback: Literal["frequent", "popularity", "cooccurrence"] = Field(
        "frequent", description="the baseline that replaces an answer that failed validation twice"
    )
    chunk_size: int = Field(32, ge=1, description="users per checkpointed chunk")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(400, ge=16, description="tokens an answer may take")
    window_days: int = Field(30, ge=1, description="evaluate: label window after the snapshot")
    eval_users: int = Field(300, ge=2, description="evaluate: held-out users sampled (LLM calls per run)")
    bootstrap: int = Field(1000, ge=10, description="evaluate: bootstrap resamples for the intervals")
    eval_share: float = Field(
        0.3,
        gt=0.0,
        lt=1.0,
        description="share of users held out for evaluate (chosen by a hash of the user id); sft-data never uses them",
    )
    use_as_features: bool = Field(
        False,
        description="register the view user_prior_features as user features (read by feast apply: re-apply, then "
        "retrain, after changing it); off keeps the feature schema and every LLM-HYPER number unchanged",
    )
    seed: int = 0
    filter: PriorsFilterConfig = PriorsFilterConfig()


class RayConfig(BaseModel):
    """Where ``engine: ray`` runs (see llmhyper_feast/engine/)."""

    model_config = _STRICT
    address: str = Field(
        "", description="empty: start a local Ray instance; host:port, ray://host:port or auto: join that cluster"
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance (default: all)")
    max_concurrency_per_worker: int | None = Field(
        None, ge=1, le=256, description="LLM calls in flight per Ray worker (default: generation.concurrency)"
    )
    max_retries: int = Field(3, ge=0, le=20, description="times a task is rerun when its worker dies")

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        from llmhyper_feast.engine.ray_engine import check_address

        if value.strip():
            check_address(value.strip())
        return value.strip()


class Settings(BaseModel):
    """Everything llmhyper.yaml may hold."""

    model_config = _STRICT
    embedder: BackendConfig = BackendConfig(name="minilm")
    llm: BackendConfig = BackendConfig(name="local")
    prior: BackendConfig = BackendConfig(name="knn")
    generation: GenerationConfig = GenerationConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    warm: WarmConfig = WarmConfig()
    gate: GateConfig = GateConfig()
    inputs: InputsConfig = InputsConfig()
    user_priors: UserPriorsConfig = UserPriorsConfig()
    engine: str = Field("local", description="where heavy jobs run: local (this process) or ray (see ray.*)")
    ray: RayConfig = RayConfig()

    @field_validator("engine")
    @classmethod
    def _check_engine(cls, value: str) -> str:
        from llmhyper_feast.engine import available_engines

        if value not in ("local", "ray") and ":" not in value and value not in available_engines():
            raise ValueError(f"unknown engine; choose one of {', '.join(available_engines())} (or pkg.mod:Class)")
        return value

    def with_overrides(self, **flags: Any) -> Settings:
        """A copy with dotted-key overrides (``{"generation.shots": 3}``); None values are ignored."""
        data = self.model_dump()
        _apply_layer(data, {k: v for k, v in flags.items() if v is not None}, "command-line flags")
        return _validate(data, source="command-line flags")


def _validate(data: dict[str, Any], source: str) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"'{'.'.join(str(p) for p in err['loc'])}': {err['msg']} (got {err.get('input')!r})" for err in exc.errors()
        )
        raise ConfigError(f"Invalid settings in {source}: {problems}. Fix these keys and try again.") from None


def _set(data: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"Invalid settings in {source}: '{dotted}' sets a key inside '{part}', "
                f"which holds {child!r}, not a mapping."
            )
        node = child
    node[leaf] = value


def _apply_layer(data: dict[str, Any], layer: Mapping[str, Any], source: str) -> None:
    """Apply one precedence layer of dotted keys; naming another plugin drops its old options."""
    for section in _PLUGIN_SECTIONS:
        name = layer.get(f"{section}.name")
        if name is not None and name != (data.get(section) or {}).get("name"):
            data[section] = {"name": name, "options": {}}
    for dotted, value in layer.items():
        if isinstance(value, dict) and dotted in _PLUGIN_SECTIONS:
            if value.get("name") not in (None, (data.get(dotted) or {}).get("name")):
                data[dotted] = {"name": value["name"], "options": {}}
            for key, sub in value.items():
                if key == "options" and isinstance(sub, dict):
                    data[dotted].setdefault("options", {}).update(sub)
                else:
                    _set(data, f"{dotted}.{key}", sub, source)
            continue
        _set(data, dotted, value, source)


def env_layer(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The dotted keys set by ``LLMHYPER_*`` environment variables (values stay strings)."""
    env = os.environ if environ is None else environ
    layer: dict[str, str] = {}
    for var, value in sorted(env.items()):
        if not var.startswith(ENV_PREFIX) or var in _ENV_IGNORED or value == "":
            continue
        if var in ENV_ALIASES:
            layer[ENV_ALIASES[var]] = value
        elif "__" in var:
            layer[var[len(ENV_PREFIX) :].lower().replace("__", ".")] = value
        else:
            raise ConfigError(
                f"Unknown environment variable {var}. Settings use LLMHYPER_<SECTION>__<KEY> "
                f"(e.g. LLMHYPER_GENERATION__SHOTS=3) or one of {', '.join(sorted(ENV_ALIASES))}; unset it."
            )
    return layer


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and not dotted.endswith(".options"):
            out.update(_flatten(value, dotted + "."))
        elif isinstance(value, dict) and dotted.endswith(".options"):
            out.update({f"{dotted}.{k}": v for k, v in value.items()})
        else:
            out[dotted] = value
    return out


def _check_no_secrets(data: Mapping[str, Any], path: Path) -> None:
    for dotted in _flatten(data):
        leaf = dotted.rsplit(".", 1)[-1].lower()
        if any(word in leaf for word in _SECRET_WORDS):
            raise ConfigError(
                f"{path} sets '{dotted}', a secret. Secrets are read from environment variables only "
                "(e.g. OPENAI_API_KEY for the openai backend): remove the key from the file and export it instead."
            )


def read_config_file(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path`` ({} when absent); errors name the file."""
    if not path.exists():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}. Fix the file or delete it to use the defaults.") from None
    loaded = loaded or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of settings. Got {type(loaded).__name__} instead.")
    _check_no_secrets(loaded, path)
    return loaded


def resolve_settings(
    repo: str | Path, flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Default < ``<repo>/llmhyper.yaml`` < environment < ``flags`` (dotted keys; None means unset)."""
    path = Path(repo) / CONFIG_FILE
    data = copy.deepcopy(read_config_file(path))
    _validate(data, source=str(path))  # name the file when the file itself is wrong
    data = Settings.model_validate(data).model_dump()
    _apply_layer(data, env_layer(environ), "environment variables")
    _validate(data, source=f"environment variables (with {path})")
    _apply_layer(data, {k: v for k, v in (flags or {}).items() if v is not None}, "command-line flags")
    return _validate(data, source="command-line flags")


def load_settings(repo: str | Path) -> Settings:
    """Settings of ``repo`` from its file and the environment (no flags)."""
    return resolve_settings(repo)
