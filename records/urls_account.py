"""My account and the password reset by email (Django's URL names, which its views use)."""

from django.urls import path

from records import views_account

urlpatterns = [
    path("", views_account.MyAccountView.as_view(), name="account"),
    path("password-reset/", views_account.PasswordResetView.as_view(), name="password_reset"),
    path(
        "password-reset/sent/",
        views_account.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "set-password/<uidb64>/<token>/",
        views_account.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path(
        "set-password/done/",
        views_account.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
]
