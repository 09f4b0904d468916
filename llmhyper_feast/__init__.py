"""llmhyper-feast: an LLM writes each cold ad's linear CTR model; Feast stores it; ONNX serves it.

The public API is listed in ``__all__``; submodules load lazily so that ``import llmhyper_feast``
stays cheap (Feast, torch and transformers are imported only when used).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "FeatureDefinition": "features",
    "FeatureSchema": "features",
    "Ad": "features",
    "LLMHyperError": "errors",
    "Settings": "config",
    "load_settings": "config",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'llmhyper_feast' has no attribute {name!r}")
