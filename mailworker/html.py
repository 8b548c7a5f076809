"""Sanitising the HTML of incoming email before anyone's browser sees it."""

from __future__ import annotations

import re

import nh3

from mailworker.text import clean_text

# Tags whose content goes too, not just the tag: code, styling and remote content holders.
_CLEAN_CONTENT_TAGS = {
    "script", "style", "title", "noscript", "iframe", "frame", "frameset", "noframes",
    "object", "embed", "applet", "template", "textarea", "select",
}  # fmt: skip
_TAGS = (nh3.ALLOWED_TAGS | {"font", "big"}) - _CLEAN_CONTENT_TAGS
# Email HTML is laid out with tables and presentational attributes; keep those so the message
# looks as the sender meant. Nothing here can load anything or run anything.
_ATTRIBUTES = {
    "*": {"style", "title", "lang", "dir", "align", "valign", "width", "height", "bgcolor"},
    "a": {"href", "hreflang", "name"},
    "img": {"src", "alt", "border", "hspace", "vspace"},
    "table": {"border", "cellpadding", "cellspacing", "summary"},
    "td": {"colspan", "rowspan", "nowrap", "headers", "scope"},
    "th": {"colspan", "rowspan", "nowrap", "headers", "scope"},
    "col": {"span"},
    "colgroup": {"span"},
    "font": {"color", "face", "size"},
    "hr": {"size", "noshade"},
    "ol": {"start", "type"},
    "ul": {"type"},
    "li": {"value"},
}
# CSS properties that cannot take a url(): no remote loads through inline styles.
_STYLE_PROPERTIES = {
    "color", "background-color", "font", "font-family", "font-size", "font-style",
    "font-weight", "font-variant", "line-height", "letter-spacing", "word-spacing",
    "text-align", "text-decoration", "text-indent", "text-transform", "white-space",
    "vertical-align", "direction", "width", "height", "max-width", "min-width", "max-height",
    "min-height", "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left", "border",
    "border-top", "border-right", "border-bottom", "border-left", "border-color",
    "border-style", "border-width", "border-collapse", "border-spacing", "border-radius",
    "display", "list-style-type", "table-layout", "float", "clear",
}  # fmt: skip
# Links may point anywhere a person can follow; images only at parts of the email itself
# (cid:, mapped to attachments by the record page) or data embedded in it.
_URL_SCHEMES = {"http", "https", "mailto", "tel", "cid", "data"}
_EMBEDDED_IMAGE = re.compile(r"\s*(cid:|data:image/)", re.IGNORECASE)
_CSS_ESCAPES = re.compile(r"url\s*\(|expression\s*\(|\\|@import", re.IGNORECASE)


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    if attribute == "src":
        # A remote image is a read receipt for the sender and a tracking pixel for anyone.
        return value if _EMBEDDED_IMAGE.match(value) else None
    if attribute == "href" and value.strip().lower().startswith(("data:", "cid:")):
        return None
    if attribute == "style" and _CSS_ESCAPES.search(value):
        return None
    return value


_CLEANER = nh3.Cleaner(
    tags=_TAGS,
    clean_content_tags=_CLEAN_CONTENT_TAGS,
    attributes=_ATTRIBUTES,
    attribute_filter=_filter_attribute,
    strip_comments=True,
    link_rel="noopener noreferrer",
    set_tag_attribute_values={"a": {"target": "_blank"}},
    url_schemes=_URL_SCHEMES,
    filter_style_properties=_STYLE_PROPERTIES,
    # A relative link in an email would resolve against the desk itself.
    url_relative="deny",
)


def sanitise_html(html: str) -> str:
    """HTML safe to show inside the desk: no scripts, styles, event handlers, javascript:
    URLs or remote loads; links open in a new tab with rel="noopener noreferrer"; images only
    from cid: (inline attachments) and data: sources."""
    return _CLEANER.clean(_limit_nesting(clean_text(html)))


# html5ever (under nh3) takes time quadratic in how deeply these block containers nest: 50,000
# nested <div> took 6.5 s. Real email stays far below the limit.
MAX_NESTING = 200
_NESTING_TAGS = {
    "address", "article", "aside", "blockquote", "center", "details", "dialog", "dir", "div",
    "dl", "fieldset", "figcaption", "figure", "footer", "form", "header", "hgroup", "listing",
    "main", "menu", "nav", "ol", "pre", "section", "summary", "ul",
}  # fmt: skip
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)\b[^>]*>")


def _limit_nesting(html: str) -> str:
    """Drop the start and end tags of block containers nested deeper than MAX_NESTING (their
    text stays). A rough tokenizer is enough: nh3 sanitises whatever comes out."""
    depth = 0

    def keep_or_drop(tag: re.Match[str]) -> str:
        nonlocal depth
        if tag.group(2).lower() not in _NESTING_TAGS:
            return tag.group()
        if tag.group(1):  # an end tag closes the level the current depth is at
            level, depth = depth, max(0, depth - 1)
        else:
            depth += 1
            level = depth
        return tag.group() if level <= MAX_NESTING else ""

    return _TAG.sub(keep_or_drop, html) if "<" in html else html
