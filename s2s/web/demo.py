"""The browser side served by the API: /static/s2s-client.js always, the demo page at / with S2S_DEMO.

Frontends on other origins import the client module from here, so it is served
in every deployment (module scripts are fetched with CORS, hence the ``*``: it
is public code, sent without credentials). The demo page and its two files are
served only when ``settings.demo`` is on (``s2s up`` turns it on); otherwise
``/`` stays the JSON 404 every unknown path gets.
"""

from __future__ import annotations

import json
from pathlib import Path

import tornado.web

from s2s.settings import Settings
from s2s.web.describe import describe, error, operation
from s2s.web.handlers import _STATUS_NAMES

STATIC_DIR = Path(__file__).with_name("static")
CLIENT_FILES = frozenset({"s2s-client.js"})
DEMO_FILES = frozenset({"demo.js", "demo.css"})
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8"}
# the page runs only its own files: no inline script or style, nothing from elsewhere
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def served_files(settings: Settings) -> frozenset[str]:
    return CLIENT_FILES | DEMO_FILES if settings.demo else CLIENT_FILES


@describe("/static/{file}", get=lambda settings, catalog: operation(
    "getStaticFile", "meta", "The browser client module `s2s-client.js` (and, with S2S_DEMO, the demo page's files)",
    description="Public code: sent with `Access-Control-Allow-Origin: *` so frontends on other origins can import it; "
                "revalidated by ETag on every use.",
    parameters=[{"name": "file", "in": "path", "required": True, "schema": {"enum": sorted(served_files(settings))}}],
    responses={200: {"description": "The file.", "headers": {"ETag": {"required": True, "schema": {"type": "string"}}},
                     "content": {"text/javascript": {"schema": {"type": "string"}},
                                 "text/css": {"schema": {"type": "string"}}}},
               404: error("No such file.", "not_found")}))
class StaticHandler(tornado.web.StaticFileHandler):
    """A fixed set of files from ``static/``; ETag-revalidated on every use, so an upgrade shows at once."""

    def initialize(self, path: str, files: frozenset[str]) -> None:  # type: ignore[override]
        super().initialize(path)
        self.files = files

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Access-Control-Allow-Origin", "*")

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        if Path(absolute_path).name not in self.files:
            raise tornado.web.HTTPError(404)
        return super().validate_absolute_path(root, absolute_path)

    def get_content_type(self) -> str:
        return _TYPES.get(Path(self.absolute_path or "").suffix) or super().get_content_type()

    def get_cache_time(self, path, modified, mime_type) -> int:
        return 0

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")

    def write_error(self, status_code: int, **kwargs) -> None:
        """The API's error shape, never Tornado's HTML page."""
        self.clear_header("Content-Disposition")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if status_code == 404:
            message = f"Nothing at {self.request.path}."
        elif status_code == 405:
            self.set_header("Allow", "GET, HEAD")
            message = f"{self.request.method} is not allowed on {self.request.path}."
        else:
            message = self._reason
        self.finish(json.dumps({"error": message, "code": _STATUS_NAMES.get(status_code, "error")}))


@describe("/", get=operation(
    "getDemoPage", "meta", "The demo page (S2S_DEMO; without it, / is a 404 like any unknown path)",
    {200: {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}}))
class DemoPageHandler(StaticHandler):
    """``/``: the demo page, with a Content-Security-Policy that allows only its own files."""

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Content-Security-Policy", PAGE_CSP)
        self.set_header("Referrer-Policy", "no-referrer")

    def get(self, include_body: bool = True):  # type: ignore[override]
        return super().get("index.html", include_body)

    def head(self):  # type: ignore[override]
        return self.get(include_body=False)


def browser_routes(settings: Settings) -> list[tuple]:
    """The client module for every deployment; the demo page and its files only with ``settings.demo``."""
    routes: list[tuple] = [(r"/static/(.+)", StaticHandler, {"path": str(STATIC_DIR), "files": served_files(settings)})]
    if settings.demo:
        routes.append((r"/", DemoPageHandler, {"path": str(STATIC_DIR), "files": frozenset({"index.html"})}))
    return routes
