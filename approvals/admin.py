"""The approvals app in the Django admin."""

from django.contrib import admin
from django.utils import timezone

from approvals.freeze import format_until, window_end
from approvals.models import ChangeRequest, Decision, FreezeOverride, FreezeWindow, StagePolicy
from pipelines.admin import AuditedAdmin, ReadOnlyAdmin

# ======================================================================================================
# Freeze windows — edited here by platform admins; validated by FreezeWindow.clean() (the admin's
# ModelForm runs full_clean), and every add, change and delete lands in the audit log (AuditedAdmin).
# ======================================================================================================


@admin.register(FreezeWindow)
class FreezeWindowAdmin(AuditedAdmin):
    list_display = ["name", "schedule", "environment_names", "enabled", "frozen_now"]
    list_filter = ["enabled", "environments"]
    search_fields = ["name", "reason"]
    filter_horizontal = ["environments"]
    readonly_fields = ["created_by", "created_at"]
    # A freeze decides when production may change: every field of it goes on record with its values.
    audited_fields = ["name", "environments", "reason", "enabled", "starts_at", "ends_at", "cron", "duration", "time_zone"]
    fieldsets = [
        (None, {"fields": ["name", "environments", "reason", "enabled"]}),
        (
            "One-off window",
            {
                "fields": ["starts_at", "ends_at"],
                "description": "From a start to an end; leave the recurring fields empty.",
            },
        ),
        (
            "Recurring window",
            {
                "fields": ["cron", "duration", "time_zone"],
                "description": (
                    "Starts whenever the cron rule fires on the local clock of the time zone and lasts the duration "
                    "in real time (across a daylight-saving change too). Leave the one-off fields empty."
                ),
            },
        ),
        ("Record", {"fields": ["created_by", "created_at"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("environments")

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    @admin.display(description="when")
    def schedule(self, window):
        if window.is_recurring:
            return f"{window.cron} ({window.time_zone}) for {window.duration}"
        if window.starts_at and window.ends_at:
            return f"{format_until(window.starts_at)} → {format_until(window.ends_at)}"
        return "—"

    @admin.display(description="environments")
    def environment_names(self, window):
        return ", ".join(environment.name for environment in window.environments.all())

    @admin.display(description="frozen now")
    def frozen_now(self, window):
        until = window_end(window, timezone.now())
        return f"until {format_until(until)}" if until else "—"


# ======================================================================================================
# Stage policies — the approval part of a lifecycle stage: who approves, how many must.
# ======================================================================================================


@admin.register(StagePolicy)
class StagePolicyAdmin(AuditedAdmin):
    # The whole policy is on record with its old and new values; add new policy fields here.
    audited_fields = ["stage", "required_approvals", "approver_group", "allow_self_approval", "block_commit_authors",
                      "approval_timeout", "allow_api_approval", "pre_approved_rollback"]
    list_display = ["stage", "required_approvals", "approver_group", "allow_self_approval", "block_commit_authors",
                    "approval_timeout", "allow_api_approval", "pre_approved_rollback"]
    list_filter = ["stage__lifecycle", "stage__environment"]
    list_select_related = ["stage__lifecycle", "stage__environment", "approver_group"]


# ======================================================================================================
# Change requests, decisions and freeze overrides — records, read-only: the pages and
# ChangeRequest.approve()/reject() are the one way to change them.
# ======================================================================================================


class DecisionInline(admin.TabularInline):
    model = Decision
    fields = ["user", "verdict", "comment", "decided_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(ChangeRequest)
class ChangeRequestAdmin(ReadOnlyAdmin):
    list_display = ["id", "repository", "environment", "stage", "deployment", "status", "requested_by", "opened_at",
                    "decided_at"]
    list_filter = ["status", "environment", "repository"]
    list_select_related = ["repository", "environment", "stage__lifecycle", "stage__environment", "deployment__release__repository", "deployment__environment", "requested_by"]
    inlines = [DecisionInline]


@admin.register(FreezeOverride)
class FreezeOverrideAdmin(ReadOnlyAdmin):
    list_display = ["deployment", "user", "reason", "created_at"]
    list_select_related = ["deployment__release__repository", "deployment__environment", "user"]
