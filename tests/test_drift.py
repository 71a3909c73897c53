"""Drift (issue 20): an environment's `drift:` steps check the release running there against reality, in a checkout
of it: exit 0 in sync, 2 drifted, anything else the check failed. A kind of run of the kernel (pipelines/runs/drift.py):
queued after each deployment there, every `drift_interval` of the stage (the reconciler), and on demand
(`manage.py checkdrift`). Reality here is a file a deploy step writes and a person may change behind the portal's
back. Real git, the real PortalWorker, PostgreSQL."""

from datetime import timedelta

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django.utils import timezone

from pipelines import promotion, reconciler
from pipelines.models import AuditEvent, DriftCheck
from tests.conftest import burst_portal_worker, set_stage

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def reality(tmp_path):
    return tmp_path / "what-runs-in-staging"


@pytest.fixture
def release_with_drift(repository, origin, make_release, reality):
    """release_with_drift(version, drift=…): a release whose staging deploy writes its version into `reality`, and
    whose drift step compares the two (exit 2 when they differ)."""

    def make(version, drift=None):
        drift = drift or f'test "$(cat {reality})" = "$GITOPS_VERSION" || {{ echo "found $(cat {reality})"; exit 2; }}'
        text = (f"environments:\n  staging:\n    steps:\n      - run: echo $GITOPS_VERSION > {reality}\n"
                f"    drift:\n      - name: compare\n        run: '{drift}'\n")
        origin.write(".gitops.yml", text)
        return make_release(repository, version, pipeline=text, commit_sha=origin.commit(version))

    return make


def drain():
    burst_portal_worker(("git", "deploy", "drift"))


def checks_of(repository, environment):
    return list(DriftCheck.objects.for_target(repository, environment).order_by("id"))


@pytest.fixture
def deployed(repository, staging, release_with_drift, alice):
    promotion.promote(release_with_drift("v1"), staging, by=alice)
    drain()
    return repository, staging


def test_a_deployment_is_followed_by_a_drift_check_that_finds_the_target_in_sync(deployed):
    repository, staging = deployed
    (check,) = checks_of(repository, staging)
    assert (check.release.version, check.status) == ("v1", "in_sync")
    assert check.reason.startswith("after deployment #")
    assert [e.action for e in AuditEvent.objects.filter(object_type="pipelines.driftcheck").order_by("id")] == [
        "driftcheck.queued", "driftcheck.running", "driftcheck.in_sync"]


def test_a_change_behind_the_portals_back_is_found_drifted_with_the_checks_log_as_the_report(deployed, reality):
    repository, staging = deployed
    reality.write_text("v0-by-hand\n")

    call_command("checkdrift", "--now", "--repository", repository.name)
    drain()

    drifted = checks_of(repository, staging)[-1]
    assert (drifted.status, drifted.exit_code) == ("drifted", 2)
    report = drifted.log_since(0)[0]
    assert "found v0-by-hand" in report and "drifted: staging is not what v1 says" in report
    (told,) = [m for m in mail.outbox if "Drifted" in m.subject]
    assert told.subject == "[GitOps Portal] Drifted: shop in staging" and "found v0-by-hand" in told.body


def test_a_drift_step_that_fails_otherwise_is_a_failed_check_not_drift(repository, staging, release_with_drift, alice):
    promotion.promote(release_with_drift("v1", drift="echo the cloud API did not answer; exit 1"), staging, by=alice)
    drain()
    (check,) = checks_of(repository, staging)
    assert (check.status, check.error) == ("failed", "Drift step 'compare' exited with status 1.")
    assert check.get_status_display() == "Check failed"


def test_the_stages_drift_interval_queues_a_check_when_it_is_due_and_not_before(deployed):
    repository, staging = deployed
    set_stage(staging, drift_interval=timedelta(minutes=5))
    assert reconciler.reconcile()["drift_checks_queued"] == 0, "the check after the deployment is recent"
    later = timezone.now() + timedelta(minutes=6)
    assert reconciler.reconcile(now=later)["drift_checks_queued"] == 1
    assert reconciler.reconcile(now=later)["drift_checks_queued"] == 0, "one is waiting already"
    drain()
    assert [c.status for c in checks_of(repository, staging)] == ["in_sync", "in_sync"]


def test_a_drift_check_waits_while_a_deployment_of_its_target_runs(deployed, release_with_drift):
    repository, staging = deployed
    running = promotion.promote(release_with_drift("v2"), staging, by=None)
    running.claim(worker_name="elsewhere")  # a worker runs it now
    call_command("checkdrift", "--now")
    drain()
    assert checks_of(repository, staging)[-1].status == "queued", "never during a deployment of the same target"


def test_checkdrift_says_what_it_queued_and_refuses_a_name_it_does_not_know(deployed, capsys):
    repository, staging = deployed
    call_command("checkdrift", "--now", "--environment", "staging")
    assert "1 drift check(s) queued." in capsys.readouterr().out
    with pytest.raises(CommandError, match="There is no repository named 'nope'."):
        call_command("checkdrift", "--repository", "nope")
    call_command("checkdrift")
    assert "Nothing to check" in capsys.readouterr().out


def test_a_release_without_drift_steps_is_not_checked(repository, staging, make_release, alice):
    promotion.promote(make_release(repository, "v1"), staging, by=alice)
    drain()
    call_command("checkdrift", "--now")
    assert checks_of(repository, staging) == []


def test_the_environment_page_shows_each_targets_sync_state_and_checks_drift_now_on_request(
        deployed, reality, client, bob, charlie):
    repository, staging = deployed
    client.force_login(bob)
    page = client.get(f"/environments/{staging.name}/").content.decode()
    assert "in sync" in page and "Check drift now" in page

    reality.write_text("changed by hand\n")
    response = client.post(f"/environments/{staging.name}/{repository.name}/check-drift", follow=True)
    assert "is queued" in response.content.decode()
    drain()
    drifted = checks_of(repository, staging)[-1]
    assert drifted.status == "drifted" and drifted.reason == "asked for by bob"
    page = client.get(f"/environments/{staging.name}/").content.decode()
    assert "drifted" in page and drifted.get_absolute_url() in page and "since" in page
    report = client.get(drifted.get_absolute_url()).content.decode()
    assert "found changed by hand" in report and "The log below is the report" in report

    client.force_login(charlie)  # may look, may not ask
    assert "Check drift now" not in client.get(f"/environments/{staging.name}/").content.decode()
    assert client.post(f"/environments/{staging.name}/{repository.name}/check-drift").status_code == 403


def test_where_the_stage_corrects_drift_the_release_is_deployed_again_and_the_target_is_back_in_sync(
        deployed, reality):
    repository, staging = deployed
    set_stage(staging, correct_drift=True)
    reality.write_text("changed by hand\n")

    call_command("checkdrift", "--now")
    drain()
    drain()

    assert reality.read_text() == "v1\n", "the correction put back what git says"
    deployments = list(repository.deployments.order_by("id"))
    assert [(d.release.version, d.trigger, d.status) for d in deployments] == [
        ("v1", "manual", "succeeded"), ("v1", "reconcile", "succeeded")]
    assert deployments[1].reason.startswith("Correcting drift: drift check #")
    assert [c.status for c in checks_of(repository, staging)] == ["in_sync", "drifted", "in_sync"]


def test_in_a_stage_that_holds_for_approval_a_drift_correction_waits_for_one(
        repository, production, origin, make_release, reality, bob, alice):
    from approvals.models import ChangeRequest

    set_stage(production, correct_drift=True)
    text = (f"environments:\n  production:\n    steps:\n      - run: echo $GITOPS_VERSION > {reality}\n"
            f"    drift:\n      - run: 'test \"$(cat {reality})\" = \"$GITOPS_VERSION\" || exit 2'\n")
    origin.write(".gitops.yml", text)
    v1 = make_release(repository, "v1", pipeline=text, commit_sha=origin.commit("v1"))
    held = promotion.promote(v1, production, by=alice)
    drain()
    ChangeRequest.objects.get(deployment=held).approve(bob)
    drain()
    reality.write_text("changed by hand\n")
    call_command("checkdrift", "--now")
    drain()
    drain()

    correction = repository.deployments.order_by("id").last()
    assert (correction.trigger, correction.status) == ("reconcile", "awaiting_approval")
    assert ChangeRequest.objects.get(deployment=correction).status == "pending"
    assert reality.read_text() == "changed by hand\n", "nothing deployed without the approval"


def test_the_dashboard_marks_a_drifted_target_and_links_the_report(deployed, reality, client, alice):
    repository, staging = deployed
    client.force_login(alice)
    page = client.get("/").content.decode()
    assert "drifted: see the report" not in page and "in sync with git" in page
    reality.write_text("changed by hand\n")
    call_command("checkdrift", "--now")
    drain()
    drifted = checks_of(repository, staging)[-1]
    page = client.get("/").content.decode()
    assert "drifted: see the report" in page and drifted.get_absolute_url() in page


def test_the_api_shows_each_targets_sync_state_and_checks_drift_now_for_a_deployer(
        deployed, reality, bob, charlie, make_token):
    from django.test import Client

    from tests.conftest import bearer

    repository, staging = deployed
    reader = Client(**bearer(make_token(charlie, "read")))
    deployer = Client(**bearer(make_token(bob, "read", "deploy")))
    (row,) = reader.get("/api/v1/status").json()
    target = next(t for t in row["targets"] if t["environment"] == "staging")
    assert target["sync_state"] == "in_sync" and target["drift_check_id"]

    reality.write_text("changed by hand\n")
    url = f"/api/v1/repositories/{repository.name}/environments/staging/check-drift"
    assert reader.post(url).status_code == 403
    answer = deployer.post(url)
    assert answer.status_code == 202 and "is queued" in answer.json()["detail"]
    drain()
    (row,) = reader.get("/api/v1/status").json()
    assert next(t for t in row["targets"] if t["environment"] == "staging")["sync_state"] == "drifted"
    assert deployer.post(f"/api/v1/repositories/{repository.name}/environments/nowhere/check-drift").status_code == 404


def test_a_check_that_a_deployment_started_during_is_not_believed_and_runs_again_after_it(
        deployed, release_with_drift, tmp_path):
    import threading

    from django.db import connection

    from pipelines.runs import kernel
    from tests.conftest import wait_for

    repository, staging = deployed
    gate = tmp_path / "go-on"
    started = tmp_path / "drift-started"
    slow = release_with_drift("v1-slow", drift=f"touch {started}; while [ ! -e {gate} ]; do sleep 0.05; done")
    set_stage(staging)
    from pipelines.models import Target

    Target.objects.filter(repository=repository, environment=staging).update(current_release=slow)
    check = DriftCheck.objects.queue_for(repository, staging, reason="on demand")

    def run():
        try:
            kernel.run("driftcheck", check.pk)
        finally:
            connection.close()

    runner = threading.Thread(target=run)
    runner.start()
    wait_for(started.exists, "the drift step to start")
    deployment = promotion.promote(release_with_drift("v2"), staging, by=None)
    deployment.claim(worker_name="elsewhere")  # a deployment of the same target starts meanwhile
    gate.touch()
    runner.join(timeout=60)

    check.refresh_from_db()
    assert check.status == "cancelled"
    assert check.error == f"Cut short by deployment #{deployment.pk}, which started while it ran: run again after it."
    again = checks_of(repository, staging)[-1]
    assert (again.status, again.reason) == ("queued", f"after deployment #{deployment.pk}")


def test_a_freeze_window_holds_a_drift_correction_like_any_deployment(deployed, reality):
    from approvals.models import FreezeWindow

    repository, staging = deployed
    set_stage(staging, correct_drift=True)
    FreezeWindow.objects.create(name="Year end", reason="Nobody on call.", starts_at=timezone.now() - timedelta(hours=1),
                                ends_at=timezone.now() + timedelta(hours=1)).environments.add(staging)
    reality.write_text("changed by hand\n")
    call_command("checkdrift", "--now")
    drain()
    drain()

    correction = repository.deployments.get(trigger="reconcile")
    assert correction.status == "queued", "held by the freeze, like any deployment"
    assert reality.read_text() == "changed by hand\n"
