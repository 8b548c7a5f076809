from django.urls import path

from mailworker import views

app_name = "incoming_log"
urlpatterns = [
    path("", views.IncomingLogView.as_view(), name="list"),
]
