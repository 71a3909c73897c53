"""Downloading what a build, a preview or a check left (pipelines/artifacts.py keeps it as one tar.gz each).

Artifacts follow their secrets: a preview's saved plan holds sensitive values in clear, so only the people
`permissions.artifacts_refusal` lets through get them; anyone else is told why (403), as elsewhere. An archive
that this web server cannot open (missing here, or unreadable: sealed workers keep theirs under their own
account) is said in words, with what to fix, rather than a server error."""

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse
from django.shortcuts import get_object_or_404, render

from pipelines import artifacts
from pipelines.models import Build, Check, Preview
from pipelines.permissions import artifacts_refusal


@login_required
def release_artifacts(request, pk):
    """The build's artifacts as stored (tar.gz), streamed from the artifact storage."""
    build = get_object_or_404(Build.objects.select_related("release__repository"), release_id=pk,
                              status=Build.Status.SUCCEEDED)
    release = build.release
    return _download(request, build, f"the build of {release.version}",
                     f"{release.repository.name}-{release.version}-artifacts.tar.gz")


@login_required
def preview_artifacts(request, pk):
    """A preview's artifacts as stored (the saved plan, say), streamed from the artifact storage."""
    preview = get_object_or_404(Preview.objects.select_related("deployment__release__repository", "deployment__environment",
                                                               "deployment__repository"),
                                pk=pk, status=Preview.Status.SUCCEEDED)
    deployment = preview.deployment
    return _download(request, preview, f"preview #{preview.number}",
                     f"{deployment.repository.name}-{deployment.release.version}-"
                     f"{deployment.environment.name}-preview-{preview.number}.tar.gz")


@login_required
def check_artifacts(request, pk):
    """A check's artifacts as stored (what its steps left in $GITOPS_ARTIFACTS/), from the artifact storage."""
    check = get_object_or_404(Check.objects.select_related("repository"), pk=pk, status=Check.Status.SUCCEEDED)
    return _download(request, check, f"check #{check.pk}",
                     f"{check.repository.name}-check-{check.pk}-{check.commit_sha[:10]}.tar.gz")


def _download(request, run, what, filename):
    if reason := artifacts_refusal(request.user, run):
        raise PermissionDenied(reason)
    name = run.artifact_name
    if not name:
        return _unavailable(request, 404, f"{what[:1].upper()}{what[1:]} left no artifacts.")
    try:
        stored = artifacts.artifact_storage().open(name, "rb")
    except FileNotFoundError:
        # The row says it was stored: by a worker whose storage this web server does not share, or removed.
        return _unavailable(request, 410, (
            f"The artifacts of {what} ({name}) are not in the artifact storage this web server reads. Workers on "
            f"other machines must share it with the web: GITOPS_ARTIFACT_DIR on a shared folder, or "
            f"STORAGES[\"gitops_artifacts\"] on S3 or the like."))
    except OSError as exc:
        # Sealed workers run as root and keep archives (0600 in a 0700 folder) that the web's account cannot read.
        return _unavailable(request, 404, (
            f"The artifacts of {what} are stored, but this web server cannot read them ({name}: {exc.strerror}). "
            f"With sealed workers, run the web under the workers' account or give both a storage they can read "
            f"(see the README, Sealed workers)."))
    response = FileResponse(stored, as_attachment=True, filename=filename.replace("/", "-"), content_type="application/gzip")
    response["X-Artifact-SHA256"] = run.artifact_sha256
    return response


def _unavailable(request, status, message):
    return render(request, "pipelines/artifacts_unavailable.html", {"message": message}, status=status)
