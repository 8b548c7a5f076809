"""Settings > Email Rules, under /settings/rules/."""

from django.urls import path

from records import email_rule_views as views

app_name = "rules"
urlpatterns = [
    path("", views.EmailRuleListView.as_view(), name="list"),
    path("new/", views.EmailRuleFormView.as_view(), name="new"),
    path("order/", views.EmailRuleOrderView.as_view(), name="order"),
    path("try/", views.EmailRuleTryView.as_view(), name="try"),
    path("<int:pk>/", views.EmailRuleFormView.as_view(), name="edit"),
    path("<int:pk>/move/", views.EmailRuleMoveView.as_view(), name="move"),
    path("<int:pk>/enabled/", views.EmailRuleEnableView.as_view(), name="enable"),
    path("<int:pk>/delete/", views.EmailRuleDeleteView.as_view(), name="delete"),
]
