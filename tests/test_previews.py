"""Previews: the `preview:` steps of a stage that holds its deployments run as soon as one is held, against
that environment with its secrets; what they show decides whether and what may be approved and applied.

Real git repositories, real steps in the runner's sandbox, the real job functions (called in this process,
in the order the test needs), the change-request page through Django's test client with CSRF."""

import hashlib

import pytest
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from approvals.models import DecisionRefused
from approvals.opening import open_change_request
from pipelines import jobs, promotion, reconciler
from pipelines.models import Deployment, Preview
from pipelines.pipeline_file import PipelineFileError, parse_pipeline
from pipelines.runs import kernel
from tests.conftest import set_policy

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "cloud-token-7f3a9c21"


def pipeline(preview, steps='echo "applying $(cat "$GITOPS_ARTIFACTS/plan.txt")"'):
    indent = lambda text: "".join(f"          {line}\n" for line in text.splitlines())  # noqa: E731
    return ("environments:\n  staging:\n    steps:\n      - run: echo staged\n"
            "  production:\n    variables: {REGION: eu-west-1}\n"
            f"    preview:\n      - name: plan\n        run: |\n{indent(preview)}"
            f"    steps:\n      - name: apply\n        run: |\n{indent(steps)}")


PLAN = 'echo "Plan: 1 to add, 0 to change, 0 to destroy." | tee "$GITOPS_ARTIFACTS/plan.txt"'


@pytest.fixture
def held(repository, production, origin, make_release, alice):
    """A production deployment of a new release whose file has `preview` steps, held for approval (its
    preview queued in the same transaction), with its change request."""
    counter = iter(range(1, 100))

    def make(preview=PLAN, steps='echo "applying $(cat "$GITOPS_ARTIFACTS/plan.txt")"'):
        text = pipeline(preview, steps)
        origin.write(".gitops.yml", text)
        version = f"v1.{next(counter)}.0"
        release = make_release(repository, version, pipeline=text, commit_sha=origin.commit(version))
        deployment = promotion.promote(release, production, by=alice)
        return open_change_request(deployment)

    return make


def run_latest_preview(change):
    preview = Preview.objects.latest_for(change.deployment)
    kernel.run("preview", preview.pk)
    preview.refresh_from_db()
    return preview


def page(user, change):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.get(reverse("change_request_detail", args=[change.pk]))
    assert response.status_code == 200
    return client, response.content.decode()


def approve_on_the_page(user, change):
    client, _ = page(user, change)
    client.post(reverse("change_request_approve", args=[change.pk]),
                {"comment": "ok", "csrfmiddlewaretoken": client.cookies["csrftoken"].value})
    return page(user, change)[1]


# --- the pipeline file ------------------------------------------------------------------------------------


def test_preview_steps_are_parsed_per_environment_with_the_same_rules_as_steps():
    spec = parse_pipeline(pipeline("terraform plan -out plan"))
    assert [step.run for step in spec.environments["production"].preview] == ["terraform plan -out plan"]
    assert spec.environments["staging"].preview == ()
    with pytest.raises(PipelineFileError, match=r"line 5: 'preview' of environment 'production' must be a non-empty list"):
        parse_pipeline("environments:\n  production:\n    steps:\n      - run: x\n    preview: []\n")
    with pytest.raises(PipelineFileError, match=r"line 4: step 1 of 'production preview' has no 'run' command"):
        parse_pipeline("environments:\n  production:\n    preview:\n      - name: plan\n    steps:\n      - run: x\n")
    with pytest.raises(PipelineFileError, match=r"unknown key 'preview' in the 'build' section"):
        parse_pipeline("build:\n  steps: [{run: x}]\n  preview: [{run: y}]\nenvironments:\n  staging:\n    steps: [{run: x}]\n")


def test_a_stage_that_deploys_without_approval_runs_no_preview(repository, staging, origin, make_release):
    text = "environments:\n  staging:\n    preview:\n      - run: echo previewing\n    steps:\n      - run: echo staged\n"
    origin.write(".gitops.yml", text)
    release = make_release(repository, "v1.0.0", pipeline=text, commit_sha=origin.commit("v1"))
    deployment = promotion.promote(release, staging, by=None)
    assert deployment.status == "queued" and not Preview.objects.exists()


# --- running it -----------------------------------------------------------------------------------------


def test_the_preview_is_queued_with_the_hold_and_its_plan_is_shown_on_the_change_request(held, bob):
    change = held()
    preview = Preview.objects.get(deployment=change.deployment)
    assert (preview.number, preview.status) == (1, "queued")
    _, html = page(bob, change)
    assert "Preview #1" in html and "Approval waits until the preview has finished" in html
    assert change.refusal_reason(bob) == "Preview #1 is queued: it has not finished; approve what it shows once it has."

    preview = run_latest_preview(change)

    assert preview.status == "succeeded", preview.log_since(0)[0]
    _, html = page(bob, change)
    assert "Plan: 1 to add, 0 to change, 0 to destroy." in html
    assert reverse("preview_artifacts", args=[preview.pk]) in html
    assert change.refusal_reason(bob) is None


def test_the_preview_poll_answers_the_preview_and_the_decision_panel_and_the_artifacts_download(held, bob):
    change = held()
    client, _ = page(bob, change)
    poll = client.get(reverse("change_request_preview", args=[change.pk]), headers={"HX-Request": "true"})
    assert 'id="preview"' in poll.content.decode() and "has not finished" in poll.content.decode()
    assert 'id="decide" class="card" hx-swap-oob="true"' in poll.content.decode()

    preview = run_latest_preview(change)

    poll = client.get(reverse("change_request_preview", args=[change.pk]), headers={"HX-Request": "true"}).content.decode()
    assert "Plan: 1 to add" in poll and 'action="/approvals/' in poll, "the Approve form appears once it has finished"
    download = client.get(reverse("preview_artifacts", args=[preview.pk]))
    assert download.status_code == 200 and download["X-Artifact-SHA256"] == preview.artifact_sha256
    assert hashlib.sha256(b"".join(download.streaming_content)).hexdigest() == preview.artifact_sha256


def test_a_failed_preview_blocks_approval_with_its_reason(held, bob):
    change = held(preview='echo "Error: no credentials for eu-west-1"; exit 3')
    preview = run_latest_preview(change)
    assert preview.status == "failed"
    assert preview.error == "Preview step 'plan' exited with status 3."

    reason = "Preview #1 failed: Preview step 'plan' exited with status 3. Approval waits for a preview that succeeds."
    assert change.refusal_reason(bob) == reason
    with pytest.raises(DecisionRefused, match="Preview #1 failed"):
        change.approve(bob)
    html = approve_on_the_page(bob, change)
    assert "The preview failed, so this change cannot be approved." in html
    assert "Error: no credentials for eu-west-1" in html
    assert escape(reason) in html
    change.refresh_from_db()
    assert change.status == "pending" and not change.decisions.exists()
    assert Deployment.objects.get(pk=change.deployment_id).status == "awaiting_approval"


def test_the_preview_gets_the_environments_secret_and_its_log_masks_it(held, production, make_secret):
    make_secret(production, "CLOUD_TOKEN", SECRET)
    change = held(preview='printf %s "$CLOUD_TOKEN" | sha256sum\necho "token=$CLOUD_TOKEN region=$REGION '
                          'preview=$GITOPS_PREVIEW/$GITOPS_PREVIEW_NUMBER env=$GITOPS_ENVIRONMENT"')
    preview = run_latest_preview(change)
    log = preview.log_since(0)[0]
    assert preview.status == "succeeded", log
    assert hashlib.sha256(SECRET.encode()).hexdigest() in log, "the step had the real value"
    assert "token=*** region=eu-west-1 preview=1/1 env=production" in log
    assert SECRET not in log


# --- staleness ------------------------------------------------------------------------------------------


def test_approvals_given_before_a_rerun_do_not_count(held, bob, django_user_model, approvers, production):
    carol = django_user_model.objects.create_user("carol", "carol@example.com", "password")
    carol.groups.add(approvers)
    first = held()
    run_latest_preview(first)
    first.approve(bob)  # one approval is enough for the first change: it goes through
    assert Deployment.objects.get(pk=first.deployment_id).status == "queued"

    set_policy(production, required_approvals=2)
    waiting = held()  # held while the first one is queued: not superseded
    run_latest_preview(waiting)
    waiting.approve(bob)  # one of two, on preview #1

    kernel.run("deployment", first.deployment_id)  # something else changes the production target
    assert Deployment.objects.get(pk=first.deployment_id).status == "succeeded"

    previews = list(Preview.objects.filter(deployment=waiting.deployment).order_by("number"))
    assert [(p.number, p.status) for p in previews] == [(1, "succeeded"), (2, "queued")]
    assert previews[1].reason.startswith(f"v1.1.0 (deployment #{first.deployment_id}) succeeded on production")
    waiting.refresh_from_db()
    with pytest.raises(DecisionRefused, match="Preview #2 is queued"):
        waiting.approve(carol)
    run_latest_preview(waiting)

    html = page(carol, waiting)[1]
    assert "<strong>0</strong> of 2 approvals" in html
    assert "1 approval given on an earlier preview no longer counts" in html
    waiting.approve(carol)
    waiting.refresh_from_db()
    assert waiting.status == "pending", "bob's approval was given on preview #1"
    waiting.approve(bob)  # bob may approve again, on what preview #2 shows
    waiting.refresh_from_db()
    assert waiting.status == "approved"
    assert sorted(waiting.decisions.values_list("user__username", "preview_number")) == [
        ("bob", 1), ("bob", 2), ("carol", 2)]


def test_the_runner_refuses_an_apply_whose_preview_is_stale(held, bob, production, repository, make_release):
    """Defence in depth: a newer approval supersedes an approved deployment that still waits, so through the
    portal's own paths nothing runs on the target between the approval and the apply. Whatever else put a run
    there (here: a deployment made outside promotion) still keeps the old plan from being applied."""
    approved = held(steps="echo APPLIED-THE-OLD-PLAN")
    run_latest_preview(approved)
    approved.approve(bob)
    other = Deployment.objects.create(release=make_release(repository, "v1.2.0"), environment=production,
                                      repository=repository, status="queued", trigger="manual")
    other.claim(worker_name="elsewhere")
    other.record_step(4242)
    other.succeed()

    kernel.run("deployment", approved.deployment_id)

    deployment = Deployment.objects.get(pk=approved.deployment_id)
    log = deployment.log_since(0)[0]
    assert deployment.status == "failed"
    assert deployment.error == (f"Not applied: Preview #1 is stale: v1.2.0 (deployment #{other.pk}) "
                                f"ran a step and succeeded on production after it started; a new preview has to show "
                                f"the change again.")
    assert "APPLIED-THE-OLD-PLAN" not in log and deployment.error in log


def test_the_deploy_steps_get_the_artifacts_of_the_approved_preview(held, bob):
    change = held(preview='echo "plan made by preview $GITOPS_PREVIEW_NUMBER" > "$GITOPS_ARTIFACTS/plan.txt"',
                  steps='echo "applying: $(cat "$GITOPS_ARTIFACTS/plan.txt")"; test -z "$GITOPS_PREVIEW"')
    run_latest_preview(change)
    change.approve(bob)
    kernel.run("deployment", change.deployment_id)
    deployment = Deployment.objects.get(pk=change.deployment_id)
    assert deployment.status == "succeeded", deployment.log_since(0)[0]
    preview = Preview.objects.get(deployment=deployment)
    assert f"==> $GITOPS_ARTIFACTS/ holds what preview #1 left (sha256 {preview.artifact_sha256}), as approved" in \
        deployment.log_since(0)[0]
    assert "applying: plan made by preview 1" in deployment.log_since(0)[0]


def test_a_preview_of_a_deployment_no_longer_held_is_cancelled_not_run(held, alice):
    change = held(preview="echo SHOULD-NOT-RUN")
    Deployment.objects.get(pk=change.deployment_id).cancel(by=alice, reason="not now")
    preview = run_latest_preview(change)
    assert preview.status == "cancelled"
    assert preview.error == "The deployment is no longer waiting for approval (it is cancelled)."
    assert not preview.log_chunks.exists()


def test_the_reconciler_wakes_a_queued_preview_whose_job_was_lost(held, run_workers):
    import django_rq

    change = held()
    django_rq.get_connection("deploy").flushdb()  # Redis lost the job
    assert reconciler.reconcile()["previews_requeued"] == 1
    run_workers()
    assert Preview.objects.get(deployment=change.deployment).status == "succeeded"


def test_the_reconciler_fails_a_preview_whose_runner_stopped_beating_and_approval_then_says_why(held, bob):
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    change = held()
    preview = Preview.objects.latest_for(change.deployment)
    preview.claim(worker_name="host-9:4242", runner_host="another-host", runner_pid=4242)

    assert reconciler.reconcile()["previews_lost"] == 0, "a fresh heartbeat is left alone"
    later = timezone.now() + timedelta(seconds=settings.GITOPS_WORKER_LOST_AFTER + 1)
    assert reconciler.reconcile(now=later)["previews_lost"] == 1

    preview.refresh_from_db()
    assert preview.status == "failed" and preview.error.startswith("Worker lost: no heartbeat from host-9:4242 since ")
    assert change.refusal_reason(bob).startswith("Preview #1 failed: Worker lost")


def test_a_deployer_runs_a_failed_preview_again_from_the_change_request(held, bob, charlie, tmp_path):
    cloud = tmp_path / "cloud-api-up"
    change = held(preview=f'test -f {cloud} || {{ echo "Error: the cloud API did not answer"; exit 3; }}\n{PLAN}')
    assert run_latest_preview(change).status == "failed"
    outsider, _ = page(charlie, change)
    assert outsider.post(reverse("change_request_preview_again", args=[change.pk]),
                         {"csrfmiddlewaretoken": outsider.cookies["csrftoken"].value}).status_code == 403

    client, html = page(bob, change)
    assert "Run the preview again" in html
    cloud.touch()  # the cloud API answers again
    client.post(reverse("change_request_preview_again", args=[change.pk]),
                {"csrfmiddlewaretoken": client.cookies["csrftoken"].value})

    rerun = run_latest_preview(change)
    assert (rerun.number, rerun.status) == (2, "succeeded"), rerun.log_since(0)[0]
    assert rerun.reason == "bob ran it again after preview #1 failed."
    assert change.refusal_reason(bob) is None
    again = client.post(reverse("change_request_preview_again", args=[change.pk]),
                        {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}, follow=True)
    assert "only a failed or cancelled preview is run again. Nothing was changed." in again.content.decode()
    assert Preview.objects.filter(deployment=change.deployment).count() == 2


def test_a_deployer_runs_a_cancelled_preview_again_and_approval_waits_for_it(held, bob):
    change = held(preview=PLAN)
    Preview.objects.latest_for(change.deployment).cancel(by=bob, reason="wrong workspace")
    assert change.refusal_reason(bob) is not None, "a cancelled preview is no preview to approve"

    client, html = page(bob, change)
    assert "The preview was cancelled" in html and "Run the preview again" in html
    client.post(reverse("change_request_preview_again", args=[change.pk]),
                {"csrfmiddlewaretoken": client.cookies["csrftoken"].value})

    rerun = run_latest_preview(change)
    assert (rerun.number, rerun.status) == (2, "succeeded"), rerun.log_since(0)[0]
    assert rerun.reason == "bob ran it again after preview #1 cancelled."
    assert change.refusal_reason(bob) is None


def test_the_admin_lists_previews_read_only(held, client, alice):
    change = held()
    preview = run_latest_preview(change)
    client.force_login(alice)
    listing = client.get(reverse("admin:pipelines_preview_changelist"))
    assert listing.status_code == 200 and str(change.deployment) in listing.content.decode()
    detail = client.get(reverse("admin:pipelines_preview_change", args=[preview.pk])).content.decode()
    assert f"Open deployment #{change.deployment_id} in the portal" in detail
    assert client.get(reverse("admin:pipelines_preview_add")).status_code == 403
