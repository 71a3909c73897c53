"""A released tag that lies is caught: every move (again, back, deletion) is recorded once, audited with the
commits involved, shown on the release page and mailed to the approvers of the environments running it;
and the release keeps deploying the commit it was recorded with."""

import pytest
from django.core import mail
from django.core.management import call_command
from django.urls import reverse

from approvals.models import ChangeRequest
from pipelines import git as tracking_git
from pipelines.models import AuditEvent, Deployment, FollowUp, Release, Repository, TagMove, Target
from pipelines.promotion import promote
from tests.conftest import git

pytestmark = pytest.mark.django_db(transaction=True)

PIPELINE = """\
environments:
  staging:
    steps:
      - run: ./deploy.sh
  production:
    steps:
      - run: ./deploy.sh
"""
# What the step prints comes from the files of the checkout, not from the portal's variables.
DEPLOY_SCRIPT = '#!/usr/bin/env bash\necho "deploying $GITOPS_VERSION, the checkout says: $(cat VERSION)"\n'


@pytest.fixture
def shop(make_git_repo):
    origin = make_git_repo(pipeline=PIPELINE, deploy_script=DEPLOY_SCRIPT)
    origin.write("VERSION", "released code\n")
    released = origin.commit("the release")
    origin.tag("v1.0.0")
    repository = Repository.objects.create(name="shop", url=origin.url)
    return origin, repository, released


def poll(run_workers):
    call_command("pollrepos", repository="shop")
    run_workers()  # the poll's follow-ups (promotion, mail) are jobs on the git queue


@pytest.fixture
def running_in_production(shop, environments, alice, bob, run_workers):
    """v1.0.0 released, deployed to staging by itself and to production after bob (an approver) approved."""
    origin, repository, released = shop
    staging, production = environments
    poll(run_workers)
    release = Release.objects.get(version="v1.0.0")
    ChangeRequest.objects.get(deployment__release=release, environment=production).approve(bob, "ship it")
    run_workers()
    assert Target.objects.get(repository=repository, environment=production).current_release == release
    mail.outbox.clear()
    return release


def tag_mail():
    return [message for message in mail.outbox if "Tag " in message.subject]


def test_it_flags_audits_and_mails_every_move_of_a_released_tag_once(shop, running_in_production, run_workers, client, alice):
    origin, repository, released = shop
    release = running_in_production
    page = reverse("release_detail", args=["shop", "v1.0.0"])
    client.force_login(alice)

    # Moved: flagged, audited with both commits, mailed to production's approvers (bob), not to alice.
    origin.write("VERSION", "sneaky code\n")
    first = origin.commit("sneaky change")
    origin.move_tag("v1.0.0")
    poll(run_workers)

    release.refresh_from_db()
    assert (release.commit_sha, release.tag_moved_to, release.tag_deleted) == (released, first, False)
    event = AuditEvent.objects.get(action="release.tag_moved")
    assert (event.details["old_commit"], event.details["new_commit"]) == (released, first)
    (message,) = tag_mail()
    assert message.to == ["bob@example.com"]
    assert message.subject == "[GitOps Portal] Tag moved: shop v1.0.0"
    assert f"moved from {released[:10]} to {first[:10]}" in message.body
    assert "Running in: staging, production" in message.body
    assert f"now points to <code>{first}</code>" in client.get(page).content.decode()

    # Moved again: a second move, from the first new commit; the page names the commit it points to now.
    second = origin.commit("sneakier change")
    origin.move_tag("v1.0.0")
    poll(run_workers)

    release.refresh_from_db()
    assert release.tag_moved_to == second
    assert list(release.tag_moves.values_list("kind", "from_sha", "to_sha")) == [
        ("moved", released, first), ("moved", first, second)]
    content = client.get(page).content.decode()
    assert f"now points to <code>{second}</code>" in content and f"now points to <code>{first}</code>" not in content
    assert len(tag_mail()) == 2 and f"from {first[:10]} to {second[:10]}" in tag_mail()[1].body

    # Moved back onto the released commit.
    origin.move_tag("v1.0.0", released)
    poll(run_workers)

    release.refresh_from_db()
    assert (release.tag_moved_to, release.tag_deleted) == ("", False)
    move = release.tag_moves.last()
    assert (move.kind, move.from_sha, move.to_sha) == ("moved_back", second, released)
    assert AuditEvent.objects.get(action="release.tag_moved_back").details["new_commit"] == released
    assert "back on the released commit" in client.get(page).content.decode()
    assert tag_mail()[2].subject == "[GitOps Portal] Tag moved back: shop v1.0.0"

    # Deleted.
    git(origin.path, "tag", "-d", "v1.0.0")
    poll(run_workers)

    release.refresh_from_db()
    assert (release.tag_moved_to, release.tag_deleted) == ("", True)
    move = release.tag_moves.last()
    assert (move.kind, move.from_sha, move.to_sha) == ("deleted", released, "")
    event = AuditEvent.objects.get(action="release.tag_deleted")
    assert (event.details["old_commit"], event.details["new_commit"]) == (released, "")
    content = client.get(page).content.decode()
    assert "The tag was deleted." in content
    history = content[content.index('class="list tag-moves"'):]
    history = history[history.index("<tbody>"):history.index("</tbody>")]
    assert history.count("<tr>") == 4  # the four moves, oldest first, the commits named
    assert history.index(f"{first[:10]}</code>") < history.index(f"{second[:10]}</code>") < history.index("moved back")
    assert tag_mail()[3].subject == "[GitOps Portal] Tag deleted: shop v1.0.0"
    assert [m.to for m in tag_mail()] == [["bob@example.com"]] * 4

    # Polling again changes nothing: each move was recorded, audited and mailed once.
    Repository.objects.filter(pk=repository.pk).update(refs_fingerprint="")  # look at the tags again, for real
    poll(run_workers)
    assert TagMove.objects.count() == 4
    assert AuditEvent.objects.filter(action__startswith="release.tag_").count() == 4
    assert FollowUp.objects.filter(kind=TagMove.FOLLOW_UP).count() == 4
    assert len(tag_mail()) == 4
    # A moved tag is never followed: nothing was deployed after the release reached production.
    assert Deployment.objects.count() == 2


def test_it_tells_the_deployers_when_no_approver_runs_the_release(shop, environments, alice, bob, charlie, run_workers):
    origin, repository, released = shop
    poll(run_workers)  # staging runs v1.0.0; production (where bob approves) waits for approval
    mail.outbox.clear()

    origin.commit("sneaky change")
    origin.move_tag("v1.0.0")
    poll(run_workers)

    # alice is an admin, bob holds the deploy permission; charlie may only read.
    recipients = sorted(address for message in tag_mail() for address in message.to)
    assert recipients == ["alice@example.com", "bob@example.com"]
    assert all("Running in: staging" in message.body for message in tag_mail())


def test_a_moved_tag_never_deploys_different_code_under_the_same_version(shop, environments, alice, run_workers):
    origin, repository, released = shop
    staging, production = environments
    poll(run_workers)
    release = Release.objects.get(version="v1.0.0")
    origin.write("VERSION", "sneaky code\n")
    origin.commit("sneaky change")
    origin.move_tag("v1.0.0")
    poll(run_workers)
    # The mirror has followed the tag: the tag now names the new code there too.
    assert Release.objects.get(pk=release.pk).tag_moved_to == origin.head()

    redeploy = promote(release, staging, by=alice, reason="deploy v1.0.0 again after its tag moved")
    run_workers()

    redeploy.refresh_from_db()
    log = redeploy.log_since(0)[0]
    assert redeploy.status == Deployment.Status.SUCCEEDED, log
    assert "deploying v1.0.0, the checkout says: released code" in log
    assert "sneaky" not in log


def test_a_released_commit_that_no_ref_holds_any_more_still_deploys_after_git_gc(shop, environments, alice, run_workers):
    origin, repository, released = shop
    staging, production = environments
    poll(run_workers)
    release = Release.objects.get(version="v1.0.0")
    # History rewritten: the released commit is on no branch or tag of the origin, and gone from it.
    git(origin.path, "reset", "-q", "--hard", "HEAD~1")
    origin.write("VERSION", "rewritten code\n")
    origin.commit("rewritten history")
    origin.move_tag("v1.0.0")
    git(origin.path, "reflog", "expire", "--expire=now", "--all")
    git(origin.path, "gc", "-q", "--prune=now")
    poll(run_workers)
    assert release.tag_moves.get().kind == TagMove.Kind.MOVED
    # The mirror's own garbage collection must not drop it either.
    git(tracking_git.mirror_path(repository), "gc", "-q", "--prune=now")

    redeploy = promote(release, staging, by=alice, reason="deploy v1.0.0 again")
    run_workers()

    redeploy.refresh_from_db()
    log = redeploy.log_since(0)[0]
    assert redeploy.status == Deployment.Status.SUCCEEDED, redeploy.error or log
    assert "the checkout says: released code" in log


def test_a_new_tag_pattern_does_not_report_the_releases_it_leaves_out_as_deleted(shop, environments, run_workers):
    origin, repository, released = shop
    poll(run_workers)
    Repository.objects.filter(pk=repository.pk).update(tag_pattern="release-*")
    git(origin.path, "tag", "-d", "v1.0.0")  # outside the pattern now: no longer watched
    origin.tag("release-2")

    poll(run_workers)

    assert Release.objects.filter(version="release-2").exists()
    assert not TagMove.objects.exists()
    assert not Release.objects.get(version="v1.0.0").tag_deleted
