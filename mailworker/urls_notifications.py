from django.urls import path

from mailworker import views_notifications as views

app_name = "notifications"
urlpatterns = [
    path("", views.NotificationsView.as_view(), name="list"),
    path("<slug:key>/", views.EmailTextView.as_view(), name="edit"),
    path("<slug:key>/reset/", views.ResetEmailTextView.as_view(), name="reset"),
]
