"""Name and version the exporters write into every model and manifest."""

EXPORTER_NAME = "llmhyper-feast-exporters"
EXPORTER_VERSION = "0.1.0"
