from django.urls import path

from records import views

app_name = "records"
urlpatterns = [
    path("", views.RecordListView.as_view(), name="list"),
    path("<int:pk>/", views.RecordDetailView.as_view(), name="detail"),
    path("<int:pk>/reply/", views.RecordReplyView.as_view(), name="reply"),
    path("<int:pk>/details/", views.RecordDetailsView.as_view(), name="details"),
    path("attachments/<int:pk>/", views.AttachmentDownloadView.as_view(), name="attachment"),
    path("messages/<int:pk>/original/", views.MessageOriginalView.as_view(), name="original"),
]
