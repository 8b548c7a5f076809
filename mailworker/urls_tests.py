from django.urls import path

from mailworker import views_tests

app_name = "integration_tests"
urlpatterns = [
    path("outgoing/", views_tests.OutgoingTestView.as_view(), name="outgoing"),
    path("incoming/", views_tests.IncomingTestView.as_view(), name="incoming"),
]
