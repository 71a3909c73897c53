"""An environment's `verify:` steps (issue 20): they run after its deploy steps succeed, in the same checkout
with the same variables and secrets plus GITOPS_VERIFY=1; a deployment succeeds only once they pass, and a
failing one stops the release there. Real git, pollrepos and the real PortalWorker."""

import pytest
from django.core.management import call_command

from pipelines.models import Deployment, Release, Repository
from pipelines.pipeline_file import PipelineFileError, parse_pipeline

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "staging-smoke-token-41c9"

PIPELINE = """\
environments:
  staging:
    variables: {REGION: eu-west-1}
    steps:
      - name: apply
        run: echo "applying with verify=${GITOPS_VERIFY:-unset}" && echo up > state
    verify:
      - name: smoke
        run: ./smoke.sh
  production:
    steps:
      - run: echo deploying
"""


def deployed_in_staging(origin, staging, run_workers, smoke):
    """Tag v1.0.0 with `smoke` as its verify script, poll, run the workers: its staging deployment as it ended."""
    Repository.objects.create(name="shop", url=origin.url)
    release = tag_release(origin, "v1.0.0", smoke)
    run_workers()
    return Deployment.objects.get(release=release, environment=staging)


def page_of(client, user, deployment):
    client.force_login(user)
    return client.get(f"/deployments/{deployment.pk}/").content.decode()


def tag_release(origin, version, smoke):
    origin.write(".gitops.yml", PIPELINE)
    origin.write("smoke.sh", smoke, executable=True)
    origin.commit(f"release {version}")
    origin.tag(version)
    call_command("pollrepos")
    return Release.objects.get(version=version)


def test_verify_steps_run_after_the_deploy_steps_with_gitops_verify_and_the_environments_variables_and_secrets(
        origin, environments, run_workers, make_secret):
    staging, production = environments
    make_secret(staging, "SMOKE_TOKEN", SECRET)
    Repository.objects.create(name="shop", url=origin.url)
    release = tag_release(origin, "v1.0.0", '#!/usr/bin/env bash\n'
                          'echo "verifying $REGION verify=$GITOPS_VERIFY state=$(cat state) token=$SMOKE_TOKEN"\n')

    run_workers()

    deployment = Deployment.objects.get(release=release, environment=staging)
    log = deployment.log_since(0)[0]
    assert deployment.status == "succeeded", log
    assert "applying with verify=unset" in log, "the deploy steps do not get GITOPS_VERIFY"
    assert "verifying eu-west-1 verify=1 state=up token=***" in log
    assert log.index("applying") < log.index("==> Verifying") < log.index("verifying eu-west-1")
    assert SECRET not in "".join(deployment.log_chunks.values_list("text", flat=True))
    # Verified: the release goes on to the next stage.
    assert Deployment.objects.get(release=release, environment=production).status == "awaiting_approval"


def test_a_failing_verify_step_fails_the_deployment_and_the_release_goes_no_further(
        origin, environments, run_workers, client, alice):
    staging, production = environments
    deployment = deployed_in_staging(origin, staging, run_workers,
                                     "#!/usr/bin/env bash\necho 'smoke: 502 Bad Gateway'\nexit 1\n")

    assert deployment.status == "failed"
    assert deployment.error == "Verify step 'smoke' exited with status 1."
    assert deployment.exit_code == 1
    assert not Deployment.objects.filter(environment=production).exists()

    page = page_of(client, alice, deployment)
    assert "Verification failed" in page and "smoke: 502 Bad Gateway" in page
    assert "Verify step &#x27;smoke&#x27; exited with status 1." in page


def test_the_page_shows_the_verify_steps_as_their_own_section_once_verified(
        origin, environments, run_workers, client, alice):
    deployment = deployed_in_staging(origin, environments[0], run_workers, "#!/usr/bin/env bash\necho smoke ok\n")

    assert deployment.status == "succeeded"
    page = page_of(client, alice, deployment)
    assert page.index("Step 1/2: apply") < page.index("Verified") < page.index("Step 2/2: smoke")


def test_a_deployment_without_verify_steps_shows_no_verify_section(
        origin, environments, run_workers, client, alice):
    staging, _ = environments
    Repository.objects.create(name="shop", url=origin.url)
    origin.tag("v1.0.0")
    call_command("pollrepos")
    run_workers()

    deployment = Deployment.objects.get(environment=staging)
    assert deployment.status == "succeeded"
    assert "Verif" not in page_of(client, alice, deployment)


def test_verify_is_parsed_like_steps():
    spec = parse_pipeline(PIPELINE)
    assert [step.name for step in spec.environments["staging"].verify] == ["smoke"]
    assert spec.environments["production"].verify == ()


@pytest.mark.parametrize(("verify", "message"), [
    ("    verify: []\n", "line 5: 'verify' of environment 'staging' must be a non-empty list"),
    ("    verify:\n      - name: smoke\n", "line 6: step 1 of 'staging verify' has no 'run' command"),
    ("    verify:\n      - run: x\n        retries: 3\n",
     "line 7: unknown key 'retries' in step 1 of 'staging verify' (allowed: name, run, timeout)"),
])
def test_a_bad_verify_section_is_refused_with_its_line(verify, message):
    text = "environments:\n  staging:\n    steps:\n      - run: x\n" + verify
    with pytest.raises(PipelineFileError) as refused:
        parse_pipeline(text)
    assert str(refused.value) == message


def test_a_release_whose_verify_section_does_not_parse_is_invalid_and_not_deployed(
        origin, environments, run_workers):
    Repository.objects.create(name="shop", url=origin.url)
    origin.write(".gitops.yml", "environments:\n  staging:\n    steps:\n      - run: x\n    verify: smoke.sh\n")
    origin.commit("verify as a string")
    origin.tag("v1.0.0")
    call_command("pollrepos")
    run_workers()

    release = Release.objects.get(version="v1.0.0")
    assert "line 5: 'verify' of environment 'staging' must be a non-empty list" in release.error
    assert not Deployment.objects.exists()
