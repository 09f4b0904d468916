"""Exceptions raised by the exporters package.

The tree::

    ExporterError
    ├── ExportInputError(ValueError)   an AdModelSet or an export_models argument is invalid
    ├── ManifestError(ValueError)      a manifest.json is missing, unreadable or incompatible
    └── VerificationError(RuntimeError) a written model disagrees with its test vectors

``exporters`` never imports ``llmhyper_feast``; callers there wrap these errors if they
want them inside their own tree.
"""

from __future__ import annotations

__all__ = ["ExportInputError", "ExporterError", "ManifestError", "VerificationError"]


class ExporterError(Exception):
    """Base class of every error the exporters package raises on purpose."""


class ExportInputError(ExporterError, ValueError):
    """The models to export, or an argument of the export, are invalid."""


class ManifestError(ExporterError, ValueError):
    """A manifest cannot be read, or does not match the export it should describe."""


class VerificationError(ExporterError, RuntimeError):
    """An exported model's outputs differ from its stored test vectors."""
