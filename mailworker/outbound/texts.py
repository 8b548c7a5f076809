"""The texts of the desk's emails: the templates in templates/emails/, or an admin's edited
version of one (Settings > Notifications, kept as NotificationTemplate rows).

Every text is rendered the same way, default or edited, so a preview shows what is sent:
by an engine that knows only the tags of template_library (no include, load or debug) and
with a context of plain strings, numbers, lists and dicts (outbound/email_templates.py
builds them), never a model instance, the request or the settings. An edited text can say
what its documented variables hold and nothing else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from django.conf import settings
from django.template import Context, Engine, Template, TemplateSyntaxError

from mailworker.models import NotificationTemplate
from mailworker.outbound.queue import batched

logger = logging.getLogger(__name__)
EMAIL_TEMPLATE_DIR = Path(settings.BASE_DIR) / "templates" / "emails"
EDITED_TEXTS = "edited email texts"


# The desk's own texts that admins do not edit (invitations, password reset links: they
# carry a link with a token), rendered from the template files by Django's usual rules.
FILE_TEMPLATES = Engine(dirs=[settings.BASE_DIR / "templates"], autoescape=False)


def render_text(name: str, context: dict) -> str:
    """Template file `name` (under templates/) as plain text, for a text admins cannot edit."""
    rendered = FILE_TEMPLATES.get_template(name).render(Context(context, autoescape=False))
    return "".join([rendered])  # a plain str, not SafeString: the HTML part escapes it


def render_subject(name: str, context: dict) -> str:
    return one_line(render_text(name, context))


class _EmailTextEngine(Engine):
    # Instead of Django's tags and filters (which include debug and the loader tags).
    default_builtins = ["mailworker.outbound.template_library"]


# Email texts are plain text: Django's HTML autoescaping would turn "d'accès" into
# "d&#x27;accès". The HTML part escapes the text itself (templates/emails/base.html).
# debug=True: a syntax error carries its line, which the edit screen shows.
TEXT_ENGINE = _EmailTextEngine(dirs=[], libraries={}, autoescape=False, debug=True)


@dataclass(frozen=True)
class EmailText:
    subject: str
    text: str


@dataclass(frozen=True)
class TemplateProblem:
    """Why a text cannot be used: the line (1 = the first) and what is wrong there."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"Line {self.line}: {self.message}"


class InvalidTemplate(ValueError):
    def __init__(self, problem: TemplateProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@lru_cache(maxsize=256)
def compile_text(source: str) -> Template:
    """The compiled text; raises InvalidTemplate with the line of a syntax error."""
    try:
        return Template(source, engine=TEXT_ENGINE)
    except TemplateSyntaxError as error:
        info = getattr(error, "template_debug", None) or {}
        raise InvalidTemplate(
            TemplateProblem(line=int(info.get("line", 1)), message=str(error))
        ) from None


def render_source(source: str, context: dict[str, Any]) -> str:
    rendered = compile_text(source).render(Context(context, autoescape=False))
    # A plain str, not Django's SafeString: the HTML part must still escape what the text
    # holds (a subject written by anyone), or "<b>" in a subject would become markup.
    return "".join([rendered])


def one_line(text: str) -> str:
    return " ".join(text.split())


@lru_cache(maxsize=64)
def default_source(key: str, part: str) -> str:
    """The shipped text of `key`'s `part` ("subject" or "body"): the file's content, read
    once per process (as Django's cached template loader would)."""
    suffix = ".subject.txt" if part == "subject" else ".txt"
    return (EMAIL_TEMPLATE_DIR / f"{key}{suffix}").read_text(encoding="utf-8")


def edited_texts() -> dict[str, NotificationTemplate]:
    """The admins' edited texts by key: one query (once per batch of incoming emails)."""
    return batched(EDITED_TEXTS, lambda: {t.key: t for t in NotificationTemplate.objects.all()})


def render_default(key: str, context: dict[str, Any]) -> EmailText:
    return EmailText(
        subject=one_line(render_source(default_source(key, "subject"), context)),
        text=render_source(default_source(key, "body"), context),
    )


def render_email(key: str, context: dict[str, Any]) -> EmailText:
    """The subject and text of email `key` for `context`: the admins' edited version when
    there is one, else the default. An edited text that fails while rendering (a filter
    given a value it refuses) must not cost the email: the default is sent instead."""
    edited = edited_texts().get(key)
    if edited is None:
        return render_default(key, context)
    try:
        return EmailText(
            subject=one_line(render_source(edited.subject, context)),
            text=render_source(edited.body, context),
        )
    except Exception:
        logger.exception("edited email text %r failed; sending the default text", key)
        return render_default(key, context)


# Admins' edits (Settings > Notifications) ------------------------------------------------


def template_problem(source: str, context: dict[str, Any]) -> TemplateProblem | None:
    """What stops `source` from being used, rendered with `context` (the sample values):
    a syntax error with its line, or an error while rendering; None when it renders."""
    try:
        render_source(source, context)
    except InvalidTemplate as error:
        return error.problem
    except Exception as error:  # a filter refusing its value: the admin must see why
        return TemplateProblem(line=1, message=f"{type(error).__name__}: {error}")
    return None


def current_source(key: str) -> tuple[str, str, bool]:
    """(subject, body, edited): the text in force for `key`."""
    edited = NotificationTemplate.objects.filter(key=key).first()
    if edited is None:
        return default_source(key, "subject").strip(), default_source(key, "body"), False
    return edited.subject, edited.body, True


def save_email_text(*, key: str, subject: str, body: str, user: Any) -> NotificationTemplate:
    """Keep the admin's text for email `key` in place of the file's. The caller has checked
    it with template_problem(); the model's own limits are checked here."""
    row = NotificationTemplate.objects.filter(key=key).first() or NotificationTemplate(key=key)
    row.subject, row.body, row.updated_by = subject, body, user
    row.full_clean()
    row.save()
    return row


def reset_email_text(*, key: str) -> bool:
    """Back to the file's text; returns whether there was an edited one."""
    deleted, _ = NotificationTemplate.objects.filter(key=key).delete()
    return bool(deleted)
