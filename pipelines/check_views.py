"""Where people look for checks: the Branches section of the repository page, the checks of a release's
commit on its page, and one check with its log. Plain functions; the pages in pipelines/views.py call the
`*_context` helpers so that views.py stays about deployments."""

from dataclasses import dataclass

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from pipelines.models import Check, CheckRef, ExternalCheck, InvalidTransition, Stage, StaleStatus
from pipelines.models.check import CheckStatus
from pipelines.permissions import can_deploy, deployer_required
from pipelines.promotion import checks_refusal

BRANCHES_ON_REPOSITORY_PAGE = 50


@dataclass
class BranchRow:
    ref: CheckRef
    check: Check | None  # of its head commit; None when none ran (no `checks:` section)
    external_checks: list  # reported through the API for its head commit, by name and reporter


def branches_context(repository):
    """Open pull requests first, then branches, then closed ones; each with the check of its head and the
    external checks reported for that commit. Three queries."""
    refs = list(CheckRef.objects.for_page(repository)[:BRANCHES_ON_REPOSITORY_PAGE])
    heads = {ref.head_sha for ref in refs}
    checks, of_commit, external = {}, {}, {}
    for check in Check.objects.filter(repository=repository, commit_sha__in=heads).order_by("id"):
        checks[(check.ref_name, check.commit_sha)] = check  # the last one of each pair wins
        if check.status != CheckStatus.CANCELLED:
            of_commit[check.commit_sha] = check  # a commit is checked once, for every ref it heads
    reported_for_heads = (ExternalCheck.objects.filter(repository=repository, commit_sha__in=heads)
                          .select_related("reported_by").order_by("name", "reported_by__username"))
    for reported in reported_for_heads:
        external.setdefault(reported.commit_sha, []).append(reported)
    return {"branch_rows": [BranchRow(ref=ref, check=of_commit.get(ref.head_sha) or checks.get((ref.name, ref.head_sha)),
                                      external_checks=external.get(ref.head_sha, [])) for ref in refs]}


def release_checks_context(release):
    """The checks of the release's commit, on whatever branch or pull request they ran (a check result carries
    over to the release of the same commit), and why a stage that requires passing checks refuses it."""
    checks = list(Check.objects.for_commit(release.repository_id, release.commit_sha))
    external_checks = list(ExternalCheck.objects.for_commit(release.repository_id, release.commit_sha))
    refusals = [(stage, checks_refusal(release, stage)) for stage in Stage.objects.of(release.repository)
                if stage.requires_passing_checks]
    return {"checks": checks, "external_checks": external_checks,
            "check_refusals": [(stage, reason) for stage, reason in refusals if reason]}


@login_required
def check_detail(request, pk):
    check = get_object_or_404(Check.objects.select_related("repository"), pk=pk)
    ref = CheckRef.objects.filter(repository=check.repository_id, name=check.ref_name).first()
    releases = list(check.repository.releases.filter(commit_sha=check.commit_sha))
    context = {
        "check": check,
        "repository": check.repository,
        "ref": ref,
        "releases": releases,
        "log": check.log_since(0)[0],
        "commit_url": check.repository.commit_url(check.commit_sha),
        "polling": check.status in (CheckStatus.QUEUED, CheckStatus.RUNNING),
        "can_deploy": can_deploy(request.user),
    }
    return render(request, "pipelines/check_detail.html", context)


@require_POST
@login_required
@deployer_required
def check_run(request, pk):
    """"Run checks" of a fork's pull request that waits for a deployer: it runs, sealed and without secrets."""
    from pipelines.views import warn_if_queue_was_unreachable  # views imports this module

    check = get_object_or_404(Check.objects.select_related("repository"), pk=pk)
    try:
        check.allow_to_run(by=request.user)
    except (StaleStatus, InvalidTransition):
        check.refresh_from_db(fields=["status"])
        messages.error(request, f"Check #{check.pk} is {check.get_status_display().lower()}, not waiting for a deployer; "
                                f"nothing was started.")
    else:
        messages.success(request, f"Check #{check.pk} is queued: it runs sealed, without the repository's check secrets.")
        warn_if_queue_was_unreachable(request)
    return redirect(check)
