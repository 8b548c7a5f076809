from django.urls import path

from mailworker import views

app_name = "quarantine"
urlpatterns = [
    path("", views.QuarantineListView.as_view(), name="list"),
    path("<int:pk>/", views.QuarantineDetailView.as_view(), name="detail"),
    path("<int:pk>/download/", views.QuarantineDownloadView.as_view(), name="download"),
    path("<int:pk>/reprocess/", views.QuarantineReprocessView.as_view(), name="reprocess"),
    path("<int:pk>/delete/", views.QuarantineDeleteView.as_view(), name="delete"),
    path("floods/release/", views.QuarantineReleaseFloodView.as_view(), name="release-flood"),
]
