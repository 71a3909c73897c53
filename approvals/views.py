"""The change-control pages: the approvals inbox, the change-request page with Approve and Reject, and the
deployer's actions that go through change control (promote through the gate, roll back, block, deploy
during a freeze).

Reading pages make a fixed number of queries; the change itself is JSON on the request row. Mutating
views are short: guard, model method, message, redirect. Anything refused leaves nothing changed."""

from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, F, OuterRef, Subquery, Window
from django.db.models.functions import Coalesce
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.utils import timezone
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseStopPolling

from approvals import freeze
from approvals.gate_override import gate_reason, promote_through_gate
from approvals.models import ChangeRequest, Decision, DecisionRefused, StagePolicy
from approvals.presentation import Change
from pipelines.models import Build, Deployment, DeploymentStateError, DriftCheck, Environment, Preview, Release, Target
from pipelines.permissions import artifacts_refusal, deployer_required
from pipelines.promotion import PromotionError, rollback
from pipelines.views import redirect_after_promotion, warn_if_queue_was_unreachable

RECENTLY_DECIDED = 50
# Rows per inbox section unless ?all=1: two hundred rows take longer to render than anyone reads them.
INBOX_ROWS = 50
freeze_overrider_required = permission_required("approvals.deploy_during_freeze", raise_exception=True)


# --- reading -----------------------------------------------------------------------------------------


def _rows_by_pk(pks):
    """{pk: change request} with what an inbox row shows, in one query: the related rows and the approvals
    given so far (counted in a subquery per row, not by grouping the wide joined rows)."""
    approvals = (Decision.objects.filter(change_request=OuterRef("pk"), verdict=Decision.Verdict.APPROVE,
                                         preview_number=OuterRef("current_preview"))
                 .values("change_request").annotate(n=Count("pk")).values("n"))
    # Not the summary nor the pipeline file: large, and no row shows them.
    rows = ChangeRequest.objects.filter(pk__in=pks).select_related(
        "repository", "environment", "deployment__release", "requested_by").defer(
        "summary", "author_emails", "deployment__release__pipeline_text", "deployment__release__message")
    rows = rows.with_current_preview().annotate(approvals_given=Coalesce(Subquery(approvals), 0))
    return {row.pk: row for row in rows}


def _get_change_request_or_404(pk):
    related = (
        "repository", "environment", "stage__lifecycle", "stage__approval_policy__approver_group", "requested_by",
        "deployment__release", "deployment__environment", "deployment__repository",
    )
    return get_object_or_404(ChangeRequest.objects.select_related(*related), pk=pk)


def _status_context(change_request, preview):
    decisions = list(change_request.decisions.select_related("user"))
    current = preview.number if preview is not None else 0
    approvals = [d for d in decisions if d.verdict == Decision.Verdict.APPROVE]
    return {
        "cr": change_request,
        "decisions": decisions,
        "current_preview": current,
        # Given on an earlier preview, which went stale and was run again: they no longer count.
        "voided": [d for d in approvals if d.preview_number != current],
        "approvals_given": sum(1 for d in approvals if d.preview_number == current),
        "now": timezone.now(),
    }


def _preview_context(change_request, preview, user):
    """The deployment's latest preview (None without one), its log, whether it is stale, and why `user` may
    not have its artifacts (a saved plan holds secrets in clear)."""
    return {
        "cr": change_request,
        "preview": preview,
        "preview_log": preview.log_since(0)[0] if preview is not None else "",
        "preview_stale": preview.stale_reason() if preview is not None and preview.succeeded else "",
        "preview_artifacts_refusal": artifacts_refusal(user, preview) if preview and preview.artifact_name else None,
    }


@login_required
def inbox(request):
    """Three lists: what waits on me, everything pending, the latest decided. Each list's page of ids is
    chosen by a light query (with its total), then the rows of all three are read in one."""
    show_all = request.GET.get("all") == "1"
    waiting, waiting_total = _first_ids(ChangeRequest.objects.decidable_by(request.user), show_all)
    pending, pending_total = _first_ids(ChangeRequest.objects.pending(), show_all)
    decided = list(ChangeRequest.objects.exclude(status=ChangeRequest.Status.PENDING)
                   .order_by(F("decided_at").desc(nulls_last=True), "-id").values_list("pk", flat=True)[:RECENTLY_DECIDED])
    rows = _rows_by_pk({*waiting, *pending, *decided})
    context = {
        "waiting": [rows[pk] for pk in waiting if pk in rows],
        "waiting_total": waiting_total,
        "pending": [rows[pk] for pk in pending if pk in rows],
        "pending_total": pending_total,
        "shown_all": show_all,
        "decided": [rows[pk] for pk in decided if pk in rows],
        "recently_decided": RECENTLY_DECIDED,
        "now": timezone.now(),
    }
    return render(request, "approvals/inbox.html", context)


def navigation_badge(request):
    """The Approvals link of the navigation with its count, asked for by every page once loaded and polled
    after, so that the count follows decisions made elsewhere. A visitor whose session ended gets no
    content (htmx then swaps nothing), rather than the login page inside the navigation."""
    if not request.user.is_authenticated:
        return HttpResponse(status=204)
    return render(request, "approvals/slots/navigation.html", {"with_count": True})


def _first_ids(requests, show_all):
    """(the ids of the newest INBOX_ROWS requests, or of all with show_all; how many there are) in one
    query: the total is a window count over the same rows."""
    ids = requests.annotate(total=Window(Count("pk"))).order_by("-opened_at", "-id").values_list("pk", "total")
    rows = list(ids if show_all else ids[:INBOX_ROWS])
    return [pk for pk, _ in rows], rows[0][1] if rows else 0


@login_required
def change_request_detail(request, pk):
    """The page; for htmx, only its status (polled every 3 s while pending).

    Once the request is closed the poll answers 286 to stop, and swaps the decision panel out of band so
    that buttons for a request decided elsewhere disappear."""
    change_request = _get_change_request_or_404(pk)
    preview = change_request.latest_preview()
    context = _status_context(change_request, preview)
    if request.htmx:
        if change_request.is_pending:
            return render(request, "approvals/change_request_detail.html#status", context)
        context.update(refusal=change_request.refusal_reason(request.user, preview=preview), oob=True)
        content = render_to_string("approvals/change_request_detail.html#closed_update", context, request)
        return HttpResponseStopPolling(content)
    release = change_request.deployment.release
    build = Build.objects.filter(release=release).first()
    context.update(
        refusal=change_request.refusal_reason(request.user, preview=preview),
        change=Change.from_summary(change_request.summary),
        release=release,
        deployment=change_request.deployment,
        commit_url=change_request.repository.commit_url(release.commit_sha),
        # What is approved is what was built: the build's outputs name it (an image, an AMI id, a digest).
        build=build,
        build_artifacts_refusal=artifacts_refusal(request.user, build) if build and build.artifact_name else None,
        **_preview_context(change_request, preview, request.user),
        **_drift_context(change_request.deployment),
    )
    return render(request, "approvals/change_request_detail.html", context)


def _drift_context(deployment):
    """A drift correction's change is the drift it corrects: the check that found it and its report."""
    if deployment.trigger != Deployment.Trigger.RECONCILE:
        return {}
    drift = (DriftCheck.objects.for_target(deployment.repository_id, deployment.environment_id)
             .filter(status=DriftCheck.Status.DRIFTED, release=deployment.release).order_by("-id").first())
    return {"drift": drift, "drift_report": drift.log_since(0)[0] if drift else ""}


@login_required
def change_request_preview(request, pk):
    """The preview part of the page, polled every 3 s while the request is pending; the decision panel is
    swapped out of band with it, since a preview that finishes, fails or re-runs changes who may decide."""
    change_request = _get_change_request_or_404(pk)
    preview = change_request.latest_preview()
    context = _preview_context(change_request, preview, request.user)
    context.update(refusal=change_request.refusal_reason(request.user, preview=preview), oob=True)
    return render(request, "approvals/change_request_detail.html#preview_update", context)


@login_required
def deployment_change_request(request, pk):
    """From a held deployment to the request that decides on it."""
    change_request = ChangeRequest.objects.filter(deployment_id=pk).only("pk").first()
    if change_request is None:
        deployment = get_object_or_404(Deployment, pk=pk)
        messages.info(request, f"No change request has been opened for deployment #{deployment.pk} yet.")
        return redirect(deployment)
    return redirect(change_request)


# --- deciding ----------------------------------------------------------------------------------------


@require_POST
@login_required
def change_request_approve(request, pk):
    change_request = get_object_or_404(ChangeRequest, pk=pk)
    try:
        change_request.approve(request.user, request.POST.get("comment", "").strip())
    except (DecisionRefused, DeploymentStateError) as exc:
        messages.error(request, f"{exc} Nothing was changed.")
    else:
        if change_request.status == ChangeRequest.Status.APPROVED:
            released = f"deployment #{change_request.deployment_id} is released"
            messages.success(request, f"You approved change request #{change_request.pk}; {released}.")
            warn_if_queue_was_unreachable(request)
        else:
            messages.success(request, f"You approved change request #{change_request.pk}; it needs more approvals.")
    return redirect(change_request)


@require_POST
@login_required
def change_request_reject(request, pk):
    change_request = get_object_or_404(ChangeRequest, pk=pk)
    try:
        change_request.reject(request.user, request.POST.get("comment", "").strip())
    except (DecisionRefused, DeploymentStateError) as exc:
        messages.error(request, f"{exc} Nothing was changed.")
    else:
        stopped = f"deployment #{change_request.deployment_id} will not run"
        messages.success(request, f"You rejected change request #{change_request.pk}; {stopped}.")
    return redirect(change_request)


@require_POST
@login_required
@deployer_required
def change_request_preview_again(request, pk):
    """Run a failed preview again (its failure blocks approval)."""
    change_request = get_object_or_404(ChangeRequest.objects.select_related("deployment"), pk=pk)
    try:
        preview = Preview.objects.run_again(change_request.deployment, by=request.user)
    except DeploymentStateError as exc:
        messages.error(request, f"{exc} Nothing was changed.")
    else:
        messages.success(request, f"Preview #{preview.number} is queued.")
        warn_if_queue_was_unreachable(request)
    return redirect(change_request)


# --- the release page's actions ------------------------------------------------------------------------


@dataclass
class Promotion:
    environment: Environment
    policy: "StagePolicy | None"  # the approval policy of its stage, where deployments there wait for one
    gate: str | None  # why the gate is closed, in words; None when it is open
    on_its_way: Deployment | None  # this release already waiting or running there
    current: "Release | None" = None  # what runs there now
    runs_there: bool = False  # this release is what runs there now: nothing to promote


def _get_release_or_404(pk):
    return get_object_or_404(Release.objects.select_related("repository"), pk=pk)


def _already_on_its_way(request, release, environment):
    """This release's deployment already waiting or running in `environment`, said as a message; else None.

    A second click on Promote or Roll back would otherwise supersede the first deployment with a copy."""
    deployment = Deployment.objects.filter(release=release, environment=environment).active().first()
    if deployment is not None:
        status = deployment.get_status_display().lower()
        messages.error(
            request,
            f"{release.version} is already on its way to {environment}: deployment #{deployment.pk} is {status}. "
            "Nothing was changed.",
        )
    return deployment


@login_required
@deployer_required
def release_actions(request, pk):
    """The promote and roll-back part of the release page (loaded into it by htmx, so that pipelines'
    page needs nothing from approvals): the gate's answer per approval-requiring environment, and per
    other environment where the gate is closed (pipelines' Deploy refuses there; an override goes through
    Promote here), and a rollback wherever this release succeeded before and is not what runs there now.
    The stages are those of the repository's lifecycle."""
    release = _get_release_or_404(pk)
    stages = release.stages()
    policies = {policy.stage_id: policy for policy in StagePolicy.objects.filter(stage__in=stages)}
    environments = [stage.environment for stage in stages]
    held = {stage.environment_id for stage in stages if stage.requires_approval}
    active = {d.environment_id: d for d in Deployment.objects.filter(release=release).active()}
    succeeded_there = Deployment.objects.filter(release=release, status=Deployment.Status.SUCCEEDED)
    succeeded = set(succeeded_there.values_list("environment_id", flat=True))
    targets = Target.objects.filter(repository=release.repository).select_related("current_release")
    running = {target.environment_id: target.current_release for target in targets}
    current = {environment_id: r.pk if r else None for environment_id, r in running.items()}
    gates = {env.id: gate_reason(release, env) for env in environments}
    context = {
        "release": release,
        "promotions": [
            Promotion(environment=stage.environment, policy=policies.get(stage.pk), gate=gates[stage.environment_id],
                      on_its_way=active.get(stage.environment_id), current=running.get(stage.environment_id),
                      runs_there=current.get(stage.environment_id) == release.id)
            for stage in stages if stage.requires_approval or gates[stage.environment_id]
        ],
        "rollbacks": [
            (env, env.id in held) for env in environments
            if env.id in succeeded and current.get(env.id) != release.id and env.id not in active
        ],
        "can_override_gate": request.user.has_perm("approvals.override_gate"),
    }
    return render(request, "approvals/_release_actions.html", context)


@login_required
def release_approvals(request, pk):
    """Who approved each of the release's deployments that waited for approval: one answer for the whole
    stepper of the release page (its slots "release.stage" hold the places, swapped out of band)."""
    release = _get_release_or_404(pk)
    decisions = (Decision.objects.filter(change_request__deployment__release=release, verdict=Decision.Verdict.APPROVE)
                 .select_related("user", "change_request").order_by("decided_at", "id"))
    approvers = {}
    for decision in decisions:
        approvers.setdefault(decision.change_request.deployment_id, []).append(decision)
    return render(request, "approvals/_release_approvals.html", {"approvers": approvers})


@require_POST
@login_required
@deployer_required
def release_promote(request, pk):
    """Promote through the pre-production gate; with `approvals.override_gate` and a reason, past it."""
    release = _get_release_or_404(pk)
    environment = get_object_or_404(Environment, name=request.POST.get("environment", ""))
    if (on_its_way := _already_on_its_way(request, release, environment)) is not None:
        return redirect(on_its_way)
    override_reason = request.POST.get("override_reason", "").strip()
    return redirect_after_promotion(
        request, release, environment,
        lambda: promote_through_gate(release, environment, by=request.user, override_reason=override_reason),
    )


@require_POST
@login_required
@deployer_required
def release_rollback(request, pk):
    release = _get_release_or_404(pk)
    environment = get_object_or_404(Environment, name=request.POST.get("environment", ""))
    if (on_its_way := _already_on_its_way(request, release, environment)) is not None:
        return redirect(on_its_way)
    try:
        deployment = rollback(release, environment, by=request.user, reason=request.POST.get("reason", "").strip())
    except PromotionError as exc:
        messages.error(request, str(exc))
        return redirect(release)
    status = deployment.get_status_display().lower()
    messages.success(
        request,
        f"Rolling {environment} back to {release.version}: deployment #{deployment.pk} is {status}. "
        f"Automatic deployment of {release.repository} to {environment} is paused until someone resumes it.",
    )
    return redirect(deployment)


@require_POST
@login_required
@deployer_required
def release_block(request, pk):
    release = _get_release_or_404(pk)
    reason = request.POST.get("reason", "").strip()
    if not reason:
        messages.error(request, "Give a reason for blocking the release; nothing was changed.")
    elif release.blocked:
        blocked = f"{release.version} is already blocked ({release.blocked_reason})"
        messages.error(request, f"{blocked}; nothing was changed.")
    else:
        release.block(by=request.user, reason=reason)
        messages.success(request, f"{release.version} is blocked: it will not be promoted, automatically or by hand.")
    return redirect(release)


@require_POST
@login_required
@deployer_required
def release_unblock(request, pk):
    release = _get_release_or_404(pk)
    if not release.blocked:
        messages.error(request, f"{release.version} is not blocked; nothing was changed.")
    else:
        release.unblock(by=request.user)
        messages.success(request, f"{release.version} is unblocked.")
    return redirect(release)


# --- deploying during a freeze -----------------------------------------------------------------------


def _get_deployment_or_404(pk):
    deployments = Deployment.objects.select_related("release__repository", "environment", "repository")
    return get_object_or_404(deployments, pk=pk)


@login_required
def deployment_freeze(request, pk):
    """For the deployment page (loaded by htmx): why a queued deployment waits for a freeze to end, and
    "Deploy anyway" for those allowed to. Empty when no freeze holds it."""
    deployment = _get_deployment_or_404(pk)
    if deployment.status != Deployment.Status.QUEUED:
        return HttpResponse("")
    hold = freeze.deploy_guard(deployment, timezone.now())
    if not hold:
        return HttpResponse("")
    can_override = request.user.has_perm("approvals.deploy_during_freeze")
    context = {"deployment": deployment, "hold": hold, "can_override": can_override}
    return render(request, "approvals/_freeze_hold.html", context)


@require_POST
@login_required
@freeze_overrider_required
def deployment_freeze_override(request, pk):
    deployment = _get_deployment_or_404(pk)
    reason = request.POST.get("reason", "").strip()
    if not reason:
        messages.error(request, "Give a reason for deploying during the freeze; nothing was changed.")
        return redirect(deployment)
    try:
        freeze.override_freeze(deployment, by=request.user, reason=reason)
    except (PermissionDenied, DeploymentStateError) as exc:
        messages.error(request, f"{exc} Nothing was changed.")
    else:
        messages.success(request, f"Deployment #{deployment.pk} will run despite the freeze.")
    return redirect(deployment)
