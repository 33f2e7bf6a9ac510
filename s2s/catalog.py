"""Themes, styles and kinds: the storybook choices, read from ``config/`` as data.

The API validates ``themeId``/``styleKey``/``kind`` against this catalog, the
offline renderer draws from it, and the AI providers build their prompts from
its text, so adding a theme is an edit to a TOML file, not to code.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from attrs import field, frozen

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


class CatalogError(ValueError):
    """A file in ``config/`` is missing a field or names something unknown."""


@frozen
class Theme:
    id: str
    name: str
    title: str  # cover title template; ``{hero}`` is the only placeholder
    tagline: str
    palette: tuple[str, ...]  # hex colours, background first
    motif: str  # what the offline renderer scatters around the hero
    prompt: str


@frozen
class Style:
    id: str
    name: str
    effect: str  # the offline renderer's filter chain for this style
    prompt: str


@frozen
class Kind:
    id: str
    name: str
    width: int
    height: int
    prompt: str


@frozen
class Catalog:
    themes: Mapping[str, Theme]
    styles: Mapping[str, Style]
    kinds: Mapping[str, Kind]
    default_theme: str = field(default="adventure")
    default_style: str = field(default="watercolor")
    default_kind: str = field(default="cover")

    @classmethod
    def load(cls, directory: Path | None = None) -> Catalog:
        """Read ``themes.toml``, ``styles.toml`` and ``kinds.toml``.

        ``directory`` defaults to the ``config/`` shipped with the package.
        """
        base = Path(directory) if directory else default_config_dir()
        themes = {
            key: Theme(
                id=key,
                name=_req(entry, "name", "themes", key),
                title=_req(entry, "title", "themes", key),
                tagline=entry.get("tagline", ""),
                palette=tuple(_req(entry, "palette", "themes", key)),
                motif=entry.get("motif", "stars"),
                prompt=_req(entry, "prompt", "themes", key).strip(),
            )
            for key, entry in _read(base / "themes.toml").items()
        }
        styles = {
            key: Style(
                id=key,
                name=_req(entry, "name", "styles", key),
                effect=entry.get("effect", key),
                prompt=_req(entry, "prompt", "styles", key).strip(),
            )
            for key, entry in _read(base / "styles.toml").items()
        }
        kinds = {
            key: Kind(
                id=key,
                name=_req(entry, "name", "kinds", key),
                width=int(_req(entry, "width", "kinds", key)),
                height=int(_req(entry, "height", "kinds", key)),
                prompt=_req(entry, "prompt", "kinds", key).strip(),
            )
            for key, entry in _read(base / "kinds.toml").items()
        }
        catalog = cls(themes=themes, styles=styles, kinds=kinds)
        for name, table, default in (
            ("theme", themes, catalog.default_theme),
            ("style", styles, catalog.default_style),
            ("kind", kinds, catalog.default_kind),
        ):
            if default not in table:
                raise CatalogError(f"config in {base} has no default {name} {default!r}")
        return catalog

    def to_json(self) -> dict:
        """The public listing of choices (ids and display names)."""
        return {
            "themes": [{"id": t.id, "name": t.name, "tagline": t.tagline} for t in self.themes.values()],
            "styles": [{"key": s.id, "name": s.name} for s in self.styles.values()],
            "kinds": [{"id": k.id, "name": k.name} for k in self.kinds.values()],
            "defaults": {"themeId": self.default_theme, "styleKey": self.default_style, "kind": self.default_kind},
        }


def default_config_dir() -> Path:
    """``config/`` of a source checkout, else the copy installed inside the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "config", here / "config"):
        if (candidate / "themes.toml").is_file():
            return candidate
    raise CatalogError(f"no config/ directory beside {here}; set S2S_CONFIG_DIR")


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise CatalogError(f"missing catalog file {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{path}: {exc}") from exc


def _req(entry: dict, name: str, table: str, key: str):
    try:
        return entry[name]
    except KeyError:
        raise CatalogError(f"{table}.toml: [{key}] needs a {name!r}") from None
