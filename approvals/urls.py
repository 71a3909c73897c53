from django.urls import path

from approvals import insights_views, views

urlpatterns = [
    path("", views.inbox, name="approvals_inbox"),
    path("badge", views.navigation_badge, name="approvals_navigation_badge"),
    path("<int:pk>/", views.change_request_detail, name="change_request_detail"),
    path("<int:pk>/preview", views.change_request_preview, name="change_request_preview"),
    path("<int:pk>/preview/again", views.change_request_preview_again, name="change_request_preview_again"),
    path("<int:pk>/approve", views.change_request_approve, name="change_request_approve"),
    path("<int:pk>/reject", views.change_request_reject, name="change_request_reject"),
    path("insights/approval-wait.csv", insights_views.approval_wait_export_csv, name="approval_wait_export_csv"),
    path("releases/<int:pk>/actions", views.release_actions, name="release_actions"),
    path("releases/<int:pk>/approvals", views.release_approvals, name="release_approvals"),
    path("releases/<int:pk>/promote", views.release_promote, name="release_promote"),
    path("releases/<int:pk>/rollback", views.release_rollback, name="release_rollback"),
    path("releases/<int:pk>/block", views.release_block, name="release_block"),
    path("releases/<int:pk>/unblock", views.release_unblock, name="release_unblock"),
    path("deployments/<int:pk>/change-request", views.deployment_change_request, name="deployment_change_request"),
    path("deployments/<int:pk>/freeze", views.deployment_freeze, name="deployment_freeze"),
    path("deployments/<int:pk>/deploy-anyway", views.deployment_freeze_override, name="deployment_freeze_override"),
]
