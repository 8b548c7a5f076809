"""Where Microsoft Graph calls the desk: change and lifecycle notifications (push for
Microsoft 365 (Graph) integrations; see mailworker.graph_push).

No login (Graph has none) and no CSRF token (Graph cannot have one): a notification is
believed only with its subscription's clientState, checked in graph_push.
"""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from mailworker.graph_push import handle_notifications

# Graph's validation tokens are short; anything longer is not Graph.
MAX_VALIDATION_TOKEN = 1024


@csrf_exempt
@require_POST
def notifications(request: HttpRequest) -> HttpResponse:
    token = request.GET.get("validationToken")
    if token is not None:
        # The handshake of a new subscription: echo the token, as plain text, at once.
        if len(token) > MAX_VALIDATION_TOKEN:
            return HttpResponse(status=400)
        return HttpResponse(token, content_type="text/plain; charset=utf-8")
    try:
        batch = json.loads(request.body)["value"]
    except (ValueError, KeyError, TypeError):
        return HttpResponse("Not a Graph notification.", status=400, content_type="text/plain")
    if not isinstance(batch, list):
        return HttpResponse("Not a Graph notification.", status=400, content_type="text/plain")
    outcome = handle_notifications(batch)
    if outcome.refused and not outcome.accepted:
        return HttpResponse(status=403)
    # 202 at once: Graph retries (and eventually drops) a subscription that answers slowly.
    return HttpResponse(status=202)
