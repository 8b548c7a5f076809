from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Admins land on Settings > Email; others see what they may do."""
    if request.user.has_perm("integrations.view_emailintegration"):
        return redirect("integrations:list")
    return render(request, "home.html")
