"""/settings/statuses/, /settings/groups/, /settings/categories/."""

from django.urls import path

from records import views_lookups

app_name = "lookups"
urlpatterns = [
    path("", views_lookups.LookupListView.as_view(), name="list"),
    path("new/", views_lookups.LookupFormView.as_view(), name="new"),
    path("<int:pk>/", views_lookups.LookupFormView.as_view(), name="edit"),
    path("<int:pk>/delete/", views_lookups.LookupDeleteView.as_view(), name="delete"),
]
