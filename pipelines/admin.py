"""The platform admin's side: repositories, environments and lifecycles are edited here; what the portal recorded is read-only.

Every add, change and delete made through the admin also lands in the hash-chained audit log."""

import json
import logging
from datetime import timedelta
from fnmatch import fnmatchcase

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, User
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from pipelines import jobs, secrets
from pipelines.models import (AuditEvent, Build, Check, Deployment, Environment, EnvironmentSecret, ExternalCheck, FollowUp,
                              Lifecycle, Preview, Release, Repository, RepositorySecret, Stage, TagMove, Target)
from pipelines.models.followup import PROMOTE_REEVALUATE
from pipelines.redaction import display_url, redact, redact_text

logger = logging.getLogger(__name__)


class AuditedAdminMixin:
    """Writes an AuditEvent next to each admin LogEntry.

    Values go on record through an allow-list: `audited_fields` are recorded with their old and new value
    (so "required_approvals 2 → 1" is on record), `audited_secrets` by name only ("changed"), and any
    other field only by name, in the admin's own change message. A field added to a model therefore never
    lands in the log by accident. Credentials in URLs are redacted (`https://***@host/…`)."""

    audited_fields = ()
    audited_secrets = ()

    def save_model(self, request, obj, form, change):
        self.remember_audited_values(request, obj, form, change)
        super().save_model(request, obj, form, change)

    def remember_audited_values(self, request, obj, form, change):
        # The form has already written the new values onto obj: the old ones come from the stored row.
        before = type(obj)._default_manager.filter(pk=obj.pk).first() if change else None
        values = self._changed_values(form, before) if before else self._initial_values(form)
        obj._audited_values = values  # read back by log_addition/log_change, right after the save

    def _is_secret(self, name, form):
        return (name in self.audited_secrets or "secret" in name or "password" in name
                or isinstance(form.fields.get(name), SecretField))

    def _changed_values(self, form, before):
        values = {}
        for name in form.changed_data:
            if self._is_secret(name, form):
                values[name] = "changed"
            elif name in self.audited_fields:
                values[name] = [_plain(getattr(before, name, None)), _plain(form.cleaned_data.get(name))]
        return redact(values)

    def _initial_values(self, form):
        values = {}
        for name in form.fields:
            if self._is_secret(name, form):
                if form.cleaned_data.get(name):
                    values[name] = "set"
            elif name in self.audited_fields:
                values[name] = _plain(form.cleaned_data.get(name))
        return redact(values)

    def _audited_values(self, request, obj):
        return getattr(obj, "_audited_values", {})

    def log_addition(self, request, obj, message):
        details = {"change": message, "values": self._audited_values(request, obj)}
        AuditEvent.objects.record(action="admin.add", actor=request.user, obj=obj, details=details)
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        details = {"change": message, "values": self._audited_values(request, obj)}
        AuditEvent.objects.record(action="admin.change", actor=request.user, obj=obj, details=details)
        return super().log_change(request, obj, message)

    def save_formset(self, request, form, formset, change):
        """Inline rows (a lifecycle's stages) go on record one by one, through the inline's own allow-list."""
        audited = getattr(formset, "audited_fields", ())
        before = {}
        if audited:
            ids = [f.instance.pk for f in formset.forms if f.instance.pk and f.has_changed()]
            before = {obj.pk: obj for obj in formset.model._default_manager.filter(pk__in=ids)}
            for deleted in formset.deleted_forms:
                if deleted.instance.pk:
                    AuditEvent.objects.record(action="admin.delete", actor=request.user, obj=deleted.instance,
                                              details={"of": str(form.instance)})
        super().save_formset(request, form, formset, change)
        for inline_form in formset.forms if audited else ():
            obj = inline_form.instance
            if inline_form not in formset.deleted_forms and inline_form.has_changed() and obj.pk:
                old = before.get(obj.pk)
                values = {name: ([_plain(getattr(old, name, None)), _plain(inline_form.cleaned_data.get(name))] if old
                                 else _plain(inline_form.cleaned_data.get(name)))
                          for name in inline_form.changed_data if name in audited}
                AuditEvent.objects.record(action="admin.change" if old else "admin.add", actor=request.user, obj=obj,
                                          details={"of": str(form.instance), "values": redact(values)})

    def log_deletions(self, request, queryset):
        # Called once before the deletion, with every object about to go (one, or a whole selection).
        for obj in queryset:
            AuditEvent.objects.record(action="admin.delete", actor=request.user, obj=obj)
        return super().log_deletions(request, queryset)


class AuditedAdmin(AuditedAdminMixin, admin.ModelAdmin):
    pass


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


class ArchivedFilter(admin.SimpleListFilter):
    title = "archive"
    parameter_name = "archived"

    def lookups(self, request, model_admin):
        return [("no", "In use"), ("yes", "Archived")]

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.filter(archived_at__isnull=True)
        if self.value() == "yes":
            return queryset.filter(archived_at__isnull=False)
        return queryset


class RepositoryForm(forms.ModelForm):
    """The repository's settings, checked against the remote when saved: a setup that can never work is
    refused with the reason (unless "save anyway" is ticked, for a host that is down for a while)."""

    # The fields whose change makes the form ask the remote again.
    CHECKED_FIELDS = ("url", "branch", "release_from", "tag_pattern")

    webhook_secret = SecretField(label="Webhook secret", required=False, max_length=200)
    api_token = SecretField(label="API token", required=False, max_length=2000)
    remove_api_token = forms.BooleanField(label="Remove the API token", required=False,
                                          help_text="Checks are then no longer reported to the git host.")
    save_anyway = forms.BooleanField(
        label="Save even if the check fails", required=False,
        help_text="When you save, the portal lists the remote's branches and tags (git ls-remote, a few seconds "
                  "at most). Tick this to save a repository whose host is unreachable right now.")

    class Meta:
        model = Repository
        fields = "__all__"
        labels = {"url": "Git URL", "web_url": "Web page", "release_from": "Releases from",
                  "tag_pattern": "Tag pattern", "pipeline_path": "Pipeline file", "poll_interval": "Poll every"}
        help_texts = {
            "name": "Short name used in the portal's addresses, e.g. 'shop'.",
            "branch": "The branch whose commits become releases (with 'Every commit') and that checks follow.",
            "tag_pattern": "A glob: 'v*' for every tag starting with v, 'v[0-9]*' for v followed by a digit.",
            "pipeline_path": "The file in the repository that defines the steps, read at each release's commit.",
            "poll_interval": "Seconds between looks at the remote (a webhook makes it look at once).",
            "enabled": "Untick to stop polling and webhooks for a while. To retire it, archive it instead.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        webhook_path = reverse("webhook", args=[self.instance.name or "repository-name"])
        webhook_url = settings.GITOPS_BASE_URL.rstrip("/") + webhook_path
        state = "A secret is set; leave blank to keep it." if self.instance.webhook_secret else "No secret is set."
        self.fields["webhook_secret"].help_text = (
            f"Write-only. {state} The git host signs its webhook calls to {webhook_url} with this secret."
        )
        token_state = ("A token is set; leave blank to keep it." if self.instance.has_api_token
                       else "No token is set: no commit statuses are reported.")
        self.fields["api_token"].help_text = (
            f"Write-only, stored encrypted. {token_state} Checks are reported with it as commit statuses: on "
            f"GitHub a token with the repo:status scope (fine-grained: Commit statuses, read and write), on "
            f"GitLab one with the api scope."
        )
        if "lifecycle" in self.fields:
            # Its default is a callable, for which Django compares against a hidden initial value; the
            # stored value is the initial one, so a form that leaves it alone does not report it changed.
            self.fields["lifecycle"].show_hidden_initial = False

    def clean_webhook_secret(self):
        return self.cleaned_data["webhook_secret"] or self.instance.webhook_secret

    def clean_api_token(self):
        token = self.cleaned_data["api_token"].strip()
        if token:
            try:
                self.instance.set_api_token(token)  # encrypted here; the plain token goes no further
            except secrets.SecretsNotConfigured as exc:
                raise ValidationError(str(exc)) from None
        return token

    def clean(self):
        """Ask the remote (only when what it answers could have changed), and note what it said: the
        admin shows `self.findings` as messages after saving, `self.warnings` as warnings."""
        cleaned = super().clean()
        if cleaned.get("remove_api_token"):
            if cleaned.get("api_token"):
                self.add_error("remove_api_token", "Either give a new API token or remove it, not both.")
            else:
                self.instance.set_api_token("")
        self.findings, self.warnings = [], []
        if any(name in self.errors for name in ("url", *self.CHECKED_FIELDS)):
            return cleaned
        url = cleaned.get("url", "")
        others = Repository.objects.filter(url=url).exclude(pk=self.instance.pk).values_list("name", flat=True)
        if others:
            self.warnings.append(f"The same git URL is registered as {', '.join(sorted(others))}: each registration "
                                 f"deploys and asks for approvals separately. Archive the ones you do not need.")
        if self.instance.pk and not any(name in self.changed_data for name in self.CHECKED_FIELDS):
            return cleaned
        problem = self._check_remote(cleaned)
        if problem and not cleaned.get("save_anyway"):
            raise ValidationError(f"{problem} Correct it, or tick “Save even if the check fails”.")
        if problem:
            self.warnings.append(f"Saved although the check failed: {problem}")
        return cleaned

    def _check_remote(self, cleaned):
        """What is wrong with the setup according to the remote, in words, or "" (adding what it found to
        self.findings / self.warnings)."""
        from pipelines import git  # GitPython: loaded only when a repository is saved, not in every web process

        candidate = Repository(**{name: cleaned.get(name) for name in ("name", "url", "branch", "release_from", "tag_pattern")})
        try:
            refs = git.probe_remote(candidate)
        except git.GitError as exc:
            return f"{exc}."
        branch, pattern = cleaned.get("branch"), cleaned.get("tag_pattern")
        tags = [name.removeprefix("refs/tags/") for name in refs if name.startswith("refs/tags/")]
        if f"refs/heads/{branch}" not in refs:
            branches = sorted(name.removeprefix("refs/heads/") for name in refs if name.startswith("refs/heads/"))
            missing = f"The remote has no branch {branch!r} (it has: {', '.join(branches[:10]) or 'none'})."
            if cleaned.get("release_from") == Repository.ReleaseFrom.COMMITS:
                return missing
            self.warnings.append(missing)
        else:
            self.findings.append(f"Connected; the branch {branch!r} exists.")
        if cleaned.get("release_from") == Repository.ReleaseFrom.TAGS:
            matching = sum(1 for tag in tags if fnmatchcase(tag, pattern))
            text = f"{matching} of the remote's {len(tags)} tags match {pattern!r}."
            if matching:
                self.findings.append(text)
            else:
                self.warnings.append(f"{text} No release appears until a matching tag is pushed.")
        return ""


@admin.register(Repository)
class RepositoryAdmin(AuditedAdmin):
    form = RepositoryForm
    audited_fields = ["name", "url", "web_url", "enabled", "branch", "release_from", "tag_pattern", "pipeline_path",
                      "pipeline_from_branch", "poll_interval", "lifecycle", "check_branches", "git_host", "api_url",
                      "host_project"]
    audited_secrets = ["webhook_secret", "api_token"]
    # The URL's input keeps its real value for staff to edit; everywhere it is only shown, it is redacted.
    list_display = ["name", "shown_url", "lifecycle", "release_from", "enabled", "archived", "last_polled_at",
                    "short_last_error"]
    list_filter = [ArchivedFilter, "enabled", "lifecycle", "release_from"]
    list_select_related = ["lifecycle"]
    search_fields = ["name"]  # not the URL: a search would confirm a guessed token
    readonly_fields = ["last_polled_at", "shown_last_error", "last_error_at", "created_at", "commit_status_reporting",
                       "archived_at"]
    fieldsets = [
        (None, {"fields": ["name", "url", "web_url", "enabled", "lifecycle"]}),
        ("What becomes a release", {"fields": ["branch", "release_from", "tag_pattern", "pipeline_path",
                                               "pipeline_from_branch"]}),
        ("Change detection", {"fields": ["poll_interval", "webhook_secret", "save_anyway"]}),
        ("Checks of branches and pull requests", {"fields": ["check_branches"]}),
        ("Commit statuses", {"fields": ["git_host", "api_url", "host_project", "api_token", "remove_api_token",
                                        "commit_status_reporting"]}),
        ("State", {"fields": ["last_polled_at", "shown_last_error", "last_error_at", "created_at", "archived_at"]}),
    ]
    actions = ["poll_now", "archive", "restore"]
    delete_instead_template = "admin/pipelines/repository/delete_instead.html"

    def get_actions(self, request, action_location=admin.ActionLocation.CHANGE_LIST):
        # Deleting is never possible (its history refers to it): "Archive" takes the place of delete.
        actions = super().get_actions(request, action_location)
        actions.pop("delete_selected", None)
        return actions

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        for finding in getattr(form, "findings", ()):
            self.message_user(request, finding, messages.INFO)
        for warning in getattr(form, "warnings", ()):
            self.message_user(request, warning, messages.WARNING)

    def delete_view(self, request, object_id, extra_context=None):
        """Not a dead end: why a repository is archived rather than deleted, and the button that does it."""
        repository = self.get_object(request, object_id)
        if repository is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_change_permission(request, repository):
            raise PermissionDenied
        if request.method == "POST":
            self._archive_or_restore(request, repository, restore=request.POST.get("restore") == "1")
            return redirect("admin:pipelines_repository_change", repository.pk)
        context = {**self.admin_site.each_context(request), "opts": self.opts, "repository": repository,
                   "title": f"Archive {repository.name}?", **(extra_context or {})}
        return TemplateResponse(request, self.delete_instead_template, context)

    @admin.display(description="archived", boolean=True)
    def archived(self, repository):
        return repository.is_archived

    @admin.action(description="Archive (hide, stop polling, keep history)", permissions=["change"])
    def archive(self, request, queryset):
        for repository in queryset:
            self._archive_or_restore(request, repository, restore=False)

    @admin.action(description="Restore from the archive", permissions=["change"])
    def restore(self, request, queryset):
        for repository in queryset:
            self._archive_or_restore(request, repository, restore=True)

    def _archive_or_restore(self, request, repository, *, restore):
        if restore:
            done = repository.restore(by=request.user)
            text = "is back: polled again and on the dashboard" if done else "was not archived"
        else:
            done = repository.archive(by=request.user)
            text = ("is archived: no longer polled or on the dashboard; its releases, deployments and audit "
                    "events are kept, and you can restore it" if done else "was archived already")
        self.message_user(request, f"{repository.name} {text}.", messages.SUCCESS if done else messages.INFO)

    def get_inlines(self, request, obj):
        return [RepositorySecretInline]

    def save_formset(self, request, form, formset, change):
        if formset.model is not RepositorySecret:
            return super().save_formset(request, form, formset, change)
        _save_secrets(request, form, formset)

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        # View-only staff see every field as text: the URL as it may be shown, and no token field at all.
        return [(title, {**options, "fields": [("shown_url" if f == "url" else f) for f in options["fields"]
                                               if f not in ("api_token", "remove_api_token")]})
                for title, options in fieldsets]

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), "shown_url"]

    def remember_audited_values(self, request, obj, form, change):
        super().remember_audited_values(request, obj, form, change)
        if form.cleaned_data.get("remove_api_token") and change:
            obj._audited_values = {**obj._audited_values, "api_token": "removed"}

    @admin.display(description="reporting")
    def commit_status_reporting(self, repository):
        from pipelines.commit_status import reporting_trouble

        trouble = reporting_trouble(repository)
        if trouble:
            return trouble
        if repository.reports_commit_statuses:
            return f"Checks are reported to {repository.git_host_label} ({repository.effective_host_project})."
        return "Off: checks are reported once a git host, a project and an API token are known."

    @admin.display(description="URL", ordering="url")
    def shown_url(self, repository):
        return display_url(repository.url)

    @admin.display(description="last error")
    def short_last_error(self, repository):
        return redact_text(repository.last_error)[:120]

    @admin.display(description="last error")
    def shown_last_error(self, repository):
        return redact_text(repository.last_error)

    @admin.action(
        description="Poll now",
        permissions=["change"],
        location=[admin.ActionLocation.CHANGE_LIST, admin.ActionLocation.CHANGE_FORM],
    )
    def poll_now(self, request, queryset):
        """Ask for a poll of each: git runs in a worker, never in this web request (a silent host would
        hold it for minutes). The request is recorded first, so the sweep serves it if the queue is away."""
        names = []
        for repository in queryset:
            repository.request_poll(by=request.user)
            names.append(repository.name)
        when = "as soon as the work queue is back" if jobs.queue_was_unreachable() else "now"
        self.message_user(request, f"Polling {', '.join(names)} {when}; new releases show on the repository page.",
                          messages.SUCCESS)


# --- environments ------------------------------------------------------------------------------------


class EnvironmentSecretForm(forms.ModelForm):
    """Name and value of one secret. The value is write-only: never rendered, blank keeps the stored one."""

    value = SecretField(label="Value", required=False, max_length=32768)

    class Meta:
        model = EnvironmentSecret
        fields = ["name", "value"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["value"].help_text = ("Write-only. Leave blank to keep the stored value." if self.instance.pk
                                          else "Write-only: never shown again.")

    def clean(self):
        cleaned = super().clean()
        value = cleaned.get("value")
        if value:
            try:
                self.instance.set_value(value)  # encrypted here; the plain value goes no further
            except ValidationError as exc:
                self.add_error("value", exc)
            except secrets.SecretsNotConfigured as exc:
                self.add_error("value", str(exc))
        elif not self.instance.pk:
            self.add_error("value", "Give the secret's value.")
        return cleaned


class RepositorySecretForm(EnvironmentSecretForm):
    class Meta:
        model = RepositorySecret
        fields = ["name", "value"]


class RepositorySecretInline(admin.TabularInline):
    model = RepositorySecret
    form = RepositorySecretForm
    extra = 0
    fields = ["name", "value", "updated_at", "updated_by"]
    readonly_fields = ["updated_at", "updated_by"]
    verbose_name_plural = "check secrets (given only to the checks: steps of this repository, never to a deployment)"

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        return fields if self.has_change_permission(request, obj) else [f for f in fields if f != "value"]


class EnvironmentSecretInline(admin.TabularInline):
    model = EnvironmentSecret
    form = EnvironmentSecretForm
    extra = 0
    fields = ["name", "value", "updated_at", "updated_by"]
    readonly_fields = ["updated_at", "updated_by"]
    verbose_name_plural = "secrets (given only to this environment's deploy steps, masked in their logs)"

    def get_fields(self, request, obj=None):
        # Staff who may only view get no value field at all: a read-only field would look the value up.
        fields = super().get_fields(request, obj)
        return fields if self.has_change_permission(request, obj) else [f for f in fields if f != "value"]


@admin.register(Environment)
class EnvironmentAdmin(AuditedAdmin):
    """A real place to deploy to, and its secrets. The order of promotion and the rules are a lifecycle's."""

    inlines = [EnvironmentSecretInline]
    audited_fields = ["name", "position"]
    list_display = ["name", "position", "lifecycle_names"]
    list_display_links = ["name"]
    list_editable = ["position"]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("stages__lifecycle")

    @admin.display(description="in lifecycles")
    def lifecycle_names(self, environment):
        return ", ".join(sorted(stage.lifecycle.name for stage in environment.stages.all())) or "—"

    def save_formset(self, request, form, formset, change):
        """Stamp who changed each secret, and put the secrets' names (never their values) on the audit record
        that log_addition/log_change write next."""
        if formset.model is not EnvironmentSecret:
            return super().save_formset(request, form, formset, change)
        _save_secrets(request, form, formset)


def _save_secrets(request, form, formset):
    """Save a formset of secrets (an environment's, a repository's check secrets), stamping who changed each,
    and put their names (never their values) on the audit record that log_addition/log_change write next."""
    touched = {}
    for secret_form in formset.forms:
        if secret_form in formset.deleted_forms or not secret_form.has_changed():
            continue
        secret = secret_form.instance
        touched[secret.name] = "set" if secret.pk is None else "changed"
        secret.updated_at, secret.updated_by = timezone.now(), request.user
    for secret_form in formset.deleted_forms:
        if secret_form.instance.pk is not None:
            touched[secret_form.instance.name] = "deleted"
    formset.save()
    if touched:
        form.instance._audited_values = {**getattr(form.instance, "_audited_values", {}), "secrets": touched}


class StageFormSet(forms.BaseInlineFormSet):
    # Every field of a stage decides where releases go without a person: all of it goes on record.
    audited_fields = ["environment", "position", "auto_deploy", "requires_approval", "requires_passing_checks",
                      "take_prereleases", "version_constraint", "soak_time", "rollback_on_failure", "drift_interval",
                      "correct_drift"]


class SoakTimeField(forms.DurationField):
    """A stage's soak time: empty is none (0), so a row saved without it changes nothing."""

    def to_python(self, value):
        return super().to_python(value) or timedelta(0)


class StageInline(admin.TabularInline):
    model = Stage
    formset = StageFormSet
    fields = ["position", "environment", "auto_deploy", "requires_approval", "requires_passing_checks",
              "take_prereleases", "version_constraint", "soak_time", "rollback_on_failure", "drift_interval",
              "correct_drift"]
    ordering = ["position"]
    extra = 1

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "soak_time":
            kwargs["form_class"] = SoakTimeField
        return super().formfield_for_dbfield(db_field, request, **kwargs)


@admin.register(Lifecycle)
class LifecycleAdmin(AuditedAdmin):
    """A lifecycle's stages in order. Who approves a stage that requires approval is set in its stage
    policy (the approvals part of the admin)."""

    audited_fields = ["name", "description"]
    list_display = ["name", "stage_names", "repository_count"]
    inlines = [StageInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("stages__environment", "repositories")

    @admin.display(description="stages")
    def stage_names(self, lifecycle):
        stages = sorted(lifecycle.stages.all(), key=lambda stage: stage.position)
        return " → ".join(stage.environment.name + "".join(f" ({note})" for note in _stage_notes(stage))
                          for stage in stages) or "—"

    @admin.display(description="repositories")
    def repository_count(self, lifecycle):
        return len(lifecycle.repositories.all())

    def save_related(self, request, form, formsets, change):
        """Once the stages are saved, promotion decides again for each repository that follows the lifecycle: a
        stage that now deploys automatically, or takes versions it refused, takes the newest it may."""
        super().save_related(request, form, formsets, change)
        if change and any(f.has_changed() for formset in formsets for f in formset.forms):
            for repository in form.instance.repositories.filter(enabled=True, archived_at__isnull=True):
                FollowUp.objects.schedule(PROMOTE_REEVALUATE, repository=repository,
                                          payload={"because": f"the lifecycle {form.instance} was edited"})


def _stage_notes(stage):
    return (["approval"] if stage.requires_approval else []) + ([stage.version_rule] if stage.version_rule else [])


# --- what the portal recorded: read-only -------------------------------------------------------------


@admin.register(Target)
class TargetAdmin(AuditedAdmin):
    """Only the pause can be changed, and through the model's own pause/resume. An internal table (the
    repository and release pages show the same, and pause there): listed for superusers only."""

    def has_module_permission(self, request):
        return request.user.is_superuser

    audited_fields = ["auto_deploy_paused", "paused_reason"]

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
        self.remember_audited_values(request, obj, form, change)
        if obj.auto_deploy_paused:
            obj.pause(by=request.user, reason=obj.paused_reason.strip())
        else:
            obj.resume(by=request.user)


class TagMoveInline(admin.TabularInline):
    """What the poller saw the release's tag do; recorded by polls only."""

    model = TagMove
    fields = ["seen_at", "kind", "from_sha", "to_sha"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Release)
class ReleaseAdmin(ReadOnlyAdmin):
    list_display = [
        "repository", "version", "short_sha", "author_name", "detected_at", "is_valid", "blocked", "tag_moved_to",
        "tag_deleted",
    ]
    list_filter = ["repository", "blocked", "tag_deleted"]
    inlines = [TagMoveInline]
    list_select_related = ["repository"]
    search_fields = ["version", "commit_sha", "message", "author_name", "author_email"]
    date_hierarchy = "detected_at"

    @admin.display(boolean=True, description="valid")
    def is_valid(self, release):
        return release.is_valid


@admin.register(Check)
class CheckAdmin(ReadOnlyAdmin):
    """Checks are recorded by polling and webhooks and run by workers: read-only here, like builds."""

    list_display = ["id", "repository", "ref_name", "commit_sha", "status", "created_at", "finished_at"]
    list_filter = ["status", "repository"]
    list_select_related = ["repository"]
    search_fields = ["commit_sha", "ref_name"]
    date_hierarchy = "created_at"


@admin.register(ExternalCheck)
class ExternalCheckAdmin(ReadOnlyAdmin):
    """Results CI reported through the API (audited there): read-only here, so that the audit log stays the
    only account of who said what."""

    list_display = ["name", "repository", "commit_sha", "state", "reported_by", "updated_at"]
    list_filter = ["state", "repository"]
    list_select_related = ["repository", "reported_by"]
    search_fields = ["commit_sha", "name"]


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


@admin.register(Build)
class BuildAdmin(ReadOnlyAdmin):
    list_display = ["id", "release", "status", "artifact_size", "created_at", "finished_at"]
    list_filter = ["status", "release__repository"]
    list_select_related = ["release__repository"]
    search_fields = ["release__version", "error", "artifact_sha256"]
    readonly_fields = ["page"]

    @admin.display(description="status, log and artifacts")
    def page(self, build):
        return format_html('<a href="{}">Open {} in the portal</a>', build.release.get_absolute_url(), build.release)


@admin.register(Preview)
class PreviewAdmin(ReadOnlyAdmin):
    list_display = ["id", "deployment", "number", "status", "base_release", "artifact_size", "created_at", "finished_at"]
    list_filter = ["status", "deployment__repository", "deployment__environment"]
    list_select_related = ["deployment__release", "deployment__environment", "base_release"]
    search_fields = ["deployment__release__version", "error", "artifact_sha256"]
    readonly_fields = ["page"]

    @admin.display(description="deployment")
    def page(self, preview):
        url = preview.deployment.get_absolute_url()
        return format_html('<a href="{}">Open deployment #{} in the portal</a>', url, preview.deployment_id)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = [
        "seq", "created_at", "actor_name", "action", "object_type", "object_repr", "repository", "environment",
    ]
    list_filter = ["action", "repository", "environment"]
    list_select_related = ["repository", "environment"]
    search_fields = ["actor_name", "action", "object_repr", "object_id"]
    date_hierarchy = "created_at"
    exclude = ["details"]
    readonly_fields = ["shown_details"]

    @admin.display(description="details")
    def shown_details(self, event):
        # Events recorded before credentials were redacted on the way in are redacted on the way out.
        return json.dumps(redact(event.details), ensure_ascii=False, sort_keys=True, indent=1)


# --- accounts: who approves is policy, so changes to users and groups are audited too -----------------

admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class AuditedUserAdmin(AuditedAdminMixin, UserAdmin):
    audited_fields = ["username", "email", "first_name", "last_name", "is_active", "is_staff", "is_superuser",
                      "groups", "user_permissions"]
    audited_secrets = ["password", "password1", "password2", "usable_password"]


@admin.register(Group)
class AuditedGroupAdmin(AuditedAdminMixin, GroupAdmin):
    audited_fields = ["name", "permissions"]


# --- internals --------------------------------------------------------------------------------------


def _superusers_only_queue_link():
    """django_rq lists its queue dashboard on the admin index for any staff with its permissions; it is an
    internal (and pipelines/rq_dashboard.py answers 403 to anyone but superusers): the link follows suit."""
    from django_rq.admin import QueueAdmin
    from django_rq.models import Dashboard

    if not admin.site.is_registered(Dashboard):
        return

    class SuperusersQueueAdmin(QueueAdmin):
        def has_module_permission(self, request):
            return request.user.is_superuser

    admin.site.unregister(Dashboard)
    admin.site.register(Dashboard, SuperusersQueueAdmin)


_superusers_only_queue_link()
