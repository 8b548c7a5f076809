"""Rendering the plain-text templates of emails (templates/emails/*.txt)."""

from __future__ import annotations

from django.conf import settings
from django.template import Context, Engine

# Email texts are plain text: Django's HTML autoescaping would turn "d'accès" into
# "d&#x27;accès". The HTML part escapes the text itself (templates/emails/base.html).
TEXT_TEMPLATES = Engine(dirs=[settings.BASE_DIR / "templates"], autoescape=False)


def render_text(name: str, context: dict) -> str:
    rendered = TEXT_TEMPLATES.get_template(name).render(Context(context, autoescape=False))
    # A plain str, not Django's SafeString: the HTML part must still escape what the text
    # holds (a subject written by anyone), or "<b>" in a subject would become markup.
    return "".join([rendered])


def render_subject(name: str, context: dict) -> str:
    return " ".join(render_text(name, context).split())
