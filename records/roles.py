"""The built-in roles: django.contrib.auth Groups whose permissions this module declares.

A role is given to staff in Settings > Users. The roles are kept as declared here: a data
migration creates them, and every `migrate` (post_migrate) sets their permissions again, so
that the permissions of models added later (by any app listed in a role's `apps`) reach the
Administrator by themselves. A desk that wants another mix creates a group of its own (in
/admin/); it is offered as a role beside these and left alone.

To extend a role, add to its `apps` (every permission of those apps) or `permissions`
("app_label.codename"); to add a role, add a Role to ROLES.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.apps import apps as global_apps
from django.apps.registry import Apps
from django.db import DEFAULT_DB_ALIAS
from django.db.models import Q

ADMINISTRATOR = "Administrator"
AGENT = "Agent"
READ_ONLY = "Read-only"


@dataclass(frozen=True)
class Role:
    name: str
    description: str
    # Every permission of these apps' models.
    apps: tuple[str, ...] = ()
    # Every permission of these models ("app_label.model", the model's lowercased name).
    models: tuple[str, ...] = ()
    # Single permissions, "app_label.codename".
    permissions: tuple[str, ...] = field(default=())


def _model_permissions(*actions: str, models: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(
        f"{model.split('.')[0]}.{action}_{model.split('.')[1]}"
        for model in models
        for action in actions
    )


RECORD_MODELS = ("records.servicerecord", "records.message", "records.attachment")

ROLES: tuple[Role, ...] = (
    Role(
        name=ADMINISTRATOR,
        description="Everything: records, Settings (email, users, statuses, groups, "
        "categories), quarantine and the incoming email log.",
        apps=("records", "integrations", "mailworker"),
        models=("auth.group",),
    ),
    Role(
        name=AGENT,
        description="Works records (view, open, reply, change), the quarantine and the "
        "incoming email log. No settings.",
        permissions=(
            *_model_permissions("view", "add", "change", models=RECORD_MODELS),
            "records.view_quarantine",
            "records.change_quarantine",
            "records.delete_quarantine",
            "records.view_processedemail",
        ),
    ),
    Role(
        name=READ_ONLY,
        description="Sees records, their message logs and attachments; changes nothing.",
        permissions=_model_permissions("view", models=RECORD_MODELS),
    ),
)

BUILT_IN_ROLE_NAMES = frozenset(role.name for role in ROLES)


def role_named(name: str) -> Role | None:
    return next((role for role in ROLES if role.name == name), None)


def _permission_filter(role: Role) -> Q:
    """The role's permissions as one filter on Permission (never matches when empty)."""
    wanted = Q(pk__in=[])
    if role.apps:
        wanted |= Q(content_type__app_label__in=role.apps)
    for model in role.models:
        app_label, model_name = model.split(".")
        wanted |= Q(content_type__app_label=app_label, content_type__model=model_name)
    for permission in role.permissions:
        app_label, codename = permission.split(".")
        wanted |= Q(content_type__app_label=app_label, codename=codename)
    return wanted


def create_all_permissions(*, apps: Apps = global_apps, using: str = DEFAULT_DB_ALIAS) -> None:
    """The Permission rows of every installed model. Django writes them in post_migrate, after
    every migration has run: a data migration on a fresh database would find none."""
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        # A migration's apps are stubs without models_module, which create_permissions
        # takes for "no models" (the recipe Django's own tests use).
        stub = getattr(app_config, "models_module", None) is None
        if stub:
            app_config.models_module = True
        try:
            create_permissions(app_config, apps=apps, verbosity=0, using=using)
        finally:
            if stub:
                app_config.models_module = None


def sync_roles(*, apps: Apps = global_apps, using: str = DEFAULT_DB_ALIAS) -> None:
    """Create the built-in roles and set their permissions to what ROLES declares."""
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role in ROLES:
        group, _created = Group.objects.using(using).get_or_create(name=role.name)
        permissions = Permission.objects.using(using).filter(_permission_filter(role))
        group.permissions.set(list(permissions))


def sync_roles_after_migrate(sender, using: str = DEFAULT_DB_ALIAS, **kwargs) -> None:
    """post_migrate (and after a test's flush): permissions of every app first, as the
    apps after `records` get theirs only later in the same signal."""
    create_all_permissions(using=using)
    sync_roles(using=using)
