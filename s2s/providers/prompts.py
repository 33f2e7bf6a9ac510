"""One prompt for the AI providers, from the catalog's theme, style and kind text.

The words live in ``config/*.toml``; this module only joins them and puts the
hero's name in. The name is a parent's input, so it is treated as data, never as
a template: placeholders are filled in one pass (a name like ``{title}`` or
``{0.__class__}`` comes out exactly as typed, never expanded), invisible and
control characters are dropped, and its length is capped.
"""

from __future__ import annotations

import re
import unicodedata

from s2s.providers.base import GenerationRequest

#: The API accepts up to 64 characters (s2s.uploads); the cap here holds for any job, however it was queued.
MAX_NAME_CHARS = 64
FALLBACK_NAME = "our hero"

_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")
_QUOTES = str.maketrans({'"': "'", "\u201c": "'", "\u201d": "'", "\u201e": "'", "`": "'"})

_FRAME = (
    "{kind}\n\n"
    "The world of the story: {theme}\n\n"
    "Art style: {style}\n\n"
    'The hero is the child in the photo, named "{hero}". Keep the child\'s face, hair, skin tone and expression '
    "recognisable, and draw them as the main character. A picture for a children's book: gentle, safe and "
    "joyful, with no scary or violent details and no logos."
)


def clean_name(name: str) -> str:
    """The hero's name as it may appear in a prompt: visible characters, single spaces, capped, no double quotes."""
    text = unicodedata.normalize("NFKC", name or "")
    text = "".join(" " if unicodedata.category(c).startswith("Z") or c.isspace() else c
                   for c in text if not unicodedata.category(c).startswith("C") or c.isspace())
    text = " ".join(text.translate(_QUOTES).split())
    return text[:MAX_NAME_CHARS].rstrip() or FALLBACK_NAME


def fill(template: str, values: dict[str, str]) -> str:
    """Replace the ``{name}`` placeholders ``values`` knows, in one pass: other braces stay as written and
    inserted text is never rescanned (``str.format`` would do both wrong with a parent's input)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def build_prompt(request: GenerationRequest) -> str:
    """The edit instruction for this job's theme, style, kind and hero."""
    hero = clean_name(request.hero_name)
    values = {"hero": hero}
    values["title"] = fill(request.theme.title, values)
    parts = {"kind": _flow(fill(request.kind.prompt, values)), "theme": _flow(fill(request.theme.prompt, values)),
             "style": _flow(fill(request.style.prompt, values)), "hero": hero}
    return fill(_FRAME, parts)


def _flow(text: str) -> str:
    """TOML's hard-wrapped lines as one paragraph."""
    return " ".join(text.split())
