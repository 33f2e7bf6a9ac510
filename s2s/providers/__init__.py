"""Image providers: ``local`` (offline Pillow renderer), ``noop`` (benchmarks), ``openai`` and ``qwen``."""

from __future__ import annotations

import redis.asyncio as aioredis

from s2s.keys import Keys
from s2s.providers.base import GeneratedImage, GenerationRequest, Provider, ProviderError, Report
from s2s.settings import Settings, SettingsError

__all__ = ["GeneratedImage", "GenerationRequest", "Provider", "ProviderError", "Report", "make_provider"]


def make_provider(settings: Settings, redis: aioredis.Redis | None = None) -> Provider:
    """The provider the settings choose (S2S_PROVIDER, or by which API key is set).

    With ``redis``, the AI providers keep to their account's limits across every worker
    (:mod:`s2s.ratelimit`); without it (a one-off script) each process is on its own.
    """
    name = settings.effective_provider
    if name == "noop":
        from s2s.providers.noop import NoopProvider

        return NoopProvider(delay_ms=settings.noop_delay_ms, fail_attempts=settings.noop_fail_attempts)
    if name == "local":
        from s2s.providers.local import LocalProvider

        return LocalProvider()
    if name == "openai":
        if not settings.openai_api_key:
            raise SettingsError("OPENAI_API_KEY: must be set when S2S_PROVIDER=openai")
        from s2s.providers.openai_images import OpenAIProvider

        provider, per_minute, concurrency = OpenAIProvider(settings), settings.openai_rpm, settings.openai_concurrency
    elif name == "qwen":
        if not settings.qwen_api_key:
            raise SettingsError("QWEN_3_IMAGE_EDIT_KEY: must be set when S2S_PROVIDER=qwen")
        from s2s.providers.qwen_images import QwenProvider

        provider, per_minute, concurrency = QwenProvider(settings), settings.qwen_rpm, settings.qwen_concurrency
    else:
        raise SettingsError(f"S2S_PROVIDER={name}: unknown provider")
    if redis is None:
        return provider
    from s2s.providers.limited import RateLimitedProvider
    from s2s.ratelimit import RateLimiter

    limiter = RateLimiter(redis, Keys(settings.key_prefix), provider.name, per_minute=per_minute,
                          concurrency=concurrency)
    return RateLimitedProvider(provider, limiter)
