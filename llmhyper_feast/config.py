"""Settings of llmhyper-feast, read from ``<repo>/llmhyper.yaml``.

Precedence, highest first: CLI flag > environment variable > the YAML file > default.
Environment variables: ``LLMHYPER_LLM`` (backend name), ``LLMHYPER_MODEL`` (the backend's
``model`` option), ``LLMHYPER_EMBEDDER`` (embedder name), ``LLMHYPER_CONCURRENCY``.
Secrets (API keys) are never read from the file: backends take them from env vars.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

CONFIG_FILE = "llmhyper.yaml"

_STRICT = ConfigDict(extra="forbid", frozen=True)


class BackendConfig(BaseModel):
    """A named backend and the options passed to it."""

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
    max_abs: float = Field(3.0, gt=0)
    concurrency: int = Field(4, ge=1, le=256)
    seed: int = 0


class CalibrationConfig(BaseModel):
    model_config = _STRICT
    scale: Literal["unit", "neighbours"] = "neighbours"
    alpha_weighting: Literal["similarity", "mean"] = "similarity"
    user_sample: int = Field(20000, ge=1)


class WarmConfig(BaseModel):
    model_config = _STRICT
    min_impressions: int = Field(300, ge=1)
    min_clicks: int = Field(5, ge=1)
    l2_c: float = Field(1.0, gt=0, description="inverse L2 strength of the per-ad regressions")


class GateConfig(BaseModel):
    """Deployment gate: compare the backend's backtest with the kNN prior before materializing."""

    model_config = _STRICT
    mode: Literal["off", "warn", "refuse", "blend"] = "off"


class Settings(BaseModel):
    """Everything llmhyper.yaml may hold."""

    model_config = _STRICT
    embedder: BackendConfig = BackendConfig(name="minilm")
    llm: BackendConfig = BackendConfig(name="local")
    generation: GenerationConfig = GenerationConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    warm: WarmConfig = WarmConfig()
    gate: GateConfig = GateConfig()

    def with_overrides(self, **flags: Any) -> "Settings":
        """Return a copy with dotted-key overrides (``{"generation.shots": 3}``); None values are ignored."""
        data = self.model_dump()
        for dotted, value in flags.items():
            if value is None:
                continue
            *parents, leaf = dotted.split(".")
            node = data
            for part in parents:
                node = node[part]
            node[leaf] = value
        return _validate(data, source="command-line flags")


def _validate(data: dict[str, Any], source: str) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"'{'.'.join(str(p) for p in err['loc'])}': {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        )
        raise ConfigError(f"Invalid settings in {source}: {problems}. Fix these keys and try again.") from None


def _env_overrides(data: dict[str, Any]) -> None:
    env = os.environ
    if env.get("LLMHYPER_LLM"):
        data.setdefault("llm", {})
        if data["llm"].get("name") != env["LLMHYPER_LLM"]:
            data["llm"] = {"name": env["LLMHYPER_LLM"], "options": {}}
    if env.get("LLMHYPER_MODEL"):
        data.setdefault("llm", {"name": Settings().llm.name})
        data["llm"].setdefault("options", {})["model"] = env["LLMHYPER_MODEL"]
    if env.get("LLMHYPER_EMBEDDER"):
        data["embedder"] = {"name": env["LLMHYPER_EMBEDDER"], "options": {}}
    if env.get("LLMHYPER_CONCURRENCY"):
        try:
            data.setdefault("generation", {})["concurrency"] = int(env["LLMHYPER_CONCURRENCY"])
        except ValueError:
            raise ConfigError(
                f"LLMHYPER_CONCURRENCY must be an integer >= 1. Got {env['LLMHYPER_CONCURRENCY']!r} instead."
            ) from None


def load_settings(repo: str | Path) -> Settings:
    """Load ``<repo>/llmhyper.yaml`` (defaults when absent) with env overrides applied."""
    path = Path(repo) / CONFIG_FILE
    data: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of settings. Got {type(loaded).__name__} instead.")
        data = loaded
    _env_overrides(data)
    return _validate(data, source=str(path))
