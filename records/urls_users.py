from django.urls import path

from records import views_users

app_name = "users"
urlpatterns = [
    path("", views_users.UserListView.as_view(), name="list"),
    path("invite/", views_users.UserInviteView.as_view(), name="invite"),
    path("<int:pk>/", views_users.UserDetailView.as_view(), name="detail"),
    path("<int:pk>/active/", views_users.UserActiveView.as_view(), name="active"),
    path("<int:pk>/invitation/", views_users.UserResendInvitationView.as_view(), name="resend"),
]
