"""Exceptions raised by llmhyper-feast.

Every error says what was wrong, what was expected and how to fix it. The tree::

    LLMHyperError
    ├── ConfigError(ValueError)            bad llmhyper.yaml, flag or env value
    ├── FeatureRepoError(ValueError)       missing/broken Feast repo or feature definitions
    ├── DataError(ValueError)              bad rows: ad without title, missing user, ...
    ├── BackendError(RuntimeError)         LLM/embedder unreachable, auth, rate limit, timeout
    │   └── BackendNotFoundError(KeyError) unknown backend name
    ├── AnswerError(ValueError)            an LLM answer failed validation
    ├── CalibrationError(ValueError)       weights/alpha/users that cannot be calibrated
    └── ExportError(RuntimeError)          a model could not be exported
"""

from __future__ import annotations


class LLMHyperError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(LLMHyperError, ValueError):
    """A configuration value is invalid."""


class FeatureRepoError(LLMHyperError, ValueError):
    """The Feast feature repo or its definitions cannot be used."""


class DataError(LLMHyperError, ValueError):
    """Input rows are missing or malformed."""


class BackendError(LLMHyperError, RuntimeError):
    """A backend (LLM or embedder) failed."""


class BackendNotFoundError(BackendError, KeyError):
    """No backend is registered under the requested name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class AnswerError(LLMHyperError, ValueError):
    """An LLM answer did not pass validation."""


class CalibrationError(LLMHyperError, ValueError):
    """Weights cannot be normalised or calibrated."""


class ExportError(LLMHyperError, RuntimeError):
    """A model could not be exported."""
