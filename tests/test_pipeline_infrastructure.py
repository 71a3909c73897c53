"""Infrastructure as code end to end: approve the plan, apply exactly that plan.

Every commit on `main` is a release. Staging applies it by itself; production holds it for two approvers and
runs its `preview:` step at once (`terraform plan -out "$GITOPS_ARTIFACTS/plan"`), whose log is on the change
request. After approval the deploy step applies that saved plan (`terraform apply "$GITOPS_ARTIFACTS/plan"`).
While a change waits, another deployment of production succeeds: the waiting change's preview runs again
against what now runs there, the approval given on the first preview no longer counts, and approving again
applies the second plan.

With Terraform's built-in `terraform_data` resource where a `terraform` binary is on the machine (no provider
to download: `terraform init` works offline), and always with a small stand-in script with the same
plan/apply shape (it refuses a saved plan made against another state, as Terraform does). Real git,
`pollrepos`, real rq workers, real steps, the change-request page through Django's test client with CSRF."""

import re
import shutil
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.models import ChangeRequest, FreezeWindow
from pipelines import reconciler
from pipelines.models import Deployment, Preview, Release, Repository
from tests.conftest import set_policy

pytestmark = pytest.mark.django_db(transaction=True)

TERRAFORM = shutil.which("terraform")

PIPELINE = """\
environments:
  staging:
    variables: {{STATE_DIR: "{state}"}}
    steps:
      - name: apply
        run: ./tf.sh apply-now
  production:
    variables: {{STATE_DIR: "{state}"}}
    preview:
      - name: plan
        run: ./tf.sh plan
    steps:
      - name: apply the approved plan
        run: ./tf.sh apply
"""

MAIN_TF = """\
terraform {
  backend "local" {}
}

variable "release" {
  type = string
}

resource "terraform_data" "app" {
  input = var.release
}

output "release" {
  value = terraform_data.app.output
}
"""

# The real thing: state per environment outside the checkout; the plan saved into $GITOPS_ARTIFACTS/.
TF_TERRAFORM = """\
#!/usr/bin/env bash
set -eo pipefail
export TF_IN_AUTOMATION=1
terraform init -input=false -no-color -backend-config="path=$STATE_DIR/$GITOPS_ENVIRONMENT.tfstate" >/dev/null
case "$1" in
  plan)
    terraform plan -input=false -no-color -var "release=$GITOPS_VERSION" -out "$GITOPS_ARTIFACTS/plan"
    echo "saved plan sha256 $(sha256sum "$GITOPS_ARTIFACTS/plan" | cut -d' ' -f1)" ;;
  apply)
    echo "applying saved plan sha256 $(sha256sum "$GITOPS_ARTIFACTS/plan" | cut -d' ' -f1)"
    terraform apply -input=false -no-color "$GITOPS_ARTIFACTS/plan" ;;
  apply-now)
    terraform apply -input=false -no-color -auto-approve -var "release=$GITOPS_VERSION" ;;
esac
"""

# The stand-in: the same shape. The plan records the state it was made against; applying it elsewhere fails.
TF_STAND_IN = """\
#!/usr/bin/env bash
set -eo pipefail
state="$STATE_DIR/$GITOPS_ENVIRONMENT.state"
current="$(cat "$state" 2>/dev/null || echo none)"
case "$1" in
  plan)
    printf 'from=%s\\nto=%s\\n' "$current" "$GITOPS_VERSION" > "$GITOPS_ARTIFACTS/plan"
    echo "Plan: release $current -> $GITOPS_VERSION"
    echo "saved plan sha256 $(sha256sum "$GITOPS_ARTIFACTS/plan" | cut -d' ' -f1)" ;;
  apply)
    echo "applying saved plan sha256 $(sha256sum "$GITOPS_ARTIFACTS/plan" | cut -d' ' -f1)"
    [ "$(sed -n 's/^from=//p' "$GITOPS_ARTIFACTS/plan")" = "$current" ] || { echo "Saved plan is stale"; exit 1; }
    sed -n 's/^to=//p' "$GITOPS_ARTIFACTS/plan" > "$state"
    echo "Apply complete! release $(cat "$state") from the saved plan" ;;
  apply-now)
    echo "$GITOPS_VERSION" > "$state"
    echo "Apply complete! release $GITOPS_VERSION" ;;
esac
"""


def applied_release(tool, state_dir, environment):
    """What the state of `environment` says is deployed."""
    if tool == "terraform":
        import json

        state = json.loads((state_dir / f"{environment}.tfstate").read_text())
        return state["outputs"]["release"]["value"]
    return (state_dir / f"{environment}.state").read_text().strip()


def plan_checksum(log):
    found = re.findall(r"saved plan sha256 ([0-9a-f]{64})", log)
    assert len(found) == 1, log
    return found[0]


class Approver:
    """Someone deciding through the change-request page, with CSRF checks on."""

    def __init__(self, user):
        self.client = Client(enforce_csrf_checks=True)
        self.client.force_login(user)

    def page(self, change):
        response = self.client.get(reverse("change_request_detail", args=[change.pk]))
        assert response.status_code == 200
        return response.content.decode()

    def approve(self, change):
        self.page(change)
        token = self.client.cookies["csrftoken"].value
        response = self.client.post(reverse("change_request_approve", args=[change.pk]),
                                    {"comment": "plan reviewed", "csrfmiddlewaretoken": token})
        assert response.status_code == 302
        return self.page(change)


@pytest.mark.parametrize("tool", [
    pytest.param("terraform", marks=pytest.mark.skipif(TERRAFORM is None, reason="no terraform binary on this machine")),
    "stand-in",
])
def test_production_applies_exactly_the_plan_approved_on_its_change_request_and_a_stale_plan_is_made_again(
    tool, origin, environments, production, bob, django_user_model, approvers, run_workers, run_follow_ups, tmp_path
):
    print(f"infrastructure tool: {tool}" + (f" ({TERRAFORM})" if tool == "terraform" else " (bash stand-in script)"))
    state_dir = tmp_path / "infrastructure-state"  # outside every checkout, as a remote state would be
    state_dir.mkdir()
    carol = django_user_model.objects.create_user("carol", "carol@example.com", "password")
    carol.groups.add(approvers)
    set_policy(production, required_approvals=2)
    repository = Repository.objects.create(name="infra", url=origin.url, release_from=Repository.ReleaseFrom.COMMITS)
    origin.write(".gitops.yml", PIPELINE.format(state=state_dir))
    origin.write("main.tf", MAIN_TF)
    origin.write("tf.sh", TF_TERRAFORM if tool == "terraform" else TF_STAND_IN, executable=True)

    def commit_and_deliver(message):
        sha = origin.commit(message)
        call_command("pollrepos", "--repository", "infra")
        settle()
        return Release.objects.get(repository=repository, commit_sha=sha)

    def settle():
        run_workers()
        run_follow_ups()
        run_workers()

    def held_change(release):
        deployment = Deployment.objects.get(release=release, environment=production)
        assert deployment.status == "awaiting_approval", deployment.error
        return ChangeRequest.objects.get(deployment=deployment)

    # --- 1. main → staging applied by itself; production's plan on the change request, approved, applied ---
    first = commit_and_deliver("the app's infrastructure")
    staged = Deployment.objects.get(release=first, environment__name="staging")
    assert staged.status == "succeeded", staged.log_since(0)[0]
    assert applied_release(tool, state_dir, "staging") == first.version
    change = held_change(first)
    preview = Preview.objects.get(deployment=change.deployment)
    preview_log = preview.log_since(0)[0]
    assert preview.status == "succeeded" and preview.number == 1, preview_log
    planned = plan_checksum(preview_log)
    assert preview.artifact_sha256 and not (state_dir / "production.tfstate").exists()

    html = Approver(bob).page(change)
    assert "Preview #1" in html and f"saved plan sha256 {planned}" in html
    assert "Plan: 1 to add" in html if tool == "terraform" else f"Plan: release none -&gt; {first.version}" in html
    assert reverse("preview_artifacts", args=[preview.pk]) in html

    assert "<strong>1</strong> of 2 approvals" in Approver(bob).approve(change)
    Approver(carol).approve(change)
    settle()
    applied = Deployment.objects.get(pk=change.deployment_id)
    apply_log = applied.log_since(0)[0]
    assert applied.status == "succeeded", apply_log
    assert f"applying saved plan sha256 {planned}" in apply_log, "the apply used the plan that was approved"
    assert "Apply complete!" in apply_log
    assert applied_release(tool, state_dir, "production") == first.version

    # --- 2. a stale preview is made again, and the approval given on it no longer counts ---------------
    # Production is frozen, so an approved change waits in the queue (previews still run: they change nothing).
    freeze = FreezeWindow.objects.create(name="hold production", reason="test: keep an approved change waiting",
                                         starts_at=timezone.now() - timedelta(minutes=1),
                                         ends_at=timezone.now() + timedelta(hours=1))
    freeze.environments.add(production)
    second = commit_and_deliver("second")
    second_change = held_change(second)
    Approver(bob).approve(second_change)
    Approver(carol).approve(second_change)
    settle()
    assert Deployment.objects.get(pk=second_change.deployment_id).status == "queued", "held by the freeze"

    third = commit_and_deliver("third")
    third_change = held_change(third)
    first_preview = Preview.objects.get(deployment=third_change.deployment, number=1)
    assert first_preview.status == "succeeded" and first_preview.base_release_id == first.pk
    stale_plan = plan_checksum(first_preview.log_since(0)[0])
    Approver(bob).approve(third_change)  # one of two, on preview #1

    # The freeze ends; the second change applies, and what preview #1 of the third showed is out of date.
    FreezeWindow.objects.filter(pk=freeze.pk).update(ends_at=timezone.now() - timedelta(seconds=1))
    reconciler.reconcile()
    settle()
    second_applied = Deployment.objects.get(pk=second_change.deployment_id)
    assert second_applied.status == "succeeded", second_applied.log_since(0)[0]
    assert applied_release(tool, state_dir, "production") == second.version

    rerun = Preview.objects.get(deployment=third_change.deployment, number=2)
    rerun_log = rerun.log_since(0)[0]
    assert rerun.status == "succeeded", rerun_log
    assert rerun.base_deployment_id == second_applied.pk and rerun.base_release_id == second.pk
    assert f"{second.version} (deployment #{second_applied.pk}) succeeded on production" in rerun.reason
    fresh_plan = plan_checksum(rerun_log)
    assert fresh_plan != stale_plan

    html = Approver(carol).page(third_change)
    assert "Preview #2" in html and f"saved plan sha256 {fresh_plan}" in html
    assert "<strong>0</strong> of 2 approvals" in html
    assert "1 approval given on an earlier preview no longer counts" in html
    html = Approver(bob).approve(third_change)  # the same person approves again, on preview #2
    assert "<strong>1</strong> of 2 approvals" in html
    Approver(carol).approve(third_change)
    settle()
    third_applied = Deployment.objects.get(pk=third_change.deployment_id)
    apply_log = third_applied.log_since(0)[0]
    assert third_applied.status == "succeeded", apply_log
    assert f"applying saved plan sha256 {fresh_plan}" in apply_log and stale_plan not in apply_log
    assert applied_release(tool, state_dir, "production") == third.version
