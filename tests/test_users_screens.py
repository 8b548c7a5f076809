"""Settings > Users, Statuses, Groups, Categories, the built-in roles, inviting an agent,
the password reset by email and "my account". Emails go through the desk's outbox to the
real aiosmtpd."""

from __future__ import annotations

import email
import importlib
import re
from email.policy import default as default_policy
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management.sql import emit_post_migrate_signal
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.urls import reverse

from mailworker.delivery import send_due
from mailworker.models import OutboxEmail
from records.models import AdminGroup, Category, ServiceRecord, Status, User
from records.roles import ADMINISTRATOR, AGENT, READ_ONLY
from records.services import create_record, get_or_create_end_user
from tests.conftest import ADMIN_PASSWORD, incoming_imap

pytestmark = pytest.mark.django_db
NEW_PASSWORD = "a long new password 42"
LINK = re.compile(r"https?://\S+/account/set-password/\S+/")


def perms_of(group_name: str) -> set[str]:
    group = Group.objects.get(name=group_name)
    return {
        f"{app}.{codename}"
        for app, codename in group.permissions.values_list("content_type__app_label", "codename")
    }


def staff_with_role(username: str, *roles: str, **fields: Any) -> User:
    user = User.objects.create_user(
        username=username,
        email=f"{username}@desk.test",
        password=ADMIN_PASSWORD,
        is_staff=True,
        **fields,
    )
    user.groups.set(Group.objects.filter(name__in=roles))
    return user


@pytest.fixture
def administrator() -> User:
    return staff_with_role("boss", ADMINISTRATOR, first_name="Bea", last_name="Boss")


@pytest.fixture
def admin_client(client: Client, administrator: User) -> Client:
    client.force_login(administrator)
    return client


def delivered_to(smtp_server, address: str) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(message.raw, policy=default_policy)
        for message in smtp_server.messages
        if address in message.rcpt_tos
    ]


def link_in(message: email.message.EmailMessage) -> str:
    """The set-password link of an email, as a path for the test client."""
    text = message.get_body(preferencelist=("plain",)).get_content()
    match = LINK.search(text)
    assert match, text
    return urlsplit(match.group(0)).path


def set_password_through(client: Client, path: str, password: str = NEW_PASSWORD) -> Any:
    """Open the link (Django swaps the token for a session and redirects) and set a password."""
    page = client.get(path, follow=True)
    assert page.status_code == 200
    assert b"Choose your password" in page.content
    form_url = page.redirect_chain[-1][0]
    return client.post(
        form_url, {"new_password1": password, "new_password2": password}, follow=True
    )


# Roles ------------------------------------------------------------------------------------


def test_the_built_in_roles_exist_on_a_fresh_database_with_their_permissions() -> None:
    administrator = perms_of(ADMINISTRATOR)
    every_permission_of_the_desk = {
        f"{app}.{codename}"
        for app, codename in Permission.objects.filter(
            content_type__app_label__in=["records", "integrations", "mailworker"]
        ).values_list("content_type__app_label", "codename")
    }
    assert every_permission_of_the_desk <= administrator
    assert {
        "records.view_user",
        "records.change_user",
        "records.add_user",
        "auth.change_group",
        "integrations.change_emailintegration",
        "mailworker.change_notificationsettings",
        "records.delete_status",
    } <= administrator

    agent = perms_of(AGENT)
    assert {
        "records.view_servicerecord",
        "records.add_servicerecord",
        "records.change_servicerecord",
        "records.add_message",
        "records.view_attachment",
        "records.view_quarantine",
        "records.change_quarantine",
        "records.view_processedemail",
    } <= agent
    assert not {p for p in agent if not p.startswith("records.")}
    assert not agent & {"records.view_user", "records.view_status", "records.view_desksettings"}

    assert perms_of(READ_ONLY) == {
        "records.view_servicerecord",
        "records.view_message",
        "records.view_attachment",
    }


def test_the_roles_migration_creates_the_permissions_it_grants_on_a_database_without_any() -> None:
    # A fresh database has no Permission rows until post_migrate: the migration makes them.
    Permission.objects.all().delete()
    Group.objects.filter(name__in=[ADMINISTRATOR, AGENT, READ_ONLY]).delete()
    state = MigrationExecutor(connection).loader.project_state(("records", "0009_builtin_roles"))
    migration = importlib.import_module("records.migrations.0009_builtin_roles")

    migration.create_builtin_roles(state.apps, SimpleNamespace(connection=connection))

    assert "records.change_servicerecord" in perms_of(AGENT)
    assert "integrations.change_emailintegration" in perms_of(ADMINISTRATOR)


def test_every_migrate_gives_the_administrator_the_permissions_of_models_added_since() -> None:
    administrator = Group.objects.get(name=ADMINISTRATOR)
    later = Permission.objects.get(
        content_type__app_label="mailworker", codename="view_outboxemail"
    )
    # As if the model had come after the roles' migration: its permission is not granted yet.
    administrator.permissions.remove(later)

    emit_post_migrate_signal(0, False, "default")

    assert "mailworker.view_outboxemail" in perms_of(ADMINISTRATOR)


# Permissions on every screen ------------------------------------------------------------------


def screens() -> list[str]:
    return [
        reverse("users:list"),
        reverse("users:list") + "?show=end-users",
        reverse("users:invite"),
        reverse("lookups:list", args=["statuses"]),
        reverse("lookups:new", args=["statuses"]),
        reverse("lookups:list", args=["groups"]),
        reverse("lookups:new", args=["groups"]),
        reverse("lookups:list", args=["categories"]),
        reverse("lookups:new", args=["categories"]),
    ]


def test_settings_screens_are_for_the_administrator_role_only(client: Client) -> None:
    for path in screens():
        assert client.get(path).status_code == 302, path  # to the login page

    agent = staff_with_role("agent", AGENT)
    client.force_login(agent)
    for path in screens():
        assert client.get(path).status_code == 403, path
    assert client.get(reverse("users:detail", args=[agent.pk])).status_code == 403
    assert client.post(reverse("users:active", args=[agent.pk]), {"active": "0"}).status_code == 403

    administrator = staff_with_role("boss", ADMINISTRATOR)
    client.force_login(administrator)
    for path in screens():
        assert client.get(path).status_code == 200, path
    # The Administrator role, not a flag: the same user without staff rights gets nothing.
    User.objects.filter(pk=administrator.pk).update(is_staff=False)
    assert client.get(reverse("users:list")).status_code == 403


def test_a_status_can_be_seen_but_not_deleted_without_the_delete_permission(
    client: Client,
) -> None:
    viewer = staff_with_role("viewer")
    viewer.user_permissions.set(Permission.objects.filter(codename="view_status"))
    client.force_login(viewer)
    status = Status.objects.get(name="Open")
    assert client.get(reverse("lookups:list", args=["statuses"])).status_code == 200
    delete = reverse("lookups:delete", args=["statuses", status.pk])
    assert client.post(delete).status_code == 403
    assert client.post(reverse("lookups:edit", args=["statuses", status.pk])).status_code == 403
    assert Status.objects.filter(pk=status.pk).exists()


def test_an_invited_agent_with_the_agent_role_lands_on_the_records(client: Client) -> None:
    client.force_login(staff_with_role("agent", AGENT))
    assert client.get("/").url == reverse("records:list")
    assert client.get(reverse("records:list")).status_code == 200
    assert client.get(reverse("quarantine:list")).status_code == 200
    assert client.get(reverse("integrations:list")).status_code == 403


def test_staff_without_a_role_are_told_to_ask_for_one(client: Client) -> None:
    client.force_login(staff_with_role("newcomer"))
    page = client.get("/")
    assert b"no role yet" in page.content
    assert reverse("account").encode() in page.content


# The lists ----------------------------------------------------------------------------------


def test_admins_agents_and_end_users_are_listed_apart_with_search(
    admin_client: Client, administrator: User
) -> None:
    staff_with_role("alex", AGENT, first_name="Alex")
    staff_with_role("robin", READ_ONLY, first_name="Robin", is_active=False)
    jane, _ = get_or_create_end_user(email="jane@customer.test", display_name="Jane Doe")
    for title in ("Printer", "Scanner"):
        create_record(title=title, description="", requester=jane)

    admins = admin_client.get(reverse("users:list")).content.decode()
    assert 'data-user="boss"' in admins
    assert 'data-user="alex"' not in admins

    agents = admin_client.get(reverse("users:list") + "?show=agents").content.decode()
    assert 'data-user="alex"' in agents and 'data-user="robin"' in agents
    assert "Deactivated" in agents and "Read-only" in agents
    assert 'data-user="jane@customer.test"' not in agents

    found = admin_client.get(reverse("users:list") + "?show=agents&q=rob").content.decode()
    assert 'data-user="robin"' in found and 'data-user="alex"' not in found

    end_users = admin_client.get(reverse("users:list") + "?show=end-users").content.decode()
    assert 'data-user="jane@customer.test"' in end_users
    assert '<td class="record-count">2</td>' in end_users

    page = admin_client.get(reverse("users:detail", args=[jane.pk])).content.decode()
    assert "Records requested (2)" in page
    assert "Printer" in page and "Scanner" in page


# Inviting an agent ----------------------------------------------------------------------------


def invite(client: Client, **overrides: Any) -> Any:
    data = {
        "first_name": "Ada",
        "last_name": "Agent",
        "email": "ada@desk.test",
        "roles": [Group.objects.get(name=AGENT).pk],
    }
    data.update(overrides)
    return client.post(reverse("users:invite"), data)


def test_an_invited_agent_gets_a_working_link_by_email_sets_a_password_and_works(
    admin_client: Client, smtp_server, smtp_integration, quiet
) -> None:
    smtp_integration()
    smtp_server.clear()

    response = invite(admin_client)

    ada = User.objects.get(email="ada@desk.test")
    assert response.status_code == 302 and response.url == reverse("users:detail", args=[ada.pk])
    assert ada.is_staff and ada.is_active and not ada.has_usable_password()
    assert [g.name for g in ada.groups.all()] == [AGENT]
    send_due()
    (invitation,) = delivered_to(smtp_server, "ada@desk.test")
    assert "invited" in invitation["Subject"].lower()
    row = OutboxEmail.objects.get(kind=OutboxEmail.Kind.INVITATION)
    assert row.state == OutboxEmail.State.SENT and row.to_addresses == ["ada@desk.test"]
    path = link_in(invitation)

    agent_client = Client()
    done = set_password_through(agent_client, path)

    assert b"Your password is set" in done.content
    ada.refresh_from_db()
    assert ada.check_password(NEW_PASSWORD)
    # The link works once.
    again = agent_client.get(path, follow=True)
    assert b"This link no longer works" in again.content
    # And the account works: the login page takes the new password, the records list opens.
    login = agent_client.post(
        reverse("login"), {"username": ada.username, "password": NEW_PASSWORD}, follow=True
    )
    assert login.redirect_chain[-1][0] == reverse("records:list")
    assert b"Service records" in login.content


def test_an_invitation_is_refused_with_a_reason_when_no_integration_sends(
    admin_client: Client,
) -> None:
    response = invite(admin_client)

    assert response.status_code == 400
    assert b"The desk cannot send email" in response.content
    assert b"Settings &gt; Email" in response.content
    assert not User.objects.filter(email="ada@desk.test").exists()


def test_an_invitation_to_an_address_taken_or_read_by_the_desk_is_refused(
    admin_client: Client, smtp_integration, make_integration
) -> None:
    smtp_integration()
    make_integration(**incoming_imap(incoming_username="support@desk.test"))
    staff_with_role("alex", AGENT)

    taken = invite(admin_client, email="ALEX@desk.test")
    ours = invite(admin_client, email="support@desk.test")

    assert taken.status_code == 400 and b"already has a staff account" in taken.content
    assert ours.status_code == 400 and b"an address the desk reads" in ours.content
    assert not OutboxEmail.objects.exists()


def test_inviting_an_end_user_s_address_makes_them_staff_with_their_records(
    admin_client: Client, smtp_integration, quiet
) -> None:
    smtp_integration()
    jane, _ = get_or_create_end_user(email="jane@customer.test", display_name="Jane Doe")
    record = create_record(title="Printer", description="", requester=jane)

    response = invite(admin_client, email="jane@customer.test", first_name="", last_name="")

    assert response.status_code == 400  # a first name is needed
    response = invite(admin_client, email="jane@customer.test", first_name="Jane")
    assert response.status_code == 302
    jane.refresh_from_db()
    assert jane.is_staff and jane.groups.filter(name=AGENT).exists()
    assert ServiceRecord.objects.get(pk=record.pk).requester == jane
    assert OutboxEmail.objects.filter(kind=OutboxEmail.Kind.INVITATION).count() == 1


# Editing and deactivating ----------------------------------------------------------------------


def test_an_admin_changes_an_agent_s_role_and_groups(admin_client: Client) -> None:
    alex = staff_with_role("alex", AGENT, first_name="Alex")
    team = AdminGroup.objects.create(name="Hardware")

    response = admin_client.post(
        reverse("users:detail", args=[alex.pk]),
        {
            "first_name": "Alex",
            "last_name": "Smith",
            "email": "alex@desk.test",
            "roles": [Group.objects.get(name=READ_ONLY).pk],
            "admin_groups": [team.pk],
        },
    )

    assert response.status_code == 302
    alex.refresh_from_db()
    assert [g.name for g in alex.groups.all()] == [READ_ONLY]
    assert list(alex.admin_groups.all()) == [team]
    assert alex.last_name == "Smith"
    assert not alex.has_perm("records.change_servicerecord")


def test_the_last_administrator_keeps_the_role_and_nobody_deactivates_themselves(
    admin_client: Client, administrator: User
) -> None:
    response = admin_client.post(
        reverse("users:detail", args=[administrator.pk]),
        {"first_name": "Bea", "email": "boss@desk.test", "roles": []},
    )
    assert response.status_code == 400
    assert b"no active user who can manage users" in response.content
    assert administrator.groups.filter(name=ADMINISTRATOR).exists()

    response = admin_client.post(
        reverse("users:active", args=[administrator.pk]), {"active": "0"}, follow=True
    )
    assert b"You cannot deactivate your own account." in response.content
    administrator.refresh_from_db()
    assert administrator.is_active


def test_a_deactivated_agent_can_no_longer_log_in_and_can_be_reactivated(
    admin_client: Client,
) -> None:
    alex = staff_with_role("alex", AGENT)

    response = admin_client.post(reverse("users:active", args=[alex.pk]), {"active": "0"})

    assert response.status_code == 302
    alex.refresh_from_db()
    assert not alex.is_active
    login = Client().post(reverse("login"), {"username": "alex", "password": ADMIN_PASSWORD})
    assert login.status_code == 200  # the form again, not a redirect into the desk
    admin_client.post(reverse("users:active", args=[alex.pk]), {"active": "1"})
    alex.refresh_from_db()
    assert alex.is_active


# Password reset by email -----------------------------------------------------------------------


def test_a_forgotten_password_is_reset_through_a_link_in_an_email(
    client: Client, smtp_server, smtp_integration, quiet
) -> None:
    smtp_integration()
    smtp_server.clear()
    alex = staff_with_role("alex", AGENT)
    login_page = client.get(reverse("login"))
    assert reverse("password_reset").encode() in login_page.content

    known = client.post(reverse("password_reset"), {"email": "ALEX@desk.test"}, follow=True)
    unknown = client.post(reverse("password_reset"), {"email": "nobody@desk.test"}, follow=True)

    # The same answer either way: the form does not tell who has an account.
    assert known.content == unknown.content
    assert b"If an account has this address" in known.content
    send_due()
    assert delivered_to(smtp_server, "nobody@desk.test") == []
    (reset,) = delivered_to(smtp_server, "alex@desk.test")
    assert OutboxEmail.objects.get().kind == OutboxEmail.Kind.PASSWORD_RESET
    set_password_through(Client(), link_in(reset))
    alex.refresh_from_db()
    assert alex.check_password(NEW_PASSWORD)


def test_invited_staff_without_a_password_get_a_link_and_end_users_none(
    client: Client, smtp_integration, quiet
) -> None:
    smtp_integration()
    invited = User.objects.create(username="ada", email="ada@desk.test", is_staff=True)
    invited.set_unusable_password()
    invited.save()
    get_or_create_end_user(email="jane@customer.test")

    for address in ("ada@desk.test", "jane@customer.test"):
        client.post(reverse("password_reset"), {"email": address})

    assert [row.to_addresses for row in OutboxEmail.objects.all()] == [["ada@desk.test"]]


def test_password_reset_links_to_one_address_are_limited_per_hour(
    client: Client, smtp_integration, quiet
) -> None:
    smtp_integration()
    staff_with_role("alex", AGENT)

    for _ in range(8):
        client.post(reverse("password_reset"), {"email": "alex@desk.test"})

    assert OutboxEmail.objects.filter(kind=OutboxEmail.Kind.PASSWORD_RESET).count() == 5


def test_a_password_reset_says_so_when_the_desk_cannot_send(client: Client) -> None:
    staff_with_role("alex", AGENT)

    response = client.post(reverse("password_reset"), {"email": "alex@desk.test"})

    assert response.status_code == 200
    assert b"The desk cannot send email right now" in response.content


# My account -------------------------------------------------------------------------------------


def test_my_account_changes_name_email_and_password(client: Client) -> None:
    alex = staff_with_role("alex", AGENT)
    staff_with_role("robin", AGENT)
    client.force_login(alex)
    assert client.get(reverse("account")).status_code == 200

    taken = client.post(
        reverse("account"),
        {"save": "details", "first_name": "Alex", "last_name": "A", "email": "ROBIN@desk.test"},
    )
    assert taken.status_code == 400
    assert b"Another user already has this email address." in taken.content

    saved = client.post(
        reverse("account"),
        {"save": "details", "first_name": "Alex", "last_name": "A", "email": "alex@new.test"},
    )
    assert saved.status_code == 302
    alex.refresh_from_db()
    assert (alex.get_full_name(), alex.email) == ("Alex A", "alex@new.test")

    wrong = client.post(
        reverse("account"),
        {
            "save": "password",
            "old_password": "not it",
            "new_password1": NEW_PASSWORD,
            "new_password2": NEW_PASSWORD,
        },
    )
    assert wrong.status_code == 400 and b"old password was entered incorrectly" in wrong.content
    changed = client.post(
        reverse("account"),
        {
            "save": "password",
            "old_password": ADMIN_PASSWORD,
            "new_password1": NEW_PASSWORD,
            "new_password2": NEW_PASSWORD,
        },
    )
    assert changed.status_code == 302
    alex.refresh_from_db()
    assert alex.check_password(NEW_PASSWORD)
    # Still logged in on this session.
    assert client.get(reverse("account")).status_code == 200


def test_my_account_needs_a_login(client: Client) -> None:
    assert client.get(reverse("account")).url.startswith(reverse("login"))


# Statuses, groups, categories -------------------------------------------------------------------


def test_statuses_are_created_edited_and_deleted_unless_in_use(admin_client: Client) -> None:
    created = admin_client.post(
        reverse("lookups:new", args=["statuses"]),
        {"name": "Waiting for parts", "order": "35"},
    )
    assert created.status_code == 302
    waiting = Status.objects.get(name="Waiting for parts")
    assert not waiting.is_closed
    listed = admin_client.get(reverse("lookups:list", args=["statuses"])).content.decode()
    names = re.findall(r'data-name="([^"]+)"', listed)
    assert names.index("In Progress") < names.index("Waiting for parts") < names.index("Closed")

    duplicate = admin_client.post(
        reverse("lookups:new", args=["statuses"]), {"name": "Open", "order": "1"}
    )
    assert duplicate.status_code == 400 and b"already exists" in duplicate.content

    edited = admin_client.post(
        reverse("lookups:edit", args=["statuses", waiting.pk]),
        {"name": "Waiting for parts", "order": "36", "is_closed": "on"},
    )
    assert edited.status_code == 302
    waiting.refresh_from_db()
    assert waiting.is_closed and waiting.order == 36

    jane, _ = get_or_create_end_user(email="jane@customer.test")
    records = [
        create_record(title=f"R{n}", description="", requester=jane, status=waiting)
        for n in range(2)
    ]
    confirm = admin_client.get(reverse("lookups:delete", args=["statuses", waiting.pk]))
    assert b"2 records have this status" in confirm.content
    refused = admin_client.post(
        reverse("lookups:delete", args=["statuses", waiting.pk]), follow=True
    )
    numbers = f"#{records[0].pk}, #{records[1].pk}"
    said = f"“Waiting for parts” cannot be deleted: 2 records use it ({numbers})"
    assert said in refused.content.decode()
    assert Status.objects.filter(pk=waiting.pk).exists()

    ServiceRecord.objects.update(status=Status.objects.get(name="Open"))
    deleted = admin_client.post(reverse("lookups:delete", args=["statuses", waiting.pk]))
    assert deleted.status_code == 302
    assert not Status.objects.filter(pk=waiting.pk).exists()


def test_groups_take_staff_members_and_categories_leave_records_when_deleted(
    admin_client: Client,
) -> None:
    alex = staff_with_role("alex", AGENT)
    jane, _ = get_or_create_end_user(email="jane@customer.test")
    form = admin_client.get(reverse("lookups:new", args=["groups"])).content.decode()
    assert f'value="{alex.pk}"' in form
    assert f'value="{jane.pk}"' not in form  # end users are never members

    admin_client.post(
        reverse("lookups:new", args=["groups"]), {"name": "Hardware", "members": [alex.pk]}
    )
    assert list(AdminGroup.objects.get(name="Hardware").members.all()) == [alex]
    listed = admin_client.get(reverse("lookups:list", args=["groups"])).content.decode()
    assert 'data-name="Hardware"' in listed

    admin_client.post(reverse("lookups:new", args=["categories"]), {"name": "Printers"})
    printers = Category.objects.get(name="Printers")
    record = create_record(title="Jam", description="", requester=jane)
    ServiceRecord.objects.filter(pk=record.pk).update(category=printers)
    confirm = admin_client.get(reverse("lookups:delete", args=["categories", printers.pk]))
    assert b"1 record (#%d) will have no category" % record.pk in confirm.content

    admin_client.post(reverse("lookups:delete", args=["categories", printers.pk]))

    record.refresh_from_db()
    assert record.category is None


def test_only_a_superuser_changes_a_superuser(admin_client: Client, admin_user: User) -> None:
    page = admin_client.get(reverse("users:detail", args=[admin_user.pk]))
    assert page.status_code == 200
    assert b"Deactivate" not in page.content

    changed = admin_client.post(
        reverse("users:detail", args=[admin_user.pk]),
        {"first_name": "Mallory", "email": "mallory@evil.test", "roles": []},
    )
    deactivated = admin_client.post(reverse("users:active", args=[admin_user.pk]), {"active": "0"})

    assert changed.status_code == 403 and deactivated.status_code == 403
    admin_user.refresh_from_db()
    assert admin_user.email == "admin@desk.test" and admin_user.is_active
