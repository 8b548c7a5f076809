from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from mailworker import views_graph
from records.views import DeskSettingsView
from servicedesk import health, views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", health.healthz, name="healthz"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("settings/email/", include("integrations.urls")),
    path("settings/rules/", include("records.urls_rules")),
    path("settings/notifications/", include("mailworker.urls_notifications")),
    path("settings/desk/", DeskSettingsView.as_view(), name="desk-settings"),
    path("settings/users/", include("records.urls_users")),
    re_path(r"^settings/(?P<lookup>statuses|groups|categories)/", include("records.urls_lookups")),
    path("account/", include("records.urls_account")),
    path("settings/email/<int:pk>/test/", include("mailworker.urls_tests")),
    path("quarantine/", include("mailworker.urls")),
    path("incoming/", include("mailworker.urls_incoming_log")),
    path("graph/notifications/", views_graph.notifications, name="graph_notifications"),
    path("records/", include("records.urls")),
    path("admin/", admin.site.urls),
]
