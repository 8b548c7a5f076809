"""Showing a message-log entry's HTML inside the record page.

The stored html_body was sanitised when the email came in. It is cleaned again here, with a
stricter allowlist, and then shown in the page itself rather than in a sandboxed iframe: a
sandboxed frame has an opaque origin, so the browser would not send the session cookie with
its image requests and inline images (cid:) could not load, and the frame could not size to
its content without scripts. Cleaning twice is defence in depth: a bug or a looser rule at
ingest, or a row written some other way, still cannot put script into an agent's page.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

import nh3
from django import template
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from records.models import Attachment, Message

register = template.Library()

_TAGS = {
    "a", "abbr", "b", "big", "blockquote", "br", "caption", "center", "cite", "code", "col",
    "colgroup", "dd", "del", "div", "dl", "dt", "em", "font", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "img", "ins", "kbd", "li", "ol", "p", "pre", "q", "s", "small", "span",
    "strike", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr",
    "tt", "u", "ul",
}  # fmt: skip
_ATTRIBUTES = {
    "*": {"style", "title", "align", "valign", "width", "height", "bgcolor", "dir", "lang"},
    "a": {"href"},
    "img": {"src", "alt", "border"},
    "table": {"border", "cellpadding", "cellspacing"},
    "td": {"colspan", "rowspan", "nowrap"},
    "th": {"colspan", "rowspan", "nowrap"},
    "col": {"span"},
    "colgroup": {"span"},
    "font": {"color", "face", "size"},
    "ol": {"start", "type"},
}
# No position, no url(): nothing can cover the page or load from elsewhere.
_STYLE_PROPERTIES = {
    "color", "background-color", "font", "font-family", "font-size", "font-style",
    "font-weight", "line-height", "text-align", "text-decoration", "text-indent",
    "white-space", "vertical-align", "width", "height", "max-width", "margin", "margin-top",
    "margin-right", "margin-bottom", "margin-left", "padding", "padding-top", "padding-right",
    "padding-bottom", "padding-left", "border", "border-top", "border-right", "border-bottom",
    "border-left", "border-color", "border-style", "border-width", "border-collapse",
    "display", "list-style-type",
}  # fmt: skip
_EMBEDDED_IMAGE = re.compile(r"\s*(cid:|data:image/(png|jpeg|gif|webp);)", re.IGNORECASE)
_CSS_ESCAPES = re.compile(r"url\s*\(|expression\s*\(|\\|@import", re.IGNORECASE)


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    if attribute == "src":
        return value if _EMBEDDED_IMAGE.match(value) else None
    if attribute == "href" and not value.strip().lower().startswith(("http:", "https:", "mailto:")):
        return None
    if attribute == "style" and _CSS_ESCAPES.search(value):
        return None
    return value


_CLEANER = nh3.Cleaner(
    tags=_TAGS,
    clean_content_tags={"script", "style", "title", "template", "textarea", "select"},
    attributes=_ATTRIBUTES,
    attribute_filter=_filter_attribute,
    strip_comments=True,
    link_rel="noopener noreferrer nofollow",
    set_tag_attribute_values={"a": {"target": "_blank"}},
    url_schemes={"http", "https", "mailto", "cid", "data"},
    filter_style_properties=_STYLE_PROPERTIES,
    url_relative="deny",
)
# nh3 writes every attribute in double quotes with `"` and `&` escaped, so after cleaning
# this finds each cid: image source exactly.
_CID_SOURCE = re.compile(r'(<img\b[^>]*?\ssrc=")cid:([^"]*)(")', re.IGNORECASE)


def attachment_url(attachment: Attachment, *, inline: bool = False) -> str:
    url = reverse("records:attachment", args=[attachment.pk])
    return f"{url}?inline=1" if inline else url


def clean_message_html(html_body: str, attachments: Iterable[Attachment]) -> str:
    """The message's HTML, cleaned again, with cid: images pointing at their attachments.

    An image whose part is missing keeps no source (its alt text shows).
    """
    by_content_id = {a.content_id.strip("<>"): a for a in attachments if a.content_id}

    def rewrite(match: re.Match[str]) -> str:
        attachment = by_content_id.get(html.unescape(match.group(2)).strip().strip("<>"))
        if attachment is None:
            return f"{match.group(1)}{match.group(3)}"
        url = html.escape(attachment_url(attachment, inline=True), quote=True)
        return f"{match.group(1)}{url}{match.group(3)}"

    return _CID_SOURCE.sub(rewrite, _CLEANER.clean(html_body))


@register.simple_tag
def message_body(message: Message) -> SafeString:
    """The HTML body when there is one, else the text body with its line breaks."""
    if message.html_body.strip():
        cleaned = clean_message_html(message.html_body, message.attachments.all())
        return format_html('<div class="html-body">{}</div>', mark_safe(cleaned))  # noqa: S308
    return format_html('<pre class="body">{}</pre>', message.text_body)


@register.filter
def inline_url(attachment: Attachment) -> str:
    return attachment_url(attachment, inline=True)
