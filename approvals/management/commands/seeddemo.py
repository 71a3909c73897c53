"""Seed a demo that shows the whole flow on a fresh portal: a local git repository `shop` with two tagged
releases, the environments `staging` (follows git) and `production` (waits for approval), and the Repository
row that tracks it. Running it again changes nothing that exists."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Max

from approvals.models import StagePolicy
from pipelines.models import Environment, Lifecycle, Repository, Stage
from pipelines.models.lifecycle import DEFAULT_LIFECYCLE

PIPELINE = """\
# Read by the GitOps Portal at each release's commit.
environments:
  staging:
    variables: {REPLICAS: "1"}
    steps:
      - name: deploy
        run: ./deploy.sh
        timeout: 300
  production:
    variables: {REPLICAS: "3"}
    steps:
      - name: deploy
        run: ./deploy.sh
        timeout: 600
"""

DEPLOY_SCRIPT = """\
#!/usr/bin/env bash
# A stand-in for a real deployment: it only prints what it would do.
echo "Deploying shop $GITOPS_VERSION (commit ${GITOPS_COMMIT:0:10}) to $GITOPS_ENVIRONMENT"
echo "Previous version there: ${GITOPS_PREVIOUS_VERSION:-none}"
sleep 1
echo "Rolling out $REPLICAS replica(s)..."
sleep 1
echo "Health check passed"
echo "shop $GITOPS_VERSION is live in $GITOPS_ENVIRONMENT"
"""

README = "# shop\n\nA demo service deployed by the GitOps Portal. Tag a commit `v*` to release it.\n"

DEMO_APPROVERS = "approvers"
# Who wrote the demo's commits: an identity of its own, so that no account of the portal is their author.
DEMO_AUTHOR_NAME, DEMO_AUTHOR_EMAIL = "Demo Developer", "demo@example.com"


def _git(cwd, *args):
    """Run git with a fixed identity and no user or system configuration, so it works on a bare machine."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(cwd),
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": DEMO_AUTHOR_NAME,
        "GIT_AUTHOR_EMAIL": DEMO_AUTHOR_EMAIL,
        "GIT_COMMITTER_NAME": DEMO_AUTHOR_NAME,
        "GIT_COMMITTER_EMAIL": DEMO_AUTHOR_EMAIL,
    }
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise CommandError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def build_demo_repository(path):
    """Create the demo git repository at `path` (which must not exist): two commits tagged v1.0.0 and v1.1.0.

    It is built next to its final place and renamed into it, so an interrupted run leaves nothing half-made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        _git(staging_dir, "init", "-q", "-b", "main")
        (staging_dir / "README.md").write_text(README)
        (staging_dir / ".gitops.yml").write_text(PIPELINE)
        script = staging_dir / "deploy.sh"
        script.write_text(DEPLOY_SCRIPT)
        script.chmod(0o755)
        _git(staging_dir, "add", "-A")
        _git(staging_dir, "commit", "-q", "-m", "First release of the shop")
        _git(staging_dir, "tag", "-a", "v1.0.0", "-m", "shop 1.0.0")
        (staging_dir / "CHANGELOG.md").write_text("# Changes\n\n## 1.1.0\n- Faster checkout.\n\n## 1.0.0\n- First release.\n")
        _git(staging_dir, "add", "-A")
        _git(staging_dir, "commit", "-q", "-m", "Faster checkout")
        _git(staging_dir, "tag", "-a", "v1.1.0", "-m", "shop 1.1.0")
        staging_dir.rename(path)
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise
    return path


class Command(BaseCommand):
    help = ("Create the demo repository 'shop', the environments staging and production and their stages in the "
            "lifecycle 'default', unless they exist.")

    def handle(self, *args, **options):
        created, notes = [], []
        repo_path = settings.GITOPS_DATA_DIR / "demo" / "shop"
        if not (repo_path / ".git").is_dir():
            if repo_path.exists():
                raise CommandError(f"{repo_path} exists but is not a git repository; move it away and run again.")
            build_demo_repository(repo_path)
            created.append(f"the git repository {repo_path} with tags v1.0.0 and v1.1.0")

        with transaction.atomic():
            approvers, group_created = Group.objects.get_or_create(name=DEMO_APPROVERS)
            if group_created:
                superusers = list(get_user_model().objects.filter(is_superuser=True))
                approvers.user_set.add(*superusers)
                names = ", ".join(u.get_username() for u in superusers)
                created.append(f"the group {DEMO_APPROVERS!r}" + (f" (members: {names})" if names else ""))
                # The production stage blocks commit authors, told by e-mail: without one, nobody is cleared.
                notes += [f"{u.get_username()} has no e-mail address, so production refuses its approvals until one "
                          f"is set in the admin (the demo's commits are by {DEMO_AUTHOR_EMAIL})."
                          for u in superusers if not u.email]
            lifecycle, _ = Lifecycle.objects.get_or_create(name=DEFAULT_LIFECYCLE)
            staging = self._ensure_environment("staging", position=10)
            production = self._ensure_environment("production", position=20)
            if self._ensure_stage(lifecycle, staging, auto_deploy=True):
                created.append(f"the stage 'staging' of the lifecycle {lifecycle} (deploys automatically)")
            if production_stage := self._ensure_stage(lifecycle, production, auto_deploy=True, requires_approval=True):
                StagePolicy.objects.create(stage=production_stage, approver_group=approvers, required_approvals=1)
                created.append(f"the stage 'production' of the lifecycle {lifecycle} (waits for one approval from "
                               f"{DEMO_APPROVERS!r})")
            if not Repository.objects.filter(name="shop").exists():
                repository = Repository(name="shop", url=str(repo_path), poll_interval=10)
                repository.full_clean()
                repository.save()
                created.append(f"the repository 'shop' tracking {repo_path} every 10 s")

        if created:
            self.stdout.write(self.style.SUCCESS("Demo created:"))
            for item in created:
                self.stdout.write(f"  - {item}")
        else:
            self.stdout.write("The demo exists already; nothing changed.")
        for note in notes:
            self.stdout.write(self.style.WARNING(f"Note: {note}"))

    @staticmethod
    def _ensure_environment(name, *, position):
        """The environment called `name`, made at `position` (or after the last) if there is none."""
        existing = Environment.objects.filter(name=name).first()
        if existing is not None:
            return existing
        if Environment.objects.filter(position=position).exists():
            position = (Environment.objects.aggregate(last=Max("position"))["last"] or 0) + 10
        environment = Environment(name=name, position=position)
        environment.full_clean()
        environment.save()
        return environment

    @staticmethod
    def _ensure_stage(lifecycle, environment, **fields):
        """A new stage of `environment` at the end of `lifecycle`; None when it has one already (kept as is)."""
        if lifecycle.stages.filter(environment=environment).exists():
            return None
        position = (lifecycle.stages.aggregate(last=Max("position"))["last"] or 0) + 10
        return Stage.objects.create(lifecycle=lifecycle, environment=environment, position=position, **fields)
