
app_name = "records"
urlpatterns: list = []  # being written
