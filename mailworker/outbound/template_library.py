"""The only tags and filters an email text may use (Settings > Notifications lets admins
edit them): Django's own, minus those that reach beyond the text's variables. `debug` prints
the context and every loaded module, `load` would open other tag libraries, `include` and
`extends` read other templates, `url` and `csrf_token` mean nothing in an email."""

from __future__ import annotations

from django.template import Library, defaultfilters, defaulttags

REFUSED_TAGS = frozenset({"debug", "load", "url", "csrf_token"})

register = Library()
register.filters.update(defaultfilters.register.filters)
register.tags.update(
    {name: tag for name, tag in defaulttags.register.tags.items() if name not in REFUSED_TAGS}
)
