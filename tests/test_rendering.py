"""Templates: the shipped ones render, HTML is autoescaped, missing variables and names are our errors."""

from __future__ import annotations

import json
from pathlib import Path

import markupsafe
import pytest
from markupsafe import Markup
from quart import Quart

from mailsvc import Mail, Message, TemplateError, TemplateRenderer
from tests.helpers import config, standalone
from tests.servers import RecordingHandler, smtp_server

TEMPLATES = Path(__file__).resolve().parent.parent / "mailsvc" / "templates" / "email"


@pytest.fixture(scope="module")
def renderer() -> TemplateRenderer:
    return TemplateRenderer(TEMPLATES)


def test_shipped_templates_are_listed(renderer: TemplateRenderer) -> None:
    assert {"thank_you", "welcome"} <= set(renderer.names())


@pytest.mark.parametrize("name", ["thank_you", "welcome"])
def test_shipped_templates_render_with_their_samples(renderer: TemplateRenderer, name: str) -> None:
    context = json.loads((TEMPLATES / f"{name}.sample.json").read_text())
    msg = renderer.render_message(name, context, recipients=["ann@example.com"])
    assert isinstance(msg, Message)
    assert msg.subject and "Ann" in msg.subject and "\n" not in msg.subject
    assert msg.body and "Ann" in msg.body
    assert msg.html and "Ann" in msg.html


def test_welcome_has_its_own_text_part(renderer: TemplateRenderer) -> None:
    msg = renderer.render_message(
        "welcome", {"name": "Ann", "url": "https://example.com/login"}, recipients=["a@example.com"]
    )
    assert msg.subject == "Welcome aboard, Ann!"
    assert msg.body == "Hi Ann,\n\nYour account is ready. Sign in at https://example.com/login."
    assert '<a href="https://example.com/login">' in (msg.html or "")


def test_html_only_template_gets_a_derived_text_part(renderer: TemplateRenderer) -> None:
    assert not (TEMPLATES / "thank_you.txt").exists()
    msg = renderer.render_message(
        "thank_you",
        {"name": "Ann", "subject": "Opening hours", "message": "Open on Sundays?"},
        recipients=["a@example.com"],
    )
    assert msg.body is not None
    assert "<" not in msg.body and "Hello Ann," in msg.body
    assert "about Opening hours" in msg.body and "Open on Sundays?" in msg.body
    assert "font-family" not in msg.body


def test_html_is_autoescaped_text_and_subject_are_not(renderer: TemplateRenderer) -> None:
    evil = '<script>alert("x")</script> & Co'
    msg = renderer.render_message(
        "thank_you", {"name": evil, "subject": "", "message": ""}, recipients=["a@example.com"]
    )
    assert "<script>" not in (msg.html or "")
    assert "&lt;script&gt;" in (msg.html or "") and "&amp; Co" in (msg.html or "")
    assert evil in msg.subject  # plain-text subject: no HTML entities in it
    welcome = renderer.render_message("welcome", {"name": evil, "url": "x"}, recipients=["a@example.com"])
    assert evil in (welcome.body or "")


def test_missing_variable_names_template_and_variable(renderer: TemplateRenderer) -> None:
    with pytest.raises(TemplateError) as err:
        renderer.render_message("welcome", {"name": "Ann"}, recipients=["a@example.com"])
    assert err.value.template == "welcome"
    assert "url" in str(err.value) and "welcome" in str(err.value)


@pytest.mark.parametrize("name", ["no_such_template", "../settings", "welcome.html", "", "a//b"])
def test_unknown_template_is_a_template_error(renderer: TemplateRenderer, name: str) -> None:
    with pytest.raises(TemplateError) as err:
        renderer.render_message(name, {}, recipients=["a@example.com"])
    assert err.value.template == name


def test_syntax_error_reports_line(tmp_path: Path) -> None:
    (tmp_path / "broken.txt").write_text("line one\n{% if %}\n")
    with pytest.raises(TemplateError) as err:
        TemplateRenderer(tmp_path).render_message("broken", {}, recipients=["a@example.com"])
    assert err.value.template == "broken" and err.value.line == 2


def test_fields_override_subject_and_pass_through(renderer: TemplateRenderer) -> None:
    msg = renderer.render_message(
        "welcome", {"name": "Ann", "url": "u"}, subject="Custom", recipients=["a@example.com"], cc=["b@example.com"]
    )
    assert msg.subject == "Custom" and msg.cc == ["b@example.com"]


async def test_rendered_message_sent_through_mail_app() -> None:
    handler = RecordingHandler()
    async with smtp_server(handler) as port:
        app = Quart(__name__)
        app.config.update(
            MAIL_SERVER="127.0.0.1",
            MAIL_PORT=port,
            MAIL_DEFAULT_SENDER="shop@example.com",
            MAIL_TEMPLATE_FOLDER=str(TEMPLATES),
        )
        mail = Mail(app)
        async with app.test_app():
            msg = mail.render_message(
                "thank_you", {"name": "Zoë", "subject": "Hours", "message": "Hi"}, recipients=["zoe@example.com"]
            )
            assert (await mail.send(msg)).ok
    m = handler.received[0].message
    assert m["Subject"] == "Thank you for your message, Zoë"
    assert [p.get_content_type() for p in m.iter_parts()] == ["text/plain", "text/html"]
    assert "Hello Zoë," in m.get_body(("plain",)).get_content()  # type: ignore[union-attr]


async def test_mail_without_templates_is_a_clear_error() -> None:
    async with standalone(config(1)) as mail:
        with pytest.raises(RuntimeError, match="MAIL_TEMPLATE_FOLDER"):
            mail.render_message("welcome", {})


def test_include_of_missing_template_is_our_error(tmp_path: Path) -> None:
    (tmp_path / "outer.html").write_text("{% include 'missing.html' %}")
    with pytest.raises(TemplateError) as err:
        TemplateRenderer(tmp_path).render_message("outer", {}, recipients=["a@example.com"])
    assert err.value.template == "outer" and "missing.html" in str(err.value)


def test_parts_added_after_the_first_render_are_found(tmp_path: Path) -> None:
    """Compiled templates are remembered, missing ones are looked for again (a bulk send stats nothing)."""
    (tmp_path / "note.txt").write_text("Hi {{ name }}")
    r = TemplateRenderer(tmp_path)
    assert r.render_parts("note", {"name": "Ann"}) == ("", "Hi Ann", None)
    (tmp_path / "note.subject.txt").write_text("For {{ name }}")
    (tmp_path / "note.html").write_text("<p>{{ name }}</p>")
    assert r.render_parts("note", {"name": "<b>"}) == ("For <b>", "Hi <b>", "<p>&lt;b&gt;</p>")
    assert r.exists("note") and not r.exists("other")


def test_with_auto_reload_an_edit_shows_at_once(tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("one")
    r = TemplateRenderer(tmp_path)
    assert r.render_parts("note", {})[1] == "one"  # compiled and remembered...
    r.env.auto_reload = True  # ...then switched as the previews page does: the memory must not win
    assert r.render_parts("note", {})[1] == "one"
    (tmp_path / "note.txt").write_text("two, longer")  # a different size, so the mtime check cannot miss it
    assert r.render_parts("note", {})[1] == "two, longer"
    (tmp_path / "note.txt").unlink()
    assert not r.exists("note")


def test_parts_do_not_see_each_others_variables(tmp_path: Path) -> None:
    """The parts share one merged context; what one part sets stays in that part, as with Template.render."""
    (tmp_path / "n.subject.txt").write_text('{% set name = "from subject" %}{{ name }} {{ range(2)|list }}')
    (tmp_path / "n.txt").write_text("{{ name }}{% set items = [] %}")
    (tmp_path / "n.html").write_text("{{ name }} {{ items|length }}")
    r = TemplateRenderer(tmp_path)
    r.env.globals["site"] = "s"
    context = {"name": "Ann", "items": [1, 2]}
    expected = tuple(
        None if t is None else t.render(context)
        for t in (r.env.get_template("n.subject.txt"), r.env.get_template("n.txt"), r.env.get_template("n.html"))
    )
    assert (
        r.render_parts("n", context)
        == ("from subject [0, 1]", "Ann", "Ann 2")
        == (expected[0], expected[1], expected[2])
    )
    assert context == {"name": "Ann", "items": [1, 2]}


def test_runtime_error_in_a_part_is_our_error_with_jinjas_traceback(tmp_path: Path) -> None:
    (tmp_path / "n.txt").write_text("line one\n{{ missing.attr }}\n")
    with pytest.raises(TemplateError) as err:
        TemplateRenderer(tmp_path).render_parts("n", {})
    assert "missing" in err.value.reason
    frames = []
    tb = err.value.__cause__.__traceback__ if err.value.__cause__ else None
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    assert (str(tmp_path / "n.txt"), 2) in frames  # Jinja rewrote the traceback to the template's line


DOTTED = [
    "{{ d.url }}",
    "{{ d.items }}",
    "{{ d['items'] }}",
    "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}",
    "{{ d.get('url') }}",
    "{{ d.keys()|list }}",
    "{{ d.nested.deeper }}",
    "{{ d.missing is defined }}",
    "{{ d.url|upper }}",
    "{{ lst.0 }}",
    "{{ s.upper() }}",
]


@pytest.mark.parametrize("source", DOTTED)
@pytest.mark.parametrize("sandboxed", [False, True])
def test_dotted_names_on_dicts_resolve_as_plain_jinja_does(source: str, sandboxed: bool) -> None:
    """The dict fast path (DictItemsFirst) keeps Jinja's precedence: dict methods win, then keys."""
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    from mailsvc.web.inline_templates import InlineTemplate

    context = {
        "d": {
            "url": "https://x.example/?a=1&b=2",
            "items": "a key named items",
            "keys": 3,
            "nested": {"deeper": "<b>"},
        },
        "lst": ["zero"],
        "s": "text",
    }
    plain = (SandboxedEnvironment if sandboxed else jinja2.Environment)(undefined=jinja2.StrictUndefined)
    expected = plain.from_string(source).render(context)
    if sandboxed:
        got = InlineTemplate.compile("text", source, html=False, max_chars=10_000).render(context)
    else:
        got = TemplateRenderer(Path(".")).env.from_string(source).render(context)
    assert got == expected


def test_a_missing_key_is_still_an_undefined_variable(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("Hello {{ user.name }}")
    r = TemplateRenderer(tmp_path)
    assert r.render_parts("t", {"user": {"name": "Ann"}})[1] == "Hello Ann"
    with pytest.raises(TemplateError, match="name"):
        r.render_parts("t", {"user": {"nom": "Ann"}})


def test_the_sandbox_still_refuses_dunder_attributes_of_dicts() -> None:
    from mailsvc.web.inline_templates import InlineTemplate, InlineTemplateError

    t = InlineTemplate.compile("text", "{{ d.__class__.__mro__ }}", html=False, max_chars=1000)
    with pytest.raises(InlineTemplateError):
        t.render({"d": {"__class__": "not this"}})


class _AwkwardKey(str):
    """A key equal in hash to "url" whose comparison fails, as only a Python-built context can hold."""

    def __init__(self, error: type[Exception]) -> None:
        self.error = error

    def __new__(cls, error: type[Exception]) -> _AwkwardKey:
        return super().__new__(cls, "url")

    def __hash__(self) -> int:
        return hash("url")

    def __eq__(self, other: object) -> bool:
        raise self.error("boom")


@pytest.mark.parametrize("error", [TypeError, IndexError, KeyError])
@pytest.mark.parametrize("sandboxed", [False, True])
def test_dict_fast_path_fails_soft_where_jinja_does(error: type[Exception], sandboxed: bool) -> None:
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    from mailsvc.web.inline_templates import _Env

    plain = SandboxedEnvironment() if sandboxed else jinja2.Environment()
    ours = _Env() if sandboxed else TemplateRenderer(Path(".")).env
    obj = {_AwkwardKey.__new__(_AwkwardKey, error): 1}
    obj_key = next(iter(obj))
    obj_key.error = error  # set after hashing: the dict is built before comparisons start failing
    for env in (plain, ours):
        assert isinstance(env.getattr(obj, "url"), jinja2.Undefined)
    with pytest.raises(TypeError):
        plain.getattr({1: "x"}, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ours.getattr({1: "x"}, 1)  # type: ignore[arg-type]


class _Html:
    def __html__(self) -> str:
        return "<i>safe</i>"


@pytest.mark.parametrize(
    "value",
    ["<a href='x'>&\"</a>", "", "plain", 2010, -7, 2**80, True, 9.99, float("nan"), -0.0, 1e300, None]
    + [Markup("<b>ok</b>"), _Html(), ["<x>"]],
)
def test_fast_escape_is_markupsafes(value: object) -> None:
    from mailsvc.rendering import _escape

    got, expected = _escape(value), markupsafe.escape(value)
    assert got == expected and type(got) is type(expected) is Markup


def test_autoescaped_output_is_the_same_with_the_fast_escape(tmp_path: Path) -> None:
    """Rendered HTML is what Jinja's own escape gives (a fresh environment without the swap renders it too)."""
    import jinja2

    (tmp_path / "t.html").write_text('<a href="{{ url }}">{{ name }}</a>{{ n }}{{ safe }}{{ items[0].x }}')
    (tmp_path / "t.subject.txt").write_text("{{ name }}")
    context = {"url": "https://x.example/?a=1&b=<2>", "name": 'O\'Brien & "Co"', "n": 3, "safe": Markup("<br>")}
    context["items"] = [{"x": "<y>"}]
    _, _, html = TemplateRenderer(tmp_path).render_parts("t", context)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(tmp_path)), autoescape=True)
    assert html == env.get_template("t.html").render(context)
    assert "&amp;b=&lt;2&gt;" in (html or "")


def test_context_is_the_one_jinja_would_make(tmp_path: Path) -> None:
    (tmp_path / "t.html").write_text("{% block b %}{{ name }}{% endblock %}")
    (tmp_path / "t.txt").write_text("{{ name }}")
    r = TemplateRenderer(tmp_path)
    r.render_parts("t", {"name": "x"})
    r.env.globals["late"] = 1  # a global added after the compile is among the names too
    for filename in ("t.html", "t.txt"):
        template = r._template(filename)
        assert template is not None
        variables = {"name": "x"}
        ours, jinjas = r._context(template, variables), template.new_context(variables, shared=True)
        assert "late" in ours.globals_keys
        for attribute in ("parent", "vars", "name", "globals_keys", "exported_vars", "blocks"):
            assert getattr(ours, attribute) == getattr(jinjas, attribute), attribute
        assert ours.parent is variables and ours.eval_ctx.autoescape == jinjas.eval_ctx.autoescape
