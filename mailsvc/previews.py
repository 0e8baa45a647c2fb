"""Template previews (dev mode): ``GET /previews`` lists every email template, ``GET /previews/<name>``
renders its subject, HTML and text with the sample context in ``<name>.sample.json``, like Rails'
mailer previews.

Why a template error is a page and not a 500: the preview is where a template's author looks
for mistakes, so it names the file and line, shows the source around it, and answers 422 so
a script that fetches every preview can also spot broken templates.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from quart import Blueprint, Quart, Response, abort, render_template

from .config import ServiceConfig
from .errors import TemplateError
from .pagesafety import IFRAME_SANDBOX, framed_html, secure_page
from .rendering import TemplateRenderer, template_name_ok
from .services import services
from .templatepaths import email_folders

__all__ = ["Preview", "render_preview", "register"]

bp = Blueprint("previews", __name__)
_SUFFIXES = (".subject.txt", ".txt", ".html")


@dataclass(slots=True)
class PreviewError:
    message: str
    file: str | None = None
    line: int | None = None
    excerpt: list[tuple[int, str]] = field(default_factory=list)  # (line number, text) around the line


@dataclass(slots=True)
class Preview:
    name: str
    files: list[str]
    context: dict[str, Any] | None = None
    sample_file: str | None = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    error: PreviewError | None = None


def _excerpt(path: Path, line: int, around: int = 3) -> list[tuple[int, str]]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    lo, hi = max(1, line - around), min(len(lines), line + around)
    return [(n, lines[n - 1]) for n in range(lo, hi + 1)]


def _relative(renderer: TemplateRenderer, path: Path) -> str | None:
    """``path`` as a template file name (``welcome.html``) if it lies in one of the renderer's folders."""
    resolved = path.resolve()
    for folder in renderer.folders:
        if folder.resolve() in resolved.parents:
            return resolved.relative_to(folder.resolve()).as_posix()
    return None


def _where(exc: BaseException, renderer: TemplateRenderer) -> tuple[Path | None, int | None]:
    """The template file and line an error came from, read off the traceback Jinja rewrites.

    ``TemplateError.line`` is set for syntax errors only; for a missing variable or a
    failing expression the template's own frame in the traceback carries the line.
    """
    found: tuple[Path | None, int | None] = (None, None)
    seen: BaseException | None = exc
    while seen is not None:
        tb: TracebackType | None = seen.__traceback__
        for frame, lineno in traceback.walk_tb(tb):
            path = Path(frame.f_code.co_filename)
            if path.suffix in (".html", ".txt") and _relative(renderer, path) is not None:
                found = (path, lineno)
        if found[0] is not None:
            return found
        seen = seen.__cause__
    return found


def _error(exc: BaseException, renderer: TemplateRenderer, name: str) -> PreviewError:
    path, line = _where(exc, renderer)
    if isinstance(exc, TemplateError):
        message, line = exc.reason, exc.line or line
        if path is None and exc.line and "syntax error in " in exc.reason:
            path = renderer.path(exc.reason.split("syntax error in ", 1)[1].split(":", 1)[0])
    else:
        message = f"{type(exc).__name__}: {exc}"
    rel = _relative(renderer, path) if path is not None else None
    if rel is not None:  # the page already says which file; don't repeat it in the message
        message = message.replace(f"syntax error in {rel}: ", "syntax error: ", 1)
    return PreviewError(message, rel, line, _excerpt(path, line) if path is not None and line else [])


def render_preview(renderer: TemplateRenderer, name: str) -> Preview:
    """Render ``name`` with its sample context; errors are returned in the Preview, never raised."""
    files = [f"{name}{s}" for s in _SUFFIXES if renderer.path(f"{name}{s}") is not None]
    preview = Preview(name=name, files=files)
    sample = renderer.path(f"{name}.sample.json")
    context: dict[str, Any] = {}
    if sample is not None:
        preview.sample_file = sample.name
        try:
            loaded = json.loads(sample.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            preview.error = PreviewError(
                f"invalid JSON: {exc.msg}", sample.name, exc.lineno, _excerpt(sample, exc.lineno)
            )
            return preview
        if not isinstance(loaded, dict):
            preview.error = PreviewError("the sample context must be a JSON object", sample.name, 1)
            return preview
        context = loaded
    preview.context = context
    try:
        preview.subject, preview.text, preview.html = renderer.render_parts(name, context)
    except Exception as exc:
        preview.error = _error(exc, renderer, name)
        if sample is None and isinstance(exc, TemplateError) and "variable missing" in exc.reason:
            preview.error.message += f" (add {name}.sample.json beside the template with sample values)"
    return preview


def _renderer() -> TemplateRenderer:
    renderer = services().previews
    if renderer is None:
        abort(404)
    return renderer


def _known(name: str) -> str:
    if not template_name_ok(name) or name not in _renderer().names():
        abort(404)
    return name


@bp.get("/previews")
async def index() -> Response:
    renderer = _renderer()
    items = [render_preview(renderer, n) for n in renderer.names()]
    return secure_page(Response(await render_template("previews.html", items=items, folder=renderer.folder)))


@bp.get("/previews/<path:name>")
async def show(name: str) -> Response:
    preview = render_preview(_renderer(), _known(name))
    html = await render_template(
        "previews_show.html",
        p=preview,
        sandbox=IFRAME_SANDBOX,
        context_json=json.dumps(preview.context, indent=2, ensure_ascii=False) if preview.context is not None else None,
    )
    return secure_page(Response(html, status=422 if preview.error else 200))


@bp.get("/previews/<path:name>/html")
async def frame(name: str) -> Response:
    preview = render_preview(_renderer(), _known(name))
    if preview.error is not None or preview.html is None:
        abort(404)
    return framed_html(preview.html)


def register(app: Quart, service: ServiceConfig) -> TemplateRenderer | None:
    """Add /previews in dev mode only (as Rails shows mailer previews in development only)."""
    if not service.dev_mode:
        return None
    renderer = TemplateRenderer(email_folders(service.templates))
    renderer.env.auto_reload = True  # an edited template shows on the next reload of the page
    # ... and so does a new project file overriding a packaged one, which Jinja's cache (checking only
    # the mtime of the file it loaded) would not notice: previews compile afresh each time.
    renderer.env.cache = None
    app.register_blueprint(bp)
    return renderer
