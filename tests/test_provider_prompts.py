"""Prompts: the catalog's words joined, the hero's name treated as data."""

from __future__ import annotations

import itertools

import pytest

from s2s.catalog import Catalog
from s2s.providers.base import GenerationRequest
from s2s.providers.prompts import FALLBACK_NAME, MAX_NAME_CHARS, build_prompt, clean_name

CATALOG = Catalog.load()


def request(hero: str = "Mia", theme: str = "space", style: str = "cartoon", kind: str = "cover"):
    return GenerationRequest(job_id="job", hero_name=hero, theme=CATALOG.themes[theme], style=CATALOG.styles[style],
                             kind=CATALOG.kinds[kind], photo=b"", photo_content_type="image/png")


def flow(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("theme, style, kind", list(itertools.product(CATALOG.themes, CATALOG.styles, CATALOG.kinds)))
def test_every_theme_style_and_kind_makes_a_complete_prompt(theme, style, kind):
    prompt = build_prompt(request("Mia", theme, style, kind))
    t, s = CATALOG.themes[theme], CATALOG.styles[style]
    assert flow(t.prompt) in prompt and flow(s.prompt) in prompt
    assert "{" not in prompt and "}" not in prompt, "no placeholder left unfilled"
    assert 'named "Mia"' in prompt
    if "{title}" in CATALOG.kinds[kind].prompt:
        assert f'"{t.title.replace("{hero}", "Mia")}"' in prompt


@pytest.mark.parametrize("name", ["{title}", "{0.__class__}", "{hero}", "{kind}", "{0.__init__.__globals__}",
                                  "%(hero)s", "$hero"])
def test_a_name_that_looks_like_a_template_appears_literally(name):
    prompt = build_prompt(request(name))
    assert f'named "{name}"' in prompt
    assert f'the title "{name} Among the Stars"' in prompt
    assert prompt.count(flow(CATALOG.kinds["cover"].prompt)[:40]) == 1, "the frame was filled once, not again"


@pytest.mark.parametrize("raw, clean", [
    ("  Mia\n\tRose  ", "Mia Rose"),
    ("Mi\u200ba\u202e", "Mia"),  # zero-width space and a right-to-left override: invisible, dropped
    ('Mia "the brave"', "Mia 'the brave'"),  # the prompt quotes the name: no quote may end it early
    ("\x00\x07", FALLBACK_NAME),
    ("", FALLBACK_NAME),
    ("Ｍｉａ", "Mia"),  # full-width letters, as NFKC reads them
])
def test_the_name_is_cleaned(raw, clean):
    assert clean_name(raw) == clean


def test_the_name_is_capped():
    assert clean_name("A" * 500) == "A" * MAX_NAME_CHARS
    assert len(build_prompt(request("B" * 500))) < len(build_prompt(request("B"))) + 3 * MAX_NAME_CHARS
