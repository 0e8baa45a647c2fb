"""Email templates: one Jinja environment per template folder, built once.

Why: fastapi-mail rebuilds an environment (without autoescape) per send. Here the
HTML part is autoescaped, undefined variables are errors (a mail that says
"Dear ," is worse than no mail), and a missing text part is derived from HTML so
every message has a readable plain alternative.
"""

from __future__ import annotations

import itertools
import re
from collections import ChainMap
from collections.abc import Mapping, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.runtime
import markupsafe

from .cssinline import asks_for_inlining, inline_css
from .errors import TemplateError
from .message import Message

__all__ = ["TEMPLATE_NAME_PATTERN", "TemplateRenderer", "html_to_text", "template_name_ok"]

# Also the OpenAPI document's pattern for a template name (ECMA-262 reads it the same way).
TEMPLATE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_\-]*(/[A-Za-z0-9][A-Za-z0-9_\-]*)*$"
_NAME = re.compile(TEMPLATE_NAME_PATTERN)


def template_name_ok(name: str) -> bool:
    """Names are plain words and slashes: no dots, so no ``..`` escapes from the folder."""
    return bool(_NAME.fullmatch(name))


_DICT_ATTRIBUTES = frozenset(dir(dict))


class DictItemsFirst:
    """Environment mixin: ``item.url`` on a plain dict is ``item["url"]`` without raising AttributeError first.

    Why: contexts arrive as JSON, so every ``{{ item.url }}`` meets a dict, and
    Jinja's ``getattr`` tries the attribute, catches the AttributeError and only
    then looks the key up: about a fifth of rendering a newsletter. The result is
    the same: a plain dict has no attribute outside ``dir(dict)``, so for any other
    name Jinja would have fallen back to the item anyway.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and type(attribute) is str and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except (TypeError, LookupError):  # what Jinja (and its sandbox) catch around obj[attribute]
                return self.undefined(obj=obj, name=attribute)  # type: ignore[attr-defined]
        return super().getattr(obj, attribute)  # type: ignore[misc]


class _Environment(DictItemsFirst, jinja2.Environment):
    pass


_escape_inner = getattr(markupsafe, "_escape_inner", None)  # markupsafe's C escaper (private: used if present)
_new_str = str.__new__
_Markup = markupsafe.Markup


def _escape(s: Any, /) -> markupsafe.Markup:
    """``markupsafe.escape``, with the common cases (a plain ``str``, ``int`` or ``float``) in fewer calls.

    Why: an autoescaped template calls ``escape`` for every ``{{ value }}``, and
    markupsafe's does it in two Python calls (``escape``, then ``Markup.__new__``
    asking the escaped string for ``__html__``, which a plain ``str`` has not; for
    a number, ``hasattr`` first). The result is the same ``Markup``: a number's
    ``str`` has nothing to escape. Anything else goes to markupsafe.
    """
    kind = type(s)
    if kind is str:
        return _new_str(_Markup, _escape_inner(s))  # type: ignore[misc]
    if kind is int or kind is float:
        return _new_str(_Markup, str(s))
    return markupsafe.escape(s)


def _use_fast_escape(template: jinja2.Template) -> None:
    """Point the compiled template's module at :func:`_escape` (its code calls the ``escape`` it imported)."""
    namespace = template.root_render_func.__globals__
    if _escape_inner is not None and namespace.get("escape") is markupsafe.escape:
        namespace["escape"] = _escape


class TemplateRenderer:
    """Renders ``<name>.subject.txt``, ``<name>.txt`` and ``<name>.html`` from ``folder``.

    ``folder`` may be a search path: each file is taken from the first folder that has it,
    so a project's folder listed first overrides the packaged templates file by file.

    >>> r = TemplateRenderer("templates/email")            # doctest: +SKIP
    >>> r.render_message("thank_you", {"name": "Ann"}, recipients=["ann@example.com"])  # doctest: +SKIP
    """

    def __init__(self, folder: str | Path | Sequence[str | Path]) -> None:
        self.folders = tuple(Path(f) for f in ([folder] if isinstance(folder, str | Path) else folder))
        if not self.folders:
            raise ValueError("TemplateRenderer needs at least one folder")
        self.folder = self.folders[0]  # the first place looked in: the project's own, where one is configured
        loader = jinja2.FileSystemLoader([str(f) for f in self.folders])
        self.env: jinja2.Environment = _Environment(
            loader=loader,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            auto_reload=False,
        )
        # Compiled templates by file name. With auto_reload=False Jinja never re-reads a
        # file it compiled; remembering that it exists too saves a bulk send four
        # filesystem lookups per message. Files not found yet are looked for every time.
        self._compiled: dict[str, jinja2.Template] = {}
        # HTML files that carry cssinline.MARKER, by file name (read once with the compile, like _compiled).
        self._inlines: dict[str, bool] = {}

    def path(self, filename: str) -> Path | None:
        """The file ``filename`` (relative, e.g. ``welcome.html``) is read from: the first folder that has it."""
        for folder in self.folders:
            if (candidate := folder / filename).is_file():
                return candidate
        return None

    def names(self) -> list[str]:
        """Every template that has a subject file or a body part, in any of the folders."""
        found: set[str] = set()
        for folder in self.folders:
            for path in folder.rglob("*"):
                rel = path.relative_to(folder).as_posix()
                for suffix in (".subject.txt", ".txt", ".html"):
                    if rel.endswith(suffix):
                        base = rel[: -len(suffix)]
                        if template_name_ok(base):
                            found.add(base)
                        break
        return sorted(found)

    def exists(self, name: str) -> bool:
        cached = () if self.env.auto_reload else self._compiled
        return template_name_ok(name) and any(
            f"{name}{s}" in cached or self.path(f"{name}{s}") is not None for s in (".txt", ".html")
        )

    def _template(self, filename: str) -> jinja2.Template | None:
        """The compiled template, or None when the file does not exist (yet)."""
        if not self.env.auto_reload and (template := self._compiled.get(filename)) is not None:
            return template
        if self.path(filename) is None:
            return None
        template = self.env.get_template(filename)
        _use_fast_escape(template)
        if not self.env.auto_reload:  # the previews set it to show edits at once: no caching then
            self._compiled[filename] = template
        return template

    def _render(self, name: str, filename: str, variables: dict[str, Any]) -> str | None:
        """``template.render(context)``, given the globals and context already merged into ``variables``.

        Why: ``render`` copies the context and merges it with the globals for each of
        a message's three parts; the merge is done once per message here and shared
        (templates write their own variables to their own context, never to this dict).
        Errors go through Jinja's ``handle_exception`` as ``render`` does.
        """
        try:
            template = self._template(filename)
            if template is None:
                return None
            try:
                return self.env.concat(template.root_render_func(self._context(template, variables)))
            except Exception:
                self.env.handle_exception()
        except jinja2.UndefinedError as exc:
            raise TemplateError(name, f"variable missing from context: {exc.message}") from exc
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(name, f"syntax error in {filename}: {exc.message}", line=exc.lineno) from exc
        except jinja2.TemplateError as exc:  # e.g. an {% include %} of a missing file
            raise TemplateError(name, f"{filename}: {type(exc).__name__}: {exc.message}") from exc

    def _context(self, template: jinja2.Template, variables: dict[str, Any]) -> jinja2.runtime.Context:
        """``template.new_context(variables, shared=True)``, the same Context built without a ChainMap walk.

        Why: the Context keeps the names of the template's globals (``set(template.globals)``), and
        iterating that ChainMap runs in Python, ~3 us for each of a message's three parts. The same
        names come from its maps, merged in C, at every call (so a global added later is seen alike).
        """
        globals_ = template.globals
        names = (
            dict.fromkeys(itertools.chain.from_iterable(globals_.maps)) if isinstance(globals_, ChainMap) else globals_
        )
        return self.env.context_class(self.env, variables, template.name, template.blocks, globals=names)

    def render_parts(self, name: str, context: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
        """Return (subject, text, html); text is derived from html when only html exists."""
        if not self.exists(name):
            where = ", ".join(str(f) for f in self.folders)
            raise TemplateError(name, f"unknown template; expected {name}.txt or {name}.html in {where}")
        variables = dict(self.env.globals, **context)
        subject = (self._render(name, f"{name}.subject.txt", variables) or "").strip()
        text = self._render(name, f"{name}.txt", variables)
        html = self._render(name, f"{name}.html", variables)
        if html is not None and self._asks_for_inlining(f"{name}.html"):
            html = inline_css(name, html)
        if text is None and html is not None:
            text = html_to_text(html)
        return subject, text, html

    def _asks_for_inlining(self, filename: str) -> bool:
        """Whether the HTML file opts in to CSS inlining (its source read once, unless templates reload)."""
        if (known := self._inlines.get(filename)) is not None and not self.env.auto_reload:
            return known
        path = self.path(filename)
        asks = path is not None and asks_for_inlining(path.read_text(encoding="utf-8"))
        self._inlines[filename] = asks
        return asks

    def variables(self, name: str) -> tuple[frozenset[str], frozenset[str]]:
        """The context names the template reads: in any part, and in its subject.

        Why: the API's document tells a caller which ``context`` keys a named
        template needs (a missing one is a 422, the environment being strict).
        Names read only through ``{% include %}`` or ``{% extends %}`` are not seen.
        """
        every: set[str] = set()
        subject: set[str] = set()
        for suffix in (".subject.txt", ".txt", ".html"):
            path = self.path(f"{name}{suffix}")  # the project's override first, then the packaged one
            if path is None:
                continue
            found = jinja2.meta.find_undeclared_variables(self.env.parse(path.read_text(encoding="utf-8")))
            found -= set(self.env.globals)
            every |= found
            if suffix == ".subject.txt":
                subject |= found
        return frozenset(every), frozenset(subject)

    def render_message(self, name: str, context: Mapping[str, Any] | None = None, **fields: Any) -> Message:
        """Build a :class:`Message` from a template; ``fields`` are Message's own arguments."""
        subject, text, html = self.render_parts(name, context or {})
        fields.setdefault("subject", subject)
        return Message(body=text, html=html, **fields)


class _TextExtractor(HTMLParser):
    _BLOCK = {"p", "div", "br", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "li", "table", "ul", "ol", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip = 0
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip += 1
        elif tag in self._BLOCK:
            self.out.append("\n")
            if tag == "li":
                self.out.append("- ")
        elif tag == "a":
            self._href = dict(attrs).get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCK:
            self.out.append("\n")
        elif tag == "a" and self._href:
            if not self._href.startswith(("#", "cid:")):
                self.out.append(f" ({self._href})")
            self._href = None

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.out.append(re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """A readable plain-text rendering of an HTML email (paragraphs, list items, link targets)."""
    p = _TextExtractor()
    p.feed(html)
    p.close()
    lines = [line.strip() for line in "".join(p.out).splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return text.strip() + "\n"
