"""From a tag in git to pre-production, with nobody involved, and a stop in front of production."""

import pytest
from django.core.management import call_command

from pipelines.models import Deployment, Release, Repository, Target

pytestmark = pytest.mark.django_db(transaction=True)

DEPLOY_SCRIPT = """\
#!/usr/bin/env bash
echo "deploying $GITOPS_VERSION ($GITOPS_COMMIT) to $GITOPS_ENVIRONMENT"
echo "checkout holds: $(cat VERSION)"
env | grep -E '^(SECRET_KEY|DATABASE_URL|REDIS_URL)=' && echo "LEAKED" || echo "no portal secrets here"
"""


def test_a_tag_flows_through_staging_and_stops_in_front_of_production(
    origin, environments, run_workers, monkeypatch
):
    staging, production = environments
    monkeypatch.setenv("SECRET_KEY", "the-portals-own-secret")
    monkeypatch.setenv("DATABASE_URL", "postgres://portal:hunter2@db/portal")
    repository = Repository(name="shop", url=origin.url)
    repository.full_clean()
    repository.save()

    origin.write("deploy.sh", DEPLOY_SCRIPT, executable=True)
    origin.write("VERSION", "1.0.0\n")
    sha = origin.commit("release 1.0.0")
    origin.tag("v1.0.0", annotated=True)

    call_command("pollrepos")
    release = Release.objects.get(repository=repository, version="v1.0.0")
    assert release.commit_sha == sha
    assert release.error == ""

    run_workers()

    staged = Deployment.objects.get(release=release, environment=staging)
    log = staged.log_since(0)[0]
    assert staged.status == "succeeded", log
    assert f"deploying v1.0.0 ({sha}) to staging" in log
    assert "checkout holds: 1.0.0" in log
    assert "no portal secrets here" in log and "LEAKED" not in log and "hunter2" not in log
    assert Target.objects.get(repository=repository, environment=staging).current_release == release
    held = Deployment.objects.get(release=release, environment=production)
    assert held.status == "awaiting_approval"

    # The next version's staging step fails: the chain stops there and production is untouched.
    origin.write("deploy.sh", "#!/usr/bin/env bash\necho 'migration failed: table locked'\nexit 1\n", executable=True)
    origin.write("VERSION", "1.1.0\n")
    origin.commit("release 1.1.0")
    origin.tag("v1.1.0")

    call_command("pollrepos", "--repository", "shop")
    run_workers()

    broken = Deployment.objects.get(release__version="v1.1.0", environment=staging)
    assert broken.status == "failed"
    assert broken.exit_code == 1
    assert "migration failed: table locked" in broken.log_since(0)[0]
    assert list(Deployment.objects.filter(environment=production).values_list("release__version", "status")) == [
        ("v1.0.0", "awaiting_approval")
    ]
    assert Target.objects.get(repository=repository, environment=staging).current_release == release
