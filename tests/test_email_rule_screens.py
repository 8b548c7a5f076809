"""Settings > Email Rules through the test client: who may see and change rules, what the form
refuses and says, the order, enable/disable, delete, and "Try it" changing nothing."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from records.models import (
    AdminGroup,
    EmailRule,
    EmailRuleCondition,
    Priority,
    ServiceRecord,
    Status,
)
from tests.conftest import incoming_imap

pytestmark = pytest.mark.django_db

LIST = reverse("rules:list")
NEW = reverse("rules:new")


@pytest.fixture
def staff_with(django_user_model):
    """A staff user holding exactly the named records permissions."""

    def make(*codenames: str, username: str = "agent") -> Any:
        user = django_user_model.objects.create_user(
            username=username, email=f"{username}@desk.test", is_staff=True
        )
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="records", codename__in=codenames)
        )
        return user

    return make


def rule_post(**overrides: Any) -> dict[str, Any]:
    """What the form sends for a rule with one condition (subject contains "vpn")."""
    data: dict[str, Any] = {
        "name": "VPN to network",
        "is_active": "on",
        "applies_to": "all",
        "match": "all",
        "when_matched": "continue",
        "set_group": "",
        "set_category": "",
        "set_status": "",
        "set_priority": str(Priority.HIGH),
        "assign_admin": "",
        "conditions-TOTAL_FORMS": "3",
        "conditions-INITIAL_FORMS": "0",
        "conditions-MIN_NUM_FORMS": "0",
        "conditions-MAX_NUM_FORMS": "1000",
        "conditions-0-field": "subject",
        "conditions-0-operator": "contains",
        "conditions-0-value": "vpn",
        "conditions-1-field": "",
        "conditions-1-operator": "contains",
        "conditions-1-value": "",
        "conditions-2-field": "",
        "conditions-2-operator": "contains",
        "conditions-2-value": "",
    }
    data.update(overrides)
    return data


def make_rule(name: str, order: int, **fields: Any) -> EmailRule:
    rule = EmailRule.objects.create(name=name, order=order, set_priority=Priority.HIGH, **fields)
    EmailRuleCondition.objects.create(rule=rule, field="subject", operator="contains", value=name)
    return rule


def names_in_order() -> list[str]:
    return list(EmailRule.objects.order_by("order", "id").values_list("name", flat=True))


# Permissions ----------------------------------------------------------------------------


def test_the_list_needs_view_permission(client, staff_with) -> None:
    client.force_login(staff_with("view_servicerecord"))
    assert client.get(LIST).status_code == 403
    client.force_login(staff_with("view_emailrule", username="viewer"))
    response = client.get(LIST)
    assert response.status_code == 200
    assert b"Settings \xe2\x80\xba Email Rules" in response.content  # the nav link
    assert b"New rule" not in response.content  # no add permission, no button


def test_anonymous_users_are_sent_to_log_in(client) -> None:
    response = client.get(LIST)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_creating_changing_and_deleting_each_need_their_permission(client, staff_with) -> None:
    rule = make_rule("Existing", 0)
    client.force_login(staff_with("view_emailrule"))
    assert client.get(NEW).status_code == 403
    assert client.post(NEW, rule_post()).status_code == 403
    assert client.post(reverse("rules:edit", args=[rule.pk]), rule_post()).status_code == 403
    assert (
        client.post(reverse("rules:move", args=[rule.pk]), {"direction": "up"}).status_code == 403
    )
    assert client.post(reverse("rules:enable", args=[rule.pk]), {"enabled": "0"}).status_code == 403
    assert client.post(reverse("rules:delete", args=[rule.pk])).status_code == 403
    assert names_in_order() == ["Existing"]
    assert EmailRule.objects.get().is_active

    client.force_login(staff_with("view_emailrule", "add_emailrule", username="adder"))
    assert client.post(NEW, rule_post()).status_code == 302
    assert client.post(reverse("rules:delete", args=[rule.pk])).status_code == 403

    client.force_login(staff_with("view_emailrule", "delete_emailrule", username="deleter"))
    assert client.post(reverse("rules:delete", args=[rule.pk])).status_code == 302
    assert names_in_order() == ["VPN to network"]


def test_a_non_staff_user_with_the_permission_gets_403(client, django_user_model) -> None:
    user = django_user_model.objects.create_user(username="outsider", email="o@x.test")
    user.user_permissions.set(Permission.objects.filter(codename="view_emailrule"))
    client.force_login(user)
    assert client.get(LIST).status_code == 403


def test_posts_need_a_csrf_token(admin_user) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(NEW, rule_post()).status_code == 403
    assert not EmailRule.objects.exists()


# The form -------------------------------------------------------------------------------


def test_an_admin_creates_a_rule_with_its_conditions_and_actions(admin_client, make_integration):
    group = AdminGroup.objects.create(name="Network")
    status = Status.objects.get(name="In Progress")
    support = make_integration(**incoming_imap(name="Support"))
    response = admin_client.post(
        NEW,
        rule_post(
            applies_to="chosen",
            integrations=[str(support.pk)],
            match="any",
            when_matched="stop",
            set_group=str(group.pk),
            set_status=str(status.pk),
            **{
                "conditions-1-field": "sender_domain",
                "conditions-1-operator": "equals",
                "conditions-1-value": "@Customer.test",
            },
        ),
    )
    assert response.status_code == 302, response.content.decode()
    rule = EmailRule.objects.get()
    assert (rule.name, rule.match, rule.stop_processing, rule.all_integrations) == (
        "VPN to network",
        "any",
        True,
        False,
    )
    assert list(rule.integrations.all()) == [support]
    assert (rule.set_group, rule.set_status, rule.set_priority) == (group, status, Priority.HIGH)
    assert [(c.field, c.operator, c.value) for c in rule.conditions.all()] == [
        ("subject", "contains", "vpn"),
        ("sender_domain", "equals", "Customer.test"),  # compared without its "@"
    ]
    page = admin_client.get(LIST).content.decode()
    assert "Created the rule “VPN to network”." in page
    assert "Support" in page and "Group: Network" in page and "Status: In Progress" in page


def test_editing_replaces_the_conditions_and_a_removed_row_goes(admin_client) -> None:
    rule = make_rule("Printers", 0)
    edit = reverse("rules:edit", args=[rule.pk])
    page = admin_client.get(edit).content.decode()
    assert 'value="Printers"' in page
    response = admin_client.post(
        edit,
        rule_post(
            name="Printers",
            **{
                "conditions-TOTAL_FORMS": "4",
                "conditions-INITIAL_FORMS": "1",
                "conditions-0-field": "subject",
                "conditions-0-value": "Printers",
                "conditions-0-DELETE": "on",
                "conditions-1-field": "body",
                "conditions-1-operator": "regex",
                "conditions-1-value": r"(?i)toner\s+empty",
                "conditions-3-field": "",
                "conditions-3-operator": "contains",
                "conditions-3-value": "",
            },
        ),
    )
    assert response.status_code == 302, response.content.decode()
    assert [(c.field, c.operator, c.value) for c in rule.conditions.all()] == [
        ("body", "regex", r"(?i)toner\s+empty")
    ]


def test_an_invalid_regex_is_refused_with_what_is_wrong(admin_client) -> None:
    response = admin_client.post(
        NEW,
        rule_post(**{"conditions-0-operator": "regex", "conditions-0-value": "(unclosed"}),
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "This regular expression does not compile" in page
    assert "The rule was not saved." in page
    assert not EmailRule.objects.exists()


def test_a_duplicate_name_is_refused(admin_client) -> None:
    make_rule("VPN to network", 0)
    response = admin_client.post(NEW, rule_post())
    assert response.status_code == 400
    assert "Another rule already has this name." in response.content.decode()
    assert EmailRule.objects.count() == 1


def test_a_rule_without_conditions_is_refused(admin_client) -> None:
    response = admin_client.post(
        NEW, rule_post(**{"conditions-0-field": "", "conditions-0-value": ""})
    )
    assert response.status_code == 400
    assert "A rule needs at least one condition" in response.content.decode()
    assert not EmailRule.objects.exists()


def test_a_half_filled_condition_says_what_is_missing(admin_client) -> None:
    response = admin_client.post(NEW, rule_post(**{"conditions-0-value": ""}))
    assert response.status_code == 400
    assert "Write what to look for" in response.content.decode()


def test_chosen_integrations_must_be_chosen(admin_client) -> None:
    response = admin_client.post(NEW, rule_post(applies_to="chosen"))
    assert response.status_code == 400
    assert "Choose at least one integration, or apply the rule to all integrations." in (
        response.content.decode()
    )


def test_a_rule_that_would_do_nothing_is_refused(admin_client) -> None:
    response = admin_client.post(NEW, rule_post(set_priority=""))
    assert response.status_code == 400
    assert "This rule sets nothing and lets the next rules run" in response.content.decode()
    # A stop without actions does something: later rules leave these emails alone.
    response = admin_client.post(NEW, rule_post(set_priority="", when_matched="stop"))
    assert response.status_code == 302


def test_choosing_all_integrations_drops_the_chosen_ones(admin_client, make_integration) -> None:
    support = make_integration(**incoming_imap(name="Support"))
    admin_client.post(NEW, rule_post(applies_to="chosen", integrations=[str(support.pk)]))
    rule = EmailRule.objects.get()
    edit = reverse("rules:edit", args=[rule.pk])
    response = admin_client.post(
        edit,
        rule_post(
            applies_to="all",
            integrations=[str(support.pk)],
            **{"conditions-INITIAL_FORMS": "1"},
        ),
    )
    assert response.status_code == 302, response.content.decode()
    rule.refresh_from_db()
    assert rule.all_integrations and not rule.integrations.exists()


# The list: order, enable, delete ----------------------------------------------------------


def test_rules_move_up_and_down_in_the_evaluation_order(admin_client) -> None:
    first, second, third = make_rule("A", 0), make_rule("B", 0), make_rule("C", 0)
    admin_client.post(reverse("rules:move", args=[third.pk]), {"direction": "up"})
    assert names_in_order() == ["A", "C", "B"]
    admin_client.post(reverse("rules:move", args=[first.pk]), {"direction": "down"})
    assert names_in_order() == ["C", "A", "B"]
    response = admin_client.post(
        reverse("rules:move", args=[second.pk]), {"direction": "down"}, follow=True
    )
    assert "“B” is already last." in response.content.decode()
    assert names_in_order() == ["C", "A", "B"]
    # A new rule goes last.
    admin_client.post(NEW, rule_post(name="D"))
    assert names_in_order() == ["C", "A", "B", "D"]


def test_a_drag_sends_the_whole_order(admin_client, staff_with) -> None:
    first, second, third = make_rule("A", 0), make_rule("B", 1), make_rule("C", 2)
    order = reverse("rules:order")
    response = admin_client.post(order, {"rule": [third.pk, first.pk, second.pk]}, follow=True)
    assert "Saved the new order of the rules." in response.content.decode()
    assert names_in_order() == ["C", "A", "B"]
    # A rule added or deleted meanwhile: nothing moves, and the admin is told why.
    response = admin_client.post(order, {"rule": [first.pk, second.pk]}, follow=True)
    assert "The rules changed while you were dragging" in response.content.decode()
    assert names_in_order() == ["C", "A", "B"]
    client = admin_client
    client.force_login(staff_with("view_emailrule"))
    assert client.post(order, {"rule": [first.pk, second.pk, third.pk]}).status_code == 403
    assert names_in_order() == ["C", "A", "B"]


def test_disabling_and_enabling_a_rule(admin_client) -> None:
    rule = make_rule("Printers", 0)
    response = admin_client.post(
        reverse("rules:enable", args=[rule.pk]), {"enabled": "0"}, follow=True
    )
    assert "Disabled “Printers”." in response.content.decode()
    rule.refresh_from_db()
    assert not rule.is_active
    admin_client.post(reverse("rules:enable", args=[rule.pk]), {"enabled": "1"})
    rule.refresh_from_db()
    assert rule.is_active


def test_delete_asks_first_then_deletes(admin_client) -> None:
    rule = make_rule("Printers", 0)
    delete = reverse("rules:delete", args=[rule.pk])
    assert "Delete the rule “Printers”?" in admin_client.get(delete).content.decode()
    assert EmailRule.objects.exists()
    response = admin_client.post(delete, follow=True)
    assert "Deleted the rule “Printers”." in response.content.decode()
    assert not EmailRule.objects.exists()
    assert not EmailRuleCondition.objects.exists()


# Try it ---------------------------------------------------------------------------------


def test_try_it_shows_the_rules_that_fire_and_what_they_set(
    admin_client, staff_with, make_integration
) -> None:
    support, sales = (
        make_integration(**incoming_imap(name="Support")),
        make_integration(**incoming_imap(name="Sales", incoming_username="sales@example.com")),
    )
    network = AdminGroup.objects.create(name="Network")
    make_rule("vpn", 0, set_group=network)
    make_rule("sales only", 1).integrations.set([sales])
    EmailRule.objects.filter(name="sales only").update(all_integrations=False)
    make_rule("disabled", 2, is_active=False)
    client = admin_client
    client.force_login(staff_with("view_emailrule"))  # trying needs no change permission
    response = client.post(
        reverse("rules:try"),
        {
            "sender": "Jane <Jane@Customer.test>",
            "recipients": "support@desk.test",
            "subject": "VPN down, sales only disabled",
            "body": "",
            "integration": str(support.pk),
        },
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "Would fire:</strong> “vpn”." in page
    assert "<dt>Group</dt><dd>Network</dd>" in page
    assert "<dt>Priority</dt><dd>High</dd>" in page
    assert "sales only: not for this integration" in page
    assert "disabled:" not in page  # disabled rules are not tried
    assert not ServiceRecord.objects.exists()


def test_try_it_refuses_a_sender_without_an_address(admin_client) -> None:
    response = admin_client.post(reverse("rules:try"), {"sender": "Jane", "subject": "x"})
    assert response.status_code == 400
    assert "Write the sender&#x27;s email address" in response.content.decode()
