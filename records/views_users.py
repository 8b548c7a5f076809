"""Settings > Users: admins, agents and end users; inviting an agent; a user's page (details,
roles, groups, deactivate, the records an end user requested). Views stay thin: forms shape
input, records.accounts decides."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.forms import Form
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views import View

from integrations.views import StaffPermissionRequiredMixin
from records import accounts, selectors
from records.forms_users import InviteForm, StaffUserForm, UserSearchForm
from records.models import User

USERS_PER_PAGE = 50
RECORDS_ON_USER_PAGE = 50
# The three lists of Settings > Users: (query value, heading).
TABS = (("admins", "Admins"), ("agents", "Agents"), ("end-users", "End users"))


def desk_base_url(request: HttpRequest) -> str:
    """Where links in the desk's emails point: PUBLIC_BASE_URL when set (behind a proxy),
    else the address this request came to (its host checked against ALLOWED_HOSTS)."""
    return settings.PUBLIC_BASE_URL or request.build_absolute_uri("/")


def check_may_change(request: HttpRequest, person: User) -> None:
    """Only a superuser changes a superuser: an Administrator who could set a superuser's
    email could take the account over with a password reset."""
    if person.is_superuser and not request.user.is_superuser:
        raise PermissionDenied("Only a superuser can change a superuser.")


def add_errors(form: Form, error: ValidationError) -> None:
    """A service's ValidationError onto the form: by field where it names one the form has."""
    if hasattr(error, "error_dict"):
        for field, errors in error.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, error)


class UserListView(StaffPermissionRequiredMixin, View):
    permission_required = "records.view_user"

    def get(self, request: HttpRequest) -> HttpResponse:
        tab = request.GET.get("show", "admins")
        if tab not in dict(TABS):
            tab = "admins"
        form = UserSearchForm(request.GET)
        query = form.query()
        if tab == "end-users":
            users = selectors.end_users(query=query)
        else:
            users = selectors.staff_users(query=query, administrators_only=tab == "admins")
        page = Paginator(users, USERS_PER_PAGE).get_page(request.GET.get("page"))
        context = {
            "tabs": TABS,
            "tab": tab,
            "form": form,
            "page_obj": page,
            "users": page.object_list,
        }
        return render(request, "records/users/list.html", context)


class UserInviteView(StaffPermissionRequiredMixin, View):
    permission_required = ("records.view_user", "records.add_user")

    def get(self, request: HttpRequest) -> HttpResponse:
        form = InviteForm(initial={"email": request.GET.get("email", "")})
        return self._render(request, form)

    def post(self, request: HttpRequest) -> HttpResponse:
        form = InviteForm(request.POST)
        if form.is_valid():
            try:
                user, was_end_user = accounts.invite_user(
                    **form.service_arguments(),
                    invited_by=request.user,
                    base_url=desk_base_url(request),
                )
            except accounts.CannotSendEmail as exc:
                form.add_error(None, str(exc))
            except ValidationError as exc:
                add_errors(form, exc)
            else:
                known = " (known until now as an end user; their records stay theirs)"
                messages.success(
                    request,
                    f"Invitation sent to {user.email}{known if was_end_user else ''}. "
                    "They choose a password with the link in it.",
                )
                return redirect("users:detail", pk=user.pk)
        return self._render(request, form, status=400)

    def _render(self, request: HttpRequest, form: InviteForm, status: int = 200) -> HttpResponse:
        context = {"form": form, "can_send": accounts.desk_can_send()}
        return render(request, "records/users/invite.html", context, status=status)


def _render_user_page(
    request: HttpRequest, user: User, *, form: StaffUserForm | None = None, status: int = 200
) -> HttpResponse:
    context: dict[str, Any] = {
        "person": user,
        "may_change": request.user.has_perm("records.change_user")
        and (request.user.is_superuser or not user.is_superuser),
    }
    if user.is_staff:
        context["form"] = form or StaffUserForm(user=user)
        context["invitation_pending"] = not user.has_usable_password()
    else:
        records = selectors.records_requested_by(user=user)
        context["records"] = records[:RECORDS_ON_USER_PAGE]
        context["record_count"] = records.count()
    return render(request, "records/users/detail.html", context, status=status)


class UserDetailView(StaffPermissionRequiredMixin, View):
    """GET: a user's page. POST: save a staff user's details, roles and groups."""

    def get_permission_required(self) -> tuple[str, ...]:
        if self.request.method == "POST":
            return ("records.view_user", "records.change_user")
        return ("records.view_user",)

    def get(self, request: HttpRequest, pk: int) -> HttpResponse:
        return _render_user_page(request, get_object_or_404(User, pk=pk))

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        user = get_object_or_404(User, pk=pk, is_staff=True)
        check_may_change(request, user)
        form = StaffUserForm(request.POST, user=user)
        if form.is_valid():
            try:
                accounts.update_staff_user(user=user, **form.service_arguments())
            except ValidationError as exc:
                add_errors(form, exc)
            else:
                messages.success(request, f"{user.get_username()} saved.")
                return redirect("users:detail", pk=user.pk)
        user.refresh_from_db()
        return _render_user_page(request, user, form=form, status=400)


class UserActiveView(StaffPermissionRequiredMixin, View):
    """POST active=0 deactivates, active=1 reactivates."""

    permission_required = ("records.view_user", "records.change_user")

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        user = get_object_or_404(User, pk=pk)
        check_may_change(request, user)
        active = request.POST.get("active") == "1"
        try:
            accounts.set_user_active(user=user, active=active, actor=request.user)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            if active:
                messages.success(request, f"{user.get_username()} is active again.")
            else:
                messages.success(
                    request,
                    f"{user.get_username()} is deactivated: they can no longer log in. "
                    "Their records and messages stay.",
                )
        return redirect("users:detail", pk=user.pk)


class UserResendInvitationView(StaffPermissionRequiredMixin, View):
    permission_required = ("records.view_user", "records.change_user")

    def post(self, request: HttpRequest, pk: int) -> HttpResponse:
        user = get_object_or_404(User, pk=pk, is_staff=True, is_active=True)
        check_may_change(request, user)
        if not user.email:
            messages.error(request, "This user has no email address: add one first.")
            return redirect("users:detail", pk=user.pk)
        try:
            accounts.send_invitation(
                user=user, invited_by=request.user, base_url=desk_base_url(request)
            )
        except accounts.CannotSendEmail as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"A new link to choose a password went to {user.email}.")
        return redirect("users:detail", pk=user.pk)
