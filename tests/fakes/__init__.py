"""Fake upstreams for the AI providers, following their documented HTTP contracts (tests only)."""
