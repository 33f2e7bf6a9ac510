"""s2s: the Snap2Story backend (REST API, Redis job queue, workers, live progress)."""

__version__ = "0.1.0"
