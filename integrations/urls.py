from django.urls import path

from integrations import views

app_name = "integrations"
urlpatterns = [
    path("", views.IntegrationListView.as_view(), name="list"),
    path("new/", views.IntegrationFormView.as_view(), name="new"),
    path("<int:pk>/", views.IntegrationFormView.as_view(), name="edit"),
    path("<int:pk>/delete/", views.IntegrationDeleteView.as_view(), name="delete"),
    path("<int:pk>/oauth/connect/", views.OAuthConnectView.as_view(), name="oauth_connect"),
    path("oauth/callback/", views.OAuthCallbackView.as_view(), name="oauth_callback"),
]
