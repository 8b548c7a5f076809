from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Agents land on their records, admins without records on Settings > Email."""
    if request.user.is_staff and request.user.has_perm("records.view_servicerecord"):
        return redirect("records:list")
    if request.user.is_staff and request.user.has_perm("integrations.view_emailintegration"):
        return redirect("integrations:list")
    return render(request, "home.html")
