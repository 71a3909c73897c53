"""Drift with real Terraform (issue 20): `terraform_data` only, so it works offline. A release applies its
configuration; someone changes the state behind the portal's back; the stage's drift interval has the next tick
find it drifted (`terraform plan -detailed-exitcode` exits 2, its plan is the report); in staging, which corrects
drift, the release is applied again and the target is back in sync; in production, which holds for approval, the
correction waits for an approver and restores it once approved."""

import json
import shutil
import subprocess
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from approvals.models import ChangeRequest
from pipelines import promotion, reconciler
from pipelines.models import DriftCheck
from tests.conftest import burst_portal_worker, set_stage

pytestmark = [pytest.mark.django_db(transaction=True),
              pytest.mark.skipif(shutil.which("terraform") is None, reason="no terraform binary on this machine")]

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
"""

TF = """\
#!/usr/bin/env bash
set -eo pipefail
export TF_IN_AUTOMATION=1
terraform init -input=false -no-color -backend-config="path=$STATE_DIR/$GITOPS_ENVIRONMENT.tfstate" >/dev/null
case "$1" in
  apply) terraform apply -input=false -no-color -auto-approve -var "release=$GITOPS_VERSION" ;;
  drift) terraform plan -detailed-exitcode -input=false -no-color -var "release=$GITOPS_VERSION" ;;
esac
"""

PIPELINE = """\
environments:
{environments}"""
ENVIRONMENT = """\
  {name}:
    variables: {{STATE_DIR: "{state}"}}
    steps:
      - name: apply
        run: ./tf.sh apply
    drift:
      - name: plan
        run: ./tf.sh drift
"""


@pytest.fixture
def state(tmp_path):
    directory = tmp_path / "state"  # outside the checkout, as a remote state would be
    directory.mkdir()
    return directory


@pytest.fixture
def infrastructure(repository, origin, make_release, state):
    """A release of the infrastructure repository for `environments`."""

    def release(version, *environments):
        text = PIPELINE.format(environments="".join(ENVIRONMENT.format(name=name, state=state) for name in environments))
        origin.write(".gitops.yml", text)
        origin.write("main.tf", MAIN_TF)
        origin.write("tf.sh", TF, executable=True)
        return make_release(repository, version, pipeline=text, commit_sha=origin.commit(version))

    return release


def applied(state, environment):
    """What the state says the resource holds."""
    document = json.loads((state / f"{environment}.tfstate").read_text())
    return document["resources"][0]["instances"][0]["attributes"]["input"]["value"]


def change_behind_the_portals_back(state, environment, tmp_path, value):
    """Someone applies by hand, against the same state."""
    elsewhere = tmp_path / f"by-hand-{environment}"
    elsewhere.mkdir()
    (elsewhere / "main.tf").write_text(MAIN_TF)
    run = {"cwd": elsewhere, "check": True, "capture_output": True}
    subprocess.run(["terraform", "init", "-input=false", f"-backend-config=path={state}/{environment}.tfstate"], **run)
    subprocess.run(["terraform", "apply", "-input=false", "-auto-approve", "-var", f"release={value}"], **run)


def drain():
    burst_portal_worker(("git", "deploy", "drift"))


def test_drift_in_staging_is_found_within_one_interval_and_corrected(
        repository, staging, production, infrastructure, state, tmp_path, alice):
    set_stage(staging, drift_interval=timedelta(minutes=5), correct_drift=True)
    set_stage(production, auto_deploy=False)
    promotion.promote(infrastructure("v1", "staging"), staging, by=alice)
    drain()
    assert applied(state, "staging") == "v1"
    assert DriftCheck.objects.get().status == "in_sync"

    change_behind_the_portals_back(state, "staging", tmp_path, "changed-by-hand")
    assert reconciler.reconcile(now=timezone.now() + timedelta(minutes=6))["drift_checks_queued"] == 1
    drain()
    drain()

    drifted = DriftCheck.objects.get(status="drifted")
    report = drifted.log_since(0)[0]
    assert "terraform_data.app will be updated in-place" in report and '"changed-by-hand" -> "v1"' in report
    correction = repository.deployments.get(trigger="reconcile")
    assert correction.status == "succeeded"
    assert applied(state, "staging") == "v1", "the correction applied what git says again"
    assert DriftCheck.objects.order_by("id").last().status == "in_sync"


def test_drift_in_production_opens_a_change_request_showing_the_drift_and_approving_it_restores_the_state(
        repository, production, infrastructure, state, tmp_path, alice, bob, client):
    set_stage(production, correct_drift=True)
    held = promotion.promote(infrastructure("v1", "production"), production, by=alice)
    drain()
    ChangeRequest.objects.get(deployment=held).approve(bob)
    drain()
    assert applied(state, "production") == "v1"

    change_behind_the_portals_back(state, "production", tmp_path, "changed-by-hand")
    call_command("checkdrift", "--now", "--environment", "production")
    drain()
    drain()

    correction = repository.deployments.get(trigger="reconcile")
    assert correction.status == "awaiting_approval"
    assert applied(state, "production") == "changed-by-hand", "nothing is applied before the approval"
    change_request = ChangeRequest.objects.get(deployment=correction)
    client.force_login(bob)
    page = client.get(change_request.get_absolute_url()).content.decode()
    assert "the drift it corrects" in page and "terraform_data.app will be updated in-place" in page, "it shows the drift"
    change_request.approve(bob)
    drain()
    drain()
    assert applied(state, "production") == "v1"
    assert DriftCheck.objects.order_by("id").last().status == "in_sync"
