"""Image providers: ``local`` (offline Pillow renderer), ``noop`` (benchmarks), and the AI ones."""

from __future__ import annotations

from s2s.providers.base import GeneratedImage, GenerationRequest, Provider, ProviderError, Report
from s2s.settings import Settings

__all__ = ["GeneratedImage", "GenerationRequest", "Provider", "ProviderError", "Report", "make_provider"]


def make_provider(settings: Settings) -> Provider:
    """The provider the settings choose (S2S_PROVIDER, or by which API key is set)."""
    name = settings.effective_provider
    if name == "noop":
        from s2s.providers.noop import NoopProvider

        return NoopProvider(delay_ms=settings.noop_delay_ms, fail_attempts=settings.noop_fail_attempts)
    if name == "local":
        from s2s.providers.local import LocalProvider

        return LocalProvider()
    raise NotImplementedError(f"S2S_PROVIDER={name}: this provider is not built yet; use local or noop")
