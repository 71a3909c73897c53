from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from api.api import api
from pipelines import rq_dashboard

urlpatterns = [
    # Ahead of the admin: django_rq's dashboard for superusers only, its stop going through the portal's cancel.
    path("admin/django_rq/", include(rq_dashboard.urlpatterns)),
    path("admin/", admin.site.urls),
    # Browsers ask for /favicon.ico on pages without a <link rel="icon"> (the admin's, a raw file): no 404.
    path("favicon.ico", RedirectView.as_view(url=static("favicon.svg"), permanent=True)),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", api.urls),
    path("api/tokens/", include("api.urls")),
    path("approvals/", include("approvals.urls")),
    path("", include("pipelines.urls")),
]
