"""Forms of Settings > Users, Statuses, Groups, Categories, "my account" and the password
reset. They shape input; records.accounts decides."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.forms import PasswordResetForm
from django.contrib.auth.models import Group
from django.db.models import Case, QuerySet, When

from records import selectors
from records.accounts import send_password_reset
from records.forms import agent_name
from records.models import AdminGroup, Category, Status, User
from records.roles import AGENT, ROLES, role_named
from servicedesk.control_characters import refuse_control_characters


class RoleChoiceField(forms.ModelMultipleChoiceField):
    """The roles (auth groups) as checkboxes, each with what it allows."""

    widget = forms.CheckboxSelectMultiple

    def label_from_instance(self, obj: Group) -> str:
        role = role_named(obj.name)
        return f"{obj.name}: {role.description}" if role else f"{obj.name} (a group of this desk)"


def all_roles() -> QuerySet[Group]:
    """The built-in roles first, in their declared order, then the desk's own groups."""
    built_in = Case(
        *[When(name=role.name, then=position) for position, role in enumerate(ROLES)],
        default=len(ROLES),
    )
    return Group.objects.order_by(built_in, "name")


class StaffFields(forms.Form):
    first_name = forms.CharField(max_length=150, validators=[refuse_control_characters])
    last_name = forms.CharField(
        max_length=150, required=False, validators=[refuse_control_characters]
    )
    email = forms.EmailField(
        max_length=254, help_text="Notifications and password links go to this address."
    )
    roles = RoleChoiceField(
        queryset=Group.objects.none(),
        required=False,
        help_text="What the user may see and do. No role: the user can log in but sees nothing.",
    )
    admin_groups = forms.ModelMultipleChoiceField(
        queryset=AdminGroup.objects.all(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Groups",
        help_text="The teams records are routed to (Settings > Groups).",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["roles"].queryset = all_roles()
        if not AdminGroup.objects.exists():
            del self.fields["admin_groups"]

    def service_arguments(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "first_name": data["first_name"],
            "last_name": data["last_name"],
            "email": data["email"],
            "roles": data["roles"],
            "admin_groups": data.get("admin_groups") or [],
        }


class InviteForm(StaffFields):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["roles"].initial = [g.pk for g in Group.objects.filter(name=AGENT)]
        self.fields["email"].help_text = "The invitation, with the link to choose a password."


class StaffUserForm(StaffFields):
    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        kwargs.setdefault(
            "initial",
            {
                "first_name": user.first_name,
                "last_name": user.last_name,
                "email": user.email,
                "roles": list(user.groups.values_list("pk", flat=True)),
                "admin_groups": list(user.admin_groups.values_list("pk", flat=True)),
            },
        )
        super().__init__(*args, **kwargs)


class UserSearchForm(forms.Form):
    q = forms.CharField(required=False, max_length=200, label="Search")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["q"].widget.attrs.update(
            {"placeholder": "name, username, email", "type": "search"}
        )

    def query(self) -> str:
        return (self.cleaned_data.get("q") or "") if self.is_valid() else ""


class MyAccountForm(forms.Form):
    first_name = forms.CharField(
        max_length=150, required=False, validators=[refuse_control_characters]
    )
    last_name = forms.CharField(
        max_length=150, required=False, validators=[refuse_control_characters]
    )
    email = forms.EmailField(
        max_length=254, help_text="Notifications and password reset links go to this address."
    )


def _folded(address: str) -> str:
    return unicodedata.normalize("NFKC", address).casefold()


class DeskPasswordResetForm(PasswordResetForm):
    """Django's form (active users with a usable password, found by address regardless of
    case), sending through the desk's own sending path instead of EMAIL_BACKEND."""

    email = forms.EmailField(label="Email address", max_length=254)

    def get_users(self, email: str) -> Iterator[User]:
        """Active users with this address and a password, as Django's form finds them, and
        invited staff who have not chosen a password yet (their invitation may have
        expired). End users never get one: they work with the desk by email only."""
        wanted = _folded(email)
        for user in User.objects.filter(email__iexact=email, is_active=True):
            # The database's case-insensitive match may join addresses that Unicode keeps
            # apart (Django's form checks the same): the link goes only to the same address.
            if _folded(user.email) == wanted and (user.has_usable_password() or user.is_staff):
                yield user

    def send_mail(
        self,
        subject_template_name: str,
        email_template_name: str,
        context: dict[str, Any],
        from_email: str | None,
        to_email: str,
        html_email_template_name: str | None = None,
    ) -> None:
        base_url = settings.PUBLIC_BASE_URL or f"{context['protocol']}://{context['domain']}"
        send_password_reset(user=context["user"], base_url=base_url)


# Statuses, groups, categories -------------------------------------------------------------


class StatusForm(forms.ModelForm):
    class Meta:
        model = Status
        fields = ["name", "order", "is_closed"]
        labels = {"is_closed": "Closed (records in this status are done)"}
        help_texts = {
            "order": "Statuses are listed by this number, smallest first.",
            "is_closed": "",
        }


class StaffMemberField(forms.ModelMultipleChoiceField):
    widget = forms.CheckboxSelectMultiple

    def label_from_instance(self, obj: User) -> str:
        return agent_name(obj)


class AdminGroupForm(forms.ModelForm):
    members = StaffMemberField(queryset=User.objects.none(), required=False)

    class Meta:
        model = AdminGroup
        fields = ["name", "members"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        members = selectors.agents()
        if self.instance.pk:
            # Deactivated members stay listed (and kept) until someone unticks them.
            members = members | User.objects.filter(admin_groups=self.instance)
        self.fields["members"].queryset = members.distinct()


class CategoryForm(forms.ModelForm):
    class Meta:
        model = Category
        fields = ["name"]
