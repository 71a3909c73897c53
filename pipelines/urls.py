from django.urls import path
from django.utils.text import slugify

from pipelines import artifact_views, audit_views, cancelling, check_views, drift_views, insights_views, views, webhooks

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("healthz", views.health, name="health"),
    path("repos/<slug:name>/", views.repository_detail, name="repository_detail"),
    path("repos/<slug:name>/poll", views.repository_poll, name="repository_poll"),
    path("repos/<slug:name>/environments/<slug:environment>/pause", views.target_pause, name="target_pause"),
    path("repos/<slug:name>/environments/<slug:environment>/resume", views.target_resume, name="target_resume"),
    path("repos/<slug:name>/releases/<path:version>/", views.release_detail, name="release_detail"),
    path("releases/<int:pk>/deploy", views.release_deploy, name="release_deploy"),
    path("releases/<int:pk>/build", views.release_build, name="release_build"),
    path("releases/<int:pk>/build/start", views.release_build_start, name="release_build_start"),
    path("releases/<int:pk>/artifacts.tar.gz", artifact_views.release_artifacts, name="release_artifacts"),
    path("previews/<int:pk>/artifacts.tar.gz", artifact_views.preview_artifacts, name="preview_artifacts"),
    path("deployments/<int:pk>/", views.deployment_detail, name="deployment_detail"),
    path("deployments/<int:pk>/log", views.deployment_log, name="deployment_log"),
    path("deployments/<int:pk>/log.txt", views.deployment_log_text, name="deployment_log_text"),
    path("deployments/<int:pk>/retry", views.deployment_retry, name="deployment_retry"),
    path("checks/<int:pk>/", check_views.check_detail, name="check_detail"),
    path("checks/<int:pk>/run/", check_views.check_run, name="check_run"),
    path("checks/<int:pk>/artifacts.tar.gz", artifact_views.check_artifacts, name="check_artifacts"),
    path("deployments/<int:pk>/rollback", views.deployment_rollback, name="deployment_rollback"),
    path("environments/<slug:name>/", views.environment_detail, name="environment_detail"),
    path("environments/<slug:name>/<str:repository>/check-drift", drift_views.check_drift_now, name="check_drift_now"),
    path("drift-checks/<int:pk>/", drift_views.drift_check_detail, name="drift_check_detail"),
    path("hooks/<slug:name>", webhooks.receive, name="webhook"),
    path("insights/", insights_views.insights_page, name="insights"),
    path("insights/export.csv", insights_views.insights_export_csv, name="insights_export_csv"),
    path("audit/", audit_views.audit_log, name="audit_log"),
    path("audit/verify", audit_views.audit_verify, name="audit_verify"),
    path("audit/export.csv", audit_views.audit_export_csv, name="audit_export_csv"),
    path("audit/export.json", audit_views.audit_export_json, name="audit_export_json"),
    # Cancel, one view for every kind of run: deployments/<id>/cancel (deployment_cancel), builds/…, checks/…
    *(path(f"{slugify(model._meta.verbose_name_plural)}/<int:pk>/cancel", views.run_cancel, {"kind": kind},
           name=f"{kind}_cancel")
      for kind, model in cancelling.kinds().items()),
]
