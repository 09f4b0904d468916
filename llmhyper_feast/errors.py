"""Exceptions raised by llmhyper-feast.

Every error says what was wrong, what was expected and how to fix it. Each family has one
exit code (the CLI) and one HTTP status (the ranking service)::

    LLMHyperError                                   exit 1   HTTP 500
    ├── InputError(ValueError)        caller's input  exit 2   HTTP 422
    │   ├── ConfigError               llmhyper.yaml, flag or env value
    │   └── NotFoundError(KeyError)   a name or id that does not exist   HTTP 404
    │       ├── BackendNotFoundError  unknown LLM backend / embedder / prior
    │       ├── UnknownUserError      user without online features
    │       └── UnknownAdError        ad id not in the export
    ├── RepoError                     the repo's definitions or data    exit 3   HTTP 500
    │   ├── FeatureRepoError(ValueError)   missing/broken Feast repo or feature definitions
    │   ├── DataError(ValueError)          bad stored rows: ad without title, NaN features, ...
    │   ├── CalibrationError(ValueError)   weights/alpha/users that cannot be calibrated
    │   └── ExportError(RuntimeError)      a model could not be exported or loaded
    │       └── StaleExportError           export made for other feature definitions   HTTP 503
    ├── UnavailableError(RuntimeError)  a store or the repo is not usable now   exit 4   HTTP 503
    │   ├── StoreUnavailableError     online store missing or corrupt
    │   └── RepoLockedError           another run holds the repo's lock
    ├── BackendError(RuntimeError)    LLM/embedder unreachable, auth, rate limit, timeout   exit 5   HTTP 502
    │   └── AnswerError(ValueError)   an LLM answer failed validation
    └── GateRefusedError              the deployment gate refused to materialize   exit 6
"""

from __future__ import annotations

__all__ = [
    "AnswerError",
    "BackendError",
    "BackendNotFoundError",
    "CalibrationError",
    "ConfigError",
    "DataError",
    "ExportError",
    "FeatureRepoError",
    "GateRefusedError",
    "InputError",
    "LLMHyperError",
    "NotFoundError",
    "RepoError",
    "RepoLockedError",
    "StaleExportError",
    "StoreUnavailableError",
    "UnavailableError",
    "UnknownAdError",
    "UnknownUserError",
    "exit_code",
    "http_status",
]


class LLMHyperError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code: int = 1
    http_status: int = 500


class InputError(LLMHyperError, ValueError):
    """The caller's input (arguments, flags, a request body) is invalid."""

    exit_code = 2
    http_status = 422


class ConfigError(InputError):
    """A configuration value is invalid."""


class NotFoundError(InputError, KeyError):
    """A name or id given by the caller does not exist."""

    http_status = 404

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class BackendNotFoundError(NotFoundError):
    """No LLM backend, embedder or prior is registered under the requested name."""


class UnknownUserError(NotFoundError):
    """The user has no row in the online store."""

    def __init__(self, message: str, user_ids: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.user_ids = list(user_ids)


class UnknownAdError(NotFoundError):
    """An ad id is not in the loaded export."""

    def __init__(self, message: str, ad_ids: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.ad_ids = list(ad_ids)


class RepoError(LLMHyperError):
    """The repo's definitions or stored data cannot be used."""

    exit_code = 3


class FeatureRepoError(RepoError, ValueError):
    """The Feast feature repo or its definitions cannot be used."""


class DataError(RepoError, ValueError):
    """Stored rows are missing or malformed."""


class CalibrationError(RepoError, ValueError):
    """Weights cannot be normalised or calibrated."""


class ExportError(RepoError, RuntimeError):
    """A model could not be exported or loaded."""


class StaleExportError(ExportError):
    """The export was made for other feature definitions than the registry holds."""

    http_status = 503  # serving resumes once a fresh export is loaded


class UnavailableError(LLMHyperError, RuntimeError):
    """A store or the repo cannot be used right now; retrying after the fix works."""

    exit_code = 4
    http_status = 503


class StoreUnavailableError(UnavailableError):
    """The online store is missing, corrupt or unreachable."""


class RepoLockedError(UnavailableError):
    """Another run holds the repo's lock."""


class BackendError(LLMHyperError, RuntimeError):
    """A backend (LLM or embedder) failed."""

    exit_code = 5
    http_status = 502


class AnswerError(BackendError, ValueError):
    """An LLM answer did not pass validation."""


class GateRefusedError(LLMHyperError):
    """The deployment gate refused to write the backend's weights."""

    exit_code = 6


def exit_code(error: BaseException) -> int:
    """The CLI exit code for ``error`` (1 for anything not ours)."""
    return error.exit_code if isinstance(error, LLMHyperError) else 1


def http_status(error: BaseException) -> int:
    """The HTTP status for ``error`` (500 for anything not ours)."""
    return error.http_status if isinstance(error, LLMHyperError) else 500
