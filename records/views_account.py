""" "My account" (every logged-in user: name, email, password) and the password reset by
email (Django's views; the email goes out through the desk's own sending path)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import update_session_auth_hash
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import PasswordChangeForm
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.views import View

from records import accounts
from records.forms_users import DeskPasswordResetForm, MyAccountForm
from records.views_users import add_errors


class MyAccountView(LoginRequiredMixin, View):
    """Two forms on one page, each with its own submit button (name="save")."""

    def _render(
        self,
        request: HttpRequest,
        *,
        details: MyAccountForm | None = None,
        password: PasswordChangeForm | None = None,
        status: int = 200,
    ) -> HttpResponse:
        user = request.user
        password = password or PasswordChangeForm(user)
        # The name form comes first on the page: the password form must not take the focus.
        password.fields["old_password"].widget.attrs.pop("autofocus", None)
        context = {
            "details": details
            or MyAccountForm(
                initial={
                    "first_name": user.first_name,
                    "last_name": user.last_name,
                    "email": user.email,
                }
            ),
            "password": password,
        }
        return render(request, "records/account.html", context, status=status)

    def get(self, request: HttpRequest) -> HttpResponse:
        return self._render(request)

    def post(self, request: HttpRequest) -> HttpResponse:
        if request.POST.get("save") == "password":
            return self._change_password(request)
        form = MyAccountForm(request.POST)
        if form.is_valid():
            try:
                accounts.update_own_account(user=request.user, **form.cleaned_data)
            except ValidationError as exc:
                add_errors(form, exc)
            else:
                messages.success(request, "Your details are saved.")
                return redirect("account")
        return self._render(request, details=form, status=400)

    def _change_password(self, request: HttpRequest) -> HttpResponse:
        form = PasswordChangeForm(request.user, request.POST)
        if not form.is_valid():
            return self._render(request, password=form, status=400)
        form.save()
        # Other sessions of this user end; this one stays logged in.
        update_session_auth_hash(request, form.user)
        messages.success(request, "Your password is changed.")
        return redirect("account")


class PasswordResetView(auth_views.PasswordResetView):
    """Always the same answer, whether an account has the address or not (no user
    enumeration); only a desk that cannot send email at all says so."""

    form_class = DeskPasswordResetForm
    template_name = "registration/password_reset_form.html"
    success_url = reverse_lazy("password_reset_done")

    def form_valid(self, form: DeskPasswordResetForm) -> HttpResponse:
        if not accounts.desk_can_send():
            form.add_error(
                None,
                "The desk cannot send email right now: ask an admin to "
                "reset your password, or to set up an outgoing integration.",
            )
            return self.form_invalid(form)
        return super().form_valid(form)


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "registration/password_reset_sent.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "registration/set_password.html"
    success_url = reverse_lazy("password_reset_complete")


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "registration/set_password_done.html"
