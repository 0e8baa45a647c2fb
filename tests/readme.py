"""The README's code, for the tests that run it as written.

Why a module of its own: the "Coming from Flask-Mail" contact app is run by
``tests/test_flask_mail_port.py`` and its Celery block by ``tests/test_readme.py``;
both take the code from README.md itself, so the README cannot drift from what is tested.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FLASK_MAIL_SECTION = "## Coming from Flask-Mail"

# What the contact app finds beside it (the README names these files; their content is ours).
THANKS_TXT = "Thanks! You wrote: {{ text }}\n"
CONTACT_HTML = '{% if error %}<p class="error">Not sent: {{ error }}</p>{% endif %}<form method="post"></form>\n'
PDF = b"%PDF-1.4\n" + bytes(range(256)) + b"\n%%EOF\n"  # every byte value: the base64 round trip is checked


def section(heading: str) -> str:
    """The text under ``heading`` (``"## Settings"``) up to the next heading of its level or higher (not in code)."""
    level = len(heading.split(" ", 1)[0])
    lines = README.read_text(encoding="utf-8").split("\n")
    body = lines[lines.index(heading) + 1 :]
    in_code = False
    for n, line in enumerate(body):
        in_code ^= line.startswith("```")
        hashes = line.split(" ", 1)[0]
        if not in_code and hashes and set(hashes) == {"#"} and len(hashes) <= level:
            return "\n".join(body[:n])
    return "\n".join(body)


def python_blocks(text: str) -> list[str]:
    """Every fenced ```python block in ``text``, in order."""
    return [chunk.split("```", 1)[0] for chunk in text.split("```python\n")[1:]]


def flask_mail_blocks() -> list[str]:
    return python_blocks(section(FLASK_MAIL_SECTION))


def write_contact_app(folder: Path) -> Path:
    """``contact.py`` (the README's block as written) with its templates and PDF, as the README lays them out."""
    (folder / "templates").mkdir(parents=True, exist_ok=True)
    (folder / "templates" / "thanks.txt").write_text(THANKS_TXT, encoding="utf-8")
    (folder / "templates" / "contact.html").write_text(CONTACT_HTML, encoding="utf-8")
    (folder / "Thank you.pdf").write_bytes(PDF)
    path = folder / "contact.py"
    path.write_text(flask_mail_blocks()[0], encoding="utf-8")
    return path


def import_module(path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import ``path`` as the top-level module of its file name (so ``from contact import mail`` works)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)  # Quart(__name__) finds its root path here
    spec.loader.exec_module(module)
    return module
