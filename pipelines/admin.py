"""The platform admin's side: repositories and environments are edited here; what the portal recorded is read-only.

Every add, change and delete made through the admin also lands in the hash-chained audit log."""

import logging

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.urls import reverse
from django.utils.html import format_html

from pipelines.models import AuditEvent, Deployment, Environment, Release, Repository, Target

logger = logging.getLogger(__name__)


class AuditedAdminMixin:
    """Writes an AuditEvent next to each admin LogEntry, with the old and new value of every changed field
    (so "required_approvals 2 → 1" is on record), except secrets and passwords, which appear by name only."""

    def save_model(self, request, obj, form, change):
        # The form has already written the new values onto obj: the old ones come from the stored row.
        before = type(obj)._default_manager.filter(pk=obj.pk).first() if change else None
        request._audited_values = _changed_values(form, before) if before else {}
        super().save_model(request, obj, form, change)

    def log_addition(self, request, obj, message):
        AuditEvent.objects.record(action="admin.add", actor=request.user, obj=obj, details={"change": message})
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        details = {"change": message, "values": getattr(request, "_audited_values", {})}
        AuditEvent.objects.record(action="admin.change", actor=request.user, obj=obj, details=details)
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        # Called once before the deletion, with every object about to go (one, or a whole selection).
        for obj in queryset:
            AuditEvent.objects.record(action="admin.delete", actor=request.user, obj=obj)
        return super().log_deletions(request, queryset)


class AuditedAdmin(AuditedAdminMixin, admin.ModelAdmin):
    pass


def _changed_values(form, before):
    values = {}
    for name in form.changed_data:
        if "secret" in name or "password" in name or isinstance(form.fields.get(name), SecretField):
            continue
        values[name] = [_plain(getattr(before, name, None)), _plain(form.cleaned_data.get(name))]
    return values


def _plain(value):
    """A JSON-able, readable form of a field value (model instances and sets of them by name)."""
    if hasattr(value, "all"):  # a many-to-many manager
        value = value.all()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "__iter__") and not isinstance(value, (bytes, dict)):
        return sorted(str(item) for item in value)
    return str(value)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- repositories ------------------------------------------------------------------------------------


class SecretField(forms.CharField):
    """A write-only value: never rendered back; left blank, the stored value stays."""

    widget = forms.PasswordInput(render_value=False)

    def has_changed(self, initial, data):
        return bool(data) and data != initial


class RepositoryForm(forms.ModelForm):
    webhook_secret = SecretField(label="Webhook secret", required=False, max_length=200)

    class Meta:
        model = Repository
        fields = "__all__"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        webhook_path = reverse("webhook", args=[self.instance.name or "repository-name"])
        webhook_url = settings.GITOPS_BASE_URL.rstrip("/") + webhook_path
        state = "A secret is set; leave blank to keep it." if self.instance.webhook_secret else "No secret is set."
        self.fields["webhook_secret"].help_text = (
            f"Write-only. {state} The git host signs its webhook calls to {webhook_url} with this secret."
        )

    def clean_webhook_secret(self):
        return self.cleaned_data["webhook_secret"] or self.instance.webhook_secret


@admin.register(Repository)
class RepositoryAdmin(AuditedAdmin):
    form = RepositoryForm
    list_display = ["name", "url", "release_from", "enabled", "last_polled_at", "short_last_error"]
    list_filter = ["enabled", "release_from"]
    search_fields = ["name", "url"]
    readonly_fields = ["last_polled_at", "last_error", "last_error_at", "created_at"]
    fieldsets = [
        (None, {"fields": ["name", "url", "web_url", "enabled"]}),
        ("What becomes a release", {"fields": ["branch", "release_from", "tag_pattern", "pipeline_path"]}),
        ("Change detection", {"fields": ["poll_interval", "webhook_secret"]}),
        ("State", {"fields": ["last_polled_at", "last_error", "last_error_at", "created_at"]}),
    ]
    actions = ["poll_now"]

    @admin.display(description="last error")
    def short_last_error(self, repository):
        return repository.last_error[:120]

    @admin.action(
        description="Poll now",
        permissions=["change"],
        location=[admin.ActionLocation.CHANGE_LIST, admin.ActionLocation.CHANGE_FORM],
    )
    def poll_now(self, request, queryset):
        from pipelines import tracking  # written separately; imported only when an admin polls

        for repository in queryset:
            try:
                result = tracking.poll_repository(repository)
            except Exception as exc:  # git and the network: report it, and go on with the next repository
                logger.exception("Polling %s from the admin failed", repository)
                self.message_user(request, f"Polling {repository} failed: {exc or type(exc).__name__}", messages.ERROR)
                continue
            repository.refresh_from_db()
            if repository.last_error:
                self.message_user(request, f"Polling {repository} failed: {repository.last_error}", messages.ERROR)
            else:
                self.message_user(request, f"Polled {repository}. {_describe_poll(result)}".strip(), messages.SUCCESS)


def _describe_poll(result):
    """A few words on what a poll found: a list of new releases, or whatever summary tracking returned."""
    if result is None:
        return ""
    if isinstance(result, (list, tuple)):
        if not result:
            return "No new releases."
        return f"New releases: {', '.join(getattr(r, 'version', str(r)) for r in result)}."
    return str(result)


# --- environments ------------------------------------------------------------------------------------


@admin.register(Environment)
class EnvironmentAdmin(AuditedAdmin):
    list_display = [
        "name", "position", "auto_deploy", "requires_approval", "required_approvals", "approver_group",
        "allow_self_approval", "approval_timeout",
    ]
    list_display_links = ["name"]
    list_editable = ["position", "auto_deploy", "requires_approval", "required_approvals", "allow_self_approval"]


# --- what the portal recorded: read-only -------------------------------------------------------------


@admin.register(Target)
class TargetAdmin(AuditedAdmin):
    """Only the pause can be changed, and through the model's own pause/resume."""

    list_display = [
        "repository", "environment", "current_release", "last_deployment", "auto_deploy_paused", "paused_reason",
    ]
    list_filter = ["environment", "auto_deploy_paused"]
    list_select_related = [
        "repository", "environment", "current_release__repository", "last_deployment__release__repository",
        "last_deployment__environment",
    ]
    fields = [
        "repository", "environment", "current_release", "last_deployment", "auto_deploy_paused", "paused_reason",
        "paused_by", "paused_at",
    ]
    readonly_fields = ["repository", "environment", "current_release", "last_deployment", "paused_by", "paused_at"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)

        class TargetPauseForm(form):
            def clean(self):
                cleaned = super().clean()
                if cleaned.get("auto_deploy_paused") and not cleaned.get("paused_reason", "").strip():
                    self.add_error("paused_reason", "Give a reason for pausing automatic deployment.")
                return cleaned

        return TargetPauseForm

    def save_model(self, request, obj, form, change):
        if not form.changed_data:
            return
        if obj.auto_deploy_paused:
            obj.pause(by=request.user, reason=obj.paused_reason.strip())
        else:
            obj.resume(by=request.user)


@admin.register(Release)
class ReleaseAdmin(ReadOnlyAdmin):
    list_display = [
        "repository", "version", "short_sha", "author_name", "detected_at", "is_valid", "blocked", "tag_moved_to",
    ]
    list_filter = ["repository", "blocked"]
    list_select_related = ["repository"]
    search_fields = ["version", "commit_sha", "message", "author_name", "author_email"]
    date_hierarchy = "detected_at"

    @admin.display(boolean=True, description="valid")
    def is_valid(self, release):
        return release.is_valid


@admin.register(Deployment)
class DeploymentAdmin(ReadOnlyAdmin):
    list_display = [
        "id", "repository", "release_version", "environment", "status", "trigger", "triggered_by", "created_at",
        "finished_at",
    ]
    list_filter = ["status", "trigger", "environment", "repository"]
    list_select_related = ["repository", "release", "environment", "triggered_by"]
    search_fields = ["release__version", "error"]
    date_hierarchy = "created_at"
    readonly_fields = ["page"]

    @admin.display(description="release", ordering="release__version")
    def release_version(self, deployment):
        return deployment.release.version

    @admin.display(description="status and log")
    def page(self, deployment):
        url = deployment.get_absolute_url()
        return format_html('<a href="{}">Open deployment #{} in the portal</a>', url, deployment.pk)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = [
        "seq", "created_at", "actor_name", "action", "object_type", "object_repr", "repository", "environment",
    ]
    list_filter = ["action", "repository", "environment"]
    list_select_related = ["repository", "environment"]
    search_fields = ["actor_name", "action", "object_repr", "object_id"]
    date_hierarchy = "created_at"


# --- accounts: who approves is policy, so changes to users and groups are audited too -----------------

admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class AuditedUserAdmin(AuditedAdminMixin, UserAdmin):
    pass


@admin.register(Group)
class AuditedGroupAdmin(AuditedAdminMixin, GroupAdmin):
    pass
