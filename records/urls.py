from django.urls import path

from records import views

app_name = "records"
urlpatterns = [
    path("", views.RecordListView.as_view(), name="list"),
    path("new/", views.RecordCreateView.as_view(), name="new"),
    path("bulk/", views.RecordBulkChangeView.as_view(), name="bulk"),
    path("<int:pk>/", views.RecordDetailView.as_view(), name="detail"),
    path("<int:pk>/reply/", views.RecordReplyView.as_view(), name="reply"),
    path("<int:pk>/details/", views.RecordDetailsView.as_view(), name="details"),
    path("<int:pk>/note/", views.RecordNoteView.as_view(), name="note"),
    path("<int:pk>/due/", views.RecordDueDateView.as_view(), name="due"),
    path("<int:pk>/escalate/", views.RecordEscalateView.as_view(), name="escalate"),
    path("<int:pk>/merge/", views.RecordMergeView.as_view(), name="merge"),
    path("attachments/<int:pk>/", views.AttachmentDownloadView.as_view(), name="attachment"),
    path("messages/<int:pk>/original/", views.MessageOriginalView.as_view(), name="original"),
]
