"""Polling repositories into releases, against real git repositories."""

import hashlib
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from pipelines import followups, git, tracking
from pipelines.models import AuditEvent, Deployment, FollowUp, Release, Repository
from tests.conftest import PIPELINE
from tests.conftest import git as run_git

pytestmark = pytest.mark.usefixtures("environments")


@pytest.fixture
def poll_and_promote(transactional_db, run_workers):
    """Poll, then let a worker carry out what the poll left for it (the automatic promotion is a follow-up).
    Transactional, as production is: the follow-up runs in a forked work-horse, which sees only committed rows."""

    def poll(repository):
        recorded = tracking.poll_repository(repository)
        run_workers()
        return recorded

    return poll


def versions(repository):
    return list(repository.releases.order_by("id").values_list("version", flat=True))


def mirror_refs(repository):
    return run_git(git.mirror_path(repository), "for-each-ref", "--format=%(refname)").split()


def test_it_records_annotated_and_lightweight_tags_at_their_commits(repository, origin):
    first = origin.head()
    origin.tag("v1.0.0", annotated=True)
    second = origin.commit("Add retries", author_email="erin@example.com", author_name="Erin")
    origin.tag("v1.1.0")
    origin.tag("nightly")  # does not match the pattern v*

    recorded = tracking.poll_repository(repository)

    assert [r.version for r in recorded] == ["v1.0.0", "v1.1.0"]
    annotated, lightweight = Release.objects.get(version="v1.0.0"), Release.objects.get(version="v1.1.0")
    assert (annotated.commit_sha, lightweight.commit_sha) == (first, second)
    assert (lightweight.message, lightweight.author_name, lightweight.author_email) == (
        "Add retries", "Erin", "erin@example.com")
    assert lightweight.committed_at is not None
    assert lightweight.pipeline_text == PIPELINE
    assert lightweight.pipeline_sha256 == hashlib.sha256(PIPELINE.encode()).hexdigest()
    assert lightweight.error == ""
    events = AuditEvent.objects.filter(action="release.recorded").order_by("seq")
    assert [(e.actor_name, e.details["version"], e.repository_id) for e in events] == [
        ("poller", "v1.0.0", repository.pk), ("poller", "v1.1.0", repository.pk)]
    repository.refresh_from_db()
    assert repository.last_error == "" and repository.last_polled_at is not None and repository.refs_fingerprint


def test_it_records_tags_in_version_order_and_deploys_only_the_newest(repository, origin, staging):
    for tag in ["v1.10.0", "v1.9.0", "v1.9.0-rc1"]:
        origin.commit(f"work for {tag}")
        origin.tag(tag, annotated=tag == "v1.10.0")

    tracking.poll_repository(repository)

    assert versions(repository) == ["v1.9.0-rc1", "v1.9.0", "v1.10.0"]
    # The promotion is promised in the transaction that recorded the release (and tried at once).
    follow_up = FollowUp.objects.get()
    assert (follow_up.kind, follow_up.release.version) == (followups.PROMOTE_NEW_RELEASE, "v1.10.0")
    assert follow_up.done_at is not None
    deployment = Deployment.objects.get()
    assert (deployment.release.version, deployment.environment, deployment.status, deployment.trigger) == (
        "v1.10.0", staging, Deployment.Status.QUEUED, Deployment.Trigger.AUTO)


def test_it_records_an_old_tag_pushed_late_without_rolling_back(repository, origin, poll_and_promote):
    origin.tag("v2.0.0")
    poll_and_promote(repository)
    origin.commit("backport")
    origin.tag("v1.9.5")

    assert [r.version for r in poll_and_promote(repository)] == ["v1.9.5"]

    deployed = Deployment.objects.filter(environment__name="staging").values_list("release__version", flat=True)
    assert list(deployed) == ["v2.0.0"]


def test_an_old_tag_pushed_late_says_why_it_was_not_deployed(client, alice, repository, origin, poll_and_promote):
    origin.tag("v2.0.0")
    poll_and_promote(repository)
    origin.commit("backport")
    origin.tag("v1.9.5")
    poll_and_promote(repository)

    late = Release.objects.get(version="v1.9.5")
    skipped = AuditEvent.objects.get(action="promotion.skipped")
    assert (skipped.object_id, skipped.details["reason"]) == (
        str(late.pk), "v2.0.0, a newer version, was recorded before it: an older tag never deploys automatically")
    client.force_login(alice)
    page = client.get(reverse("release_detail", args=["shop", "v1.9.5"])).content.decode()
    assert "v2.0.0, a newer version, was recorded before it" in page
    # The newer release's page says nothing of the kind.
    newer = client.get(reverse("release_detail", args=["shop", "v2.0.0"])).content.decode()
    assert "was recorded before it" not in newer


def staging_versions():
    return list(Deployment.objects.filter(environment__name="staging").order_by("id")
                .values_list("release__version", flat=True))


def test_a_post_release_after_its_final_deploys_automatically(repository, origin, poll_and_promote):
    origin.tag("v3.0.3")
    poll_and_promote(repository)
    origin.commit("fix the packaging")
    origin.tag("v3.0.3.post1")

    poll_and_promote(repository)

    assert staging_versions() == ["v3.0.3", "v3.0.3.post1"]
    assert not AuditEvent.objects.filter(action="promotion.skipped").exists()


def test_tags_that_are_no_version_deploy_in_the_order_they_were_detected(repository, origin, poll_and_promote):
    Repository.objects.filter(pk=repository.pk).update(tag_pattern="nightly-*")
    repository.refresh_from_db()
    origin.tag("nightly-b")
    poll_and_promote(repository)
    origin.commit("next night")
    origin.tag("nightly-a")  # below nightly-b by name; detected later, so newer

    poll_and_promote(repository)

    assert staging_versions() == ["nightly-b", "nightly-a"]


def test_it_records_the_head_then_every_new_commit_in_commits_mode(repository, origin, poll_and_promote):
    Repository.objects.filter(pk=repository.pk).update(release_from=Repository.ReleaseFrom.COMMITS)
    repository.refresh_from_db()
    origin.commit("before the portal knew")
    head = origin.commit("first head")

    assert [r.commit_sha for r in tracking.poll_repository(repository)] == [head]
    assert versions(repository) == [head[:12]]

    new = [origin.commit(f"change {n}") for n in range(3)]
    run_git(origin.path, "checkout", "-q", "-b", "side", new[0])
    side = origin.commit("on a side branch")
    run_git(origin.path, "checkout", "-q", "main")
    run_git(origin.path, "merge", "-q", "--no-ff", "-m", "merge side", "side")
    merge = origin.head()

    recorded = poll_and_promote(repository)

    assert [r.commit_sha for r in recorded] == [*new, merge]  # first parent only, oldest first
    assert side not in Release.objects.values_list("commit_sha", flat=True)
    latest = Deployment.objects.order_by("-id").first()
    assert latest.release.commit_sha == merge
    assert not Deployment.objects.filter(release__commit_sha__in=new).exists()


def test_it_records_at_most_fifty_commits_per_poll(repository, origin):
    Repository.objects.filter(pk=repository.pk).update(release_from=Repository.ReleaseFrom.COMMITS)
    repository.refresh_from_db()
    tracking.poll_repository(repository)
    commits = [origin.commit(f"change {n}") for n in range(55)]

    recorded = tracking.poll_repository(repository)

    assert [r.commit_sha for r in recorded] == commits[-50:]


def test_it_does_not_fetch_when_the_tracked_refs_did_not_move(repository, origin):
    repository.check_branches = "checked/*"  # so that the branch below runs no checks: nothing tracks it
    repository.save()
    origin.tag("v1.0.0")
    tracking.poll_repository(repository)
    polled_before = Repository.objects.get(pk=repository.pk).last_polled_at
    # A push to a branch that tags mode does not track: ls-remote shows it, but the refs that matter are unchanged.
    run_git(origin.path, "checkout", "-q", "-b", "feature")
    origin.commit("work in progress")

    assert tracking.poll_repository(repository) == []

    assert "refs/heads/feature" not in mirror_refs(repository)
    repository.refresh_from_db()
    assert repository.last_polled_at > polled_before
    # A new tag moves the fingerprint: now the mirror is fetched, feature branch included.
    origin.tag("v1.1.0")
    assert [r.version for r in tracking.poll_repository(repository)] == ["v1.1.0"]
    assert "refs/heads/feature" in mirror_refs(repository)


def test_it_records_broken_yaml_as_an_invalid_release_with_the_line(repository, origin):
    origin.write(".gitops.yml", "environments:\n  staging:\n    steps:\n\t- run: ./deploy.sh\n")
    origin.commit("break the pipeline")
    origin.tag("v1.0.0")

    (release,) = tracking.poll_repository(repository)

    assert release.error.startswith(".gitops.yml line 4: not valid YAML")
    assert not release.is_valid
    assert not Deployment.objects.exists()


def test_it_names_an_environment_the_portal_does_not_have(repository, origin):
    origin.write(".gitops.yml", "environments:\n  qa:\n    steps:\n      - run: ./deploy.sh\n")
    origin.commit("deploy to qa")
    origin.tag("v1.0.0")

    (release,) = tracking.poll_repository(repository)

    assert release.error == ".gitops.yml line 2: unknown environment 'qa' (the portal has: production, staging)"
    assert not Deployment.objects.exists()


def test_it_records_a_release_without_a_pipeline_file_as_invalid(db, make_git_repo):
    origin = make_git_repo(pipeline=None)
    origin.tag("v1.0.0")
    repository = Repository.objects.create(name="bare", url=origin.url)

    (release,) = tracking.poll_repository(repository)

    assert release.error == f".gitops.yml not found at commit {origin.head()[:10]}"
    assert release.pipeline_text == "" and release.pipeline_sha256 == ""
    assert not Deployment.objects.exists()


def test_it_flags_a_moved_tag_and_never_redeploys(repository, origin, poll_and_promote):
    original = origin.head()
    origin.tag("v1.0.0")
    poll_and_promote(repository)
    moved_to = origin.commit("sneaky change")
    origin.move_tag("v1.0.0")

    assert poll_and_promote(repository) == []

    release = Release.objects.get(version="v1.0.0")
    assert (release.commit_sha, release.tag_moved_to) == (original, moved_to)
    event = AuditEvent.objects.get(action="release.tag_moved")
    assert event.details == {"version": "v1.0.0", "released_commit": original, "old_commit": original,
                             "new_commit": moved_to, "tag_move": release.tag_moves.get().pk}
    assert Deployment.objects.filter(environment__name="staging").count() == 1
    # Moving it again is news too (tests/test_tag_moves.py), but never a deployment.
    again = origin.commit("another change")
    origin.move_tag("v1.0.0")
    poll_and_promote(repository)
    assert Release.objects.get(version="v1.0.0").tag_moved_to == again
    assert AuditEvent.objects.filter(action="release.tag_moved").count() == 2
    assert Deployment.objects.filter(environment__name="staging").count() == 1


def test_it_stores_an_unreachable_repository_and_still_polls_the_others(repository, origin, tmp_path):
    origin.tag("v1.0.0")
    deleted = tmp_path / "deleted"
    broken = Repository.objects.create(name="broken", url=str(deleted))

    summary = tracking.poll_due_repositories()

    assert summary == {"polled": 2, "releases": 1, "failed": ["broken"]}
    assert versions(repository) == ["v1.0.0"]
    broken.refresh_from_db()
    assert broken.last_error == f"Cannot reach repository {deleted}: '{deleted}' does not appear to be a git repository"
    assert broken.last_error_at is not None and broken.last_polled_at is not None
    # The same failure again is stored but not audited again.
    Repository.objects.update(last_polled_at=None)
    tracking.poll_due_repositories()
    assert AuditEvent.objects.filter(action="repository.poll_failed").count() == 1


def test_it_clears_the_error_once_the_repository_answers_again(repository, origin, tmp_path):
    good_url = repository.url
    Repository.objects.filter(pk=repository.pk).update(url=str(tmp_path / "elsewhere"))
    repository.refresh_from_db()
    tracking.poll_repository(repository)
    assert repository.last_error.startswith("Cannot reach repository")

    Repository.objects.filter(pk=repository.pk).update(url=good_url)
    repository.refresh_from_db()
    tracking.poll_repository(repository)

    repository.refresh_from_db()
    assert repository.last_error == ""


def test_it_explains_a_branch_that_does_not_exist(repository):
    Repository.objects.filter(pk=repository.pk).update(release_from=Repository.ReleaseFrom.COMMITS, branch="trunk")
    repository.refresh_from_db()

    assert tracking.poll_repository(repository) == []

    repository.refresh_from_db()
    assert repository.last_error == f"Branch 'trunk' does not exist in repository {repository.url}."


def test_it_skips_repositories_that_are_not_due(repository, origin):
    origin.tag("v1.0.0")
    Repository.objects.filter(pk=repository.pk).update(last_polled_at=timezone.now() - timedelta(seconds=30))

    assert tracking.poll_due_repositories() == {"polled": 0, "releases": 0, "failed": []}

    assert tracking.poll_due_repositories(now=timezone.now() + timedelta(seconds=31))["releases"] == 1


def test_it_survives_an_unexpected_error_in_one_repository(repository, origin, tmp_path, monkeypatch):
    origin.tag("v1.0.0")
    other = Repository.objects.create(name="other", url=origin.url)
    real_ls_remote = git.ls_remote

    def ls_remote(repo):  # the boundary to the outside world misbehaves for one repository
        if repo.pk == repository.pk:
            raise RuntimeError("disk on fire")
        return real_ls_remote(repo)

    monkeypatch.setattr(git, "ls_remote", ls_remote)

    summary = tracking.poll_due_repositories()

    assert summary == {"polled": 2, "releases": 1, "failed": ["shop"]}
    assert versions(other) == ["v1.0.0"]
    repository.refresh_from_db()
    assert repository.last_error == "Polling failed unexpectedly: disk on fire"


# --- one bad tag costs one release, never the repository ------------------------------------------------


def test_it_skips_a_tag_on_a_blob_and_still_records_the_later_tags(repository, origin):
    origin.tag("v1.0.0")
    blob = run_git(origin.path, "hash-object", "-w", "deploy.sh")
    run_git(origin.path, "tag", "v1.1.0", blob)
    tree = run_git(origin.path, "rev-parse", "HEAD^{tree}")
    run_git(origin.path, "tag", "-a", "v1.2.0", "-m", "a tree", tree)
    origin.commit("next")
    origin.tag("v1.3.0")

    recorded = tracking.poll_repository(repository)

    assert [r.version for r in recorded] == ["v1.0.0", "v1.3.0"]
    repository.refresh_from_db()
    assert repository.last_error == ""
    assert repository.skipped_tags == [
        {"tag": "v1.1.0", "reason": "it points to a blob, not a commit"},
        {"tag": "v1.2.0", "reason": "it points to a tree, not a commit"},
    ]
    # And the next tag after that is recorded as well: the repository is not stuck.
    origin.commit("later")
    origin.tag("v1.4.0")
    assert [r.version for r in tracking.poll_repository(repository)] == ["v1.4.0"]
    repository.refresh_from_db()
    assert [entry["tag"] for entry in repository.skipped_tags] == ["v1.1.0", "v1.2.0"]


def test_a_pipeline_file_nested_thousands_deep_makes_one_invalid_release(repository, origin):
    origin.write(".gitops.yml", "environments: " + "[" * 3000 + "]" * 3000 + "\n")
    origin.commit("deeply nested")
    origin.tag("v1.0.0")
    origin.write(".gitops.yml", PIPELINE)
    origin.commit("fixed")
    origin.tag("v1.0.1")

    bad, good = tracking.poll_repository(repository)

    assert bad.version == "v1.0.0"
    assert bad.error == ".gitops.yml line 1: the file is nested too deeply (more than 50 levels)"
    assert (good.version, good.error) == ("v1.0.1", "")
    assert FollowUp.objects.get().release == good


def test_the_first_poll_reads_many_tags_in_a_few_git_calls(repository, origin, monkeypatch):
    for n in range(30):
        origin.commit(f"change {n}")
        origin.tag(f"v1.{n}.0", annotated=n % 2 == 0)
    calls = []
    real_execute = git._execute

    def counted(mirror, args, **options):  # only counts: every call still runs real git
        calls.append(args)
        return real_execute(mirror, args, **options)

    monkeypatch.setattr(git, "_execute", counted)

    recorded = tracking.poll_repository(repository)

    assert len(recorded) == 30 and all(r.error == "" for r in recorded)
    assert Release.objects.get(version="v1.29.0").message == "change 29"
    assert len(calls) <= 8, [args[:3] for args in calls]


# --- when to poll: back-off after failures, at once when a webhook asked ------------------------------


def test_a_failing_repository_backs_off_and_is_reset_by_a_success(repository, origin, tmp_path):
    good_url = repository.url
    Repository.objects.filter(pk=repository.pk).update(url=str(tmp_path / "gone"), poll_interval=60)
    repository.refresh_from_db()
    for _ in range(3):
        tracking.poll_repository(repository)
    repository.refresh_from_db()
    polled = repository.last_polled_at
    assert repository.consecutive_failures == 3

    due = Repository.objects.due_for_poll
    assert due(now=polled + timedelta(seconds=479)) == []  # 60 s * 2**3
    assert due(now=polled + timedelta(seconds=480)) == [repository]
    Repository.objects.filter(pk=repository.pk).update(consecutive_failures=10)
    assert due(now=polled + timedelta(seconds=600)) == [repository]  # never more than 10 minutes

    Repository.objects.filter(pk=repository.pk).update(url=good_url)
    repository.refresh_from_db()
    tracking.poll_repository(repository)
    repository.refresh_from_db()
    assert (repository.consecutive_failures, repository.last_error) == (0, "")
    assert due(now=repository.last_polled_at + timedelta(seconds=60)) == [repository]


def test_a_requested_poll_is_due_at_once_and_cleared_only_by_the_poll_that_served_it(repository, origin):
    tracking.poll_repository(repository)
    assert Repository.objects.due_for_poll() == []
    asked = timezone.now()
    Repository.objects.filter(pk=repository.pk).update(poll_requested_at=asked)
    assert Repository.objects.due_for_poll() == [repository]

    repository.refresh_from_db()
    # A second webhook arrives while this poll runs: its request must survive the poll.
    Repository.objects.filter(pk=repository.pk).update(poll_requested_at=asked + timedelta(seconds=1))
    tracking.poll_repository(repository)
    assert Repository.objects.get(pk=repository.pk).poll_requested_at == asked + timedelta(seconds=1)

    repository.refresh_from_db()
    tracking.poll_repository(repository)
    assert Repository.objects.get(pk=repository.pk).poll_requested_at is None
    assert Repository.objects.due_for_poll() == []


def test_the_scheduler_sweep_enqueues_one_poll_job_per_due_repository(repository, origin, make_git_repo):
    import django_rq

    other = Repository.objects.create(name="other", url=make_git_repo("other").url)
    queue = django_rq.get_queue("git")

    assert tracking.enqueue_due_polls() == {"asked": 2, "waiting": 0, "unreachable": 0}

    assert sorted(queue.job_ids) == sorted([f"poll-{repository.pk}", f"poll-{other.pk}"])
    # Marked as asked: not due again until its interval has passed.
    assert tracking.enqueue_due_polls() == {"asked": 0, "waiting": 0, "unreachable": 0}
    # A webhook's request makes it due at once, but its job still waits: no second job.
    Repository.objects.filter(pk=repository.pk).update(poll_requested_at=timezone.now())
    assert tracking.enqueue_due_polls() == {"asked": 0, "waiting": 1, "unreachable": 0}
    assert len(queue.job_ids) == 2
    # The job was lost (Redis flushed): the standing request gets it asked again.
    queue.connection.flushdb()
    assert tracking.enqueue_due_polls() == {"asked": 1, "waiting": 0, "unreachable": 0}
    assert queue.job_ids == [f"poll-{repository.pk}"]


def test_a_failed_automatic_promotion_is_kept_and_retried(repository, origin, staging, monkeypatch):
    from pipelines import promotion

    origin.tag("v1.0.0")
    real = promotion.on_release_recorded
    monkeypatch.setattr(promotion, "on_release_recorded", lambda release, since=None: 1 / 0)

    (release,) = tracking.poll_repository(repository)

    follow_up = FollowUp.objects.get(release=release)
    assert follow_up.done_at is None and "division by zero" in follow_up.last_error
    assert not Deployment.objects.exists()
    monkeypatch.setattr(promotion, "on_release_recorded", real)

    assert followups.carry_out(follow_up.pk, now=timezone.now() + timedelta(minutes=1))

    assert Deployment.objects.get().release == release
