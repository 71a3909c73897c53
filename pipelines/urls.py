from django.urls import path

from pipelines import views, webhooks

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("healthz", views.health, name="health"),
    path("repos/<slug:name>/", views.repository_detail, name="repository_detail"),
    path("repos/<slug:name>/releases/<path:version>/", views.release_detail, name="release_detail"),
    path("deployments/<int:pk>/", views.deployment_detail, name="deployment_detail"),
    path("deployments/<int:pk>/log", views.deployment_log, name="deployment_log"),
    path("hooks/<slug:name>", webhooks.receive, name="webhook"),
]
