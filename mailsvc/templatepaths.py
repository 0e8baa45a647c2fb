"""Where templates are found: the project's folder first, then the ones shipped in the package.

Why a search path and not one folder: the service's pages and example email
templates ship inside the package (``mailsvc/templates/``), so a wheel installed
anywhere serves them; a project overrides any of them, file by file, with a file
of the same name in its own folder (``MAILSVC_TEMPLATES``), as Django's project
template directories override an app's.

>>> [p.name for p in page_folders(None)]
['templates']
>>> [p.relative_to(p.parents[2]).as_posix() for p in email_folders(None)]
['mailsvc/templates/email']
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

__all__ = ["PACKAGED", "check_template_folder", "email_folders", "page_folders"]

PACKAGED = Path(__file__).resolve().parent / "templates"


def check_template_folder(project: Path | None, setting: str = "MAILSVC_TEMPLATES") -> None:
    """Refuse a configured folder that is not there, naming it and the setting.

    Without this a typo'd folder starts fine and every page answers 500 TemplateNotFound
    (or silently serves the packaged pages instead of the project's).
    """
    if project is not None and not project.is_dir():
        what = "is not a folder" if project.exists() else "does not exist"
        raise ConfigError(
            setting, f"template folder {project} {what}; create it, or unset {setting} for the packaged templates"
        )


def page_folders(project: Path | None) -> list[Path]:
    """The folders pages are looked up in, in order: the project's, then the package's."""
    return ([project.resolve()] if project is not None else []) + [PACKAGED]


def email_folders(project: Path | None) -> list[Path]:
    """The folders email templates (``<name>.subject.txt``/``.txt``/``.html``) are looked up in, in order."""
    return [folder / "email" for folder in page_folders(project)]
