"""What a change request shows, computed from a real git mirror: the commits, files and pipeline-file
difference between what runs in the environment now and the candidate, and the candidate's earlier results."""

from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
import time_machine

from approvals import changes
from pipelines import git, promotion
from pipelines.models import Deployment, Target
from tests.conftest import PIPELINE

pytestmark = pytest.mark.django_db

PIPELINE_WITH_TIMEOUT = """\
environments:
  staging:
    steps:
      - name: deploy
        run: ./deploy.sh
  production:
    steps:
      - run: ./deploy.sh
        timeout: 600
"""


def now_running(repository, environment, release):
    """Record `release` as what runs for `repository` in `environment` now."""
    target = Target.objects.for_pair(repository, environment)
    Target.objects.filter(pk=target.pk).update(current_release=release)


def test_it_lists_exactly_the_commits_between_what_runs_now_and_the_candidate(
    repository, origin, production, make_release, alice
):
    running = make_release(repository, "v1.0.0", commit_sha=origin.head())
    now_running(repository, production, running)
    origin.write("app.py", "print('hello')\n")
    first = origin.commit("Add the app\n\nWith a body that is not the subject.", author_email="Erin@Example.com",
                          author_name="Erin Engineer")
    origin.write("README", "shop\n")
    second = origin.commit("Write a readme")
    candidate = make_release(repository, "v1.1.0", commit_sha=second)
    origin.write("later.txt", "not released yet\n")
    origin.commit("Not part of v1.1.0")

    change = changes.inspect(promotion.promote(candidate, production, by=alice))

    summary = change.summary
    listed = [(c["sha"], c["short_sha"], c["subject"], c["author_name"], c["author_email"]) for c in summary["commits"]]
    assert listed == [
        (second, second[:10], "Write a readme", "Dana Developer", "dana@example.com"),
        (first, first[:10], "Add the app", "Erin Engineer", "Erin@Example.com"),
    ]
    assert summary["from"] == {"version": "v1.0.0", "sha": running.commit_sha}
    assert summary["to"] == {"version": "v1.1.0", "sha": second}
    assert summary["commit_count"] == 2
    assert summary["is_rollback"] is False and summary["first_deployment"] is False
    assert summary["truncated"] is False and summary["error"] == ""
    assert datetime.fromisoformat(summary["commits"][0]["committed_at"]).tzinfo is not None
    assert change.author_emails == ["dana@example.com", "erin@example.com"]


def test_it_links_each_commit_when_the_repository_has_a_web_url(repository, origin, production, make_release, alice):
    repository.web_url = "https://git.example.com/org/shop"
    repository.save()
    now_running(repository, production, make_release(repository, "v1.0.0", commit_sha=origin.head()))
    sha = origin.commit("Tweak")
    candidate = make_release(repository, "v1.1.0", commit_sha=sha)
    summary = changes.summarise(promotion.promote(candidate, production, by=alice))
    assert summary["commits"][0]["url"] == f"https://git.example.com/org/shop/commit/{sha}"


def test_it_counts_the_lines_added_and_removed_per_file_and_none_for_a_binary_file(
    repository, origin, production, make_release, alice
):
    origin.write("app.py", "one\ntwo\nthree\n")
    origin.write("old.txt", "a\nb\n")
    now_running(repository, production, make_release(repository, "v1.0.0", commit_sha=origin.commit("base")))
    origin.write("app.py", "one\nTWO\nthree\nfour\n")
    (origin.path / "old.txt").unlink()
    (origin.path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    candidate = make_release(repository, "v1.1.0", commit_sha=origin.commit("change files"))

    summary = changes.summarise(promotion.promote(candidate, production, by=alice))

    assert summary["files"] == [
        {"path": "app.py", "old_path": "", "added": 2, "removed": 1},
        {"path": "logo.png", "old_path": "", "added": None, "removed": None},
        {"path": "old.txt", "old_path": "", "added": 0, "removed": 2},
    ]
    assert summary["totals"] == {"files": 3, "added": 2, "removed": 3}


def test_it_shows_the_pipeline_file_difference_when_it_changed(repository, origin, production, make_release, alice):
    now_running(repository, production, make_release(repository, "v1.0.0", commit_sha=origin.head()))
    origin.write(".gitops.yml", PIPELINE_WITH_TIMEOUT)
    candidate = make_release(repository, "v1.1.0", commit_sha=origin.commit("Give production a timeout"))

    summary = changes.summarise(promotion.promote(candidate, production, by=alice))

    diff = summary["pipeline_diff"]
    assert diff.startswith("diff --git a/.gitops.yml b/.gitops.yml\n")
    assert "+        timeout: 600\n" in diff
    assert summary["files"] == [{"path": ".gitops.yml", "old_path": "", "added": 1, "removed": 0}]


def test_it_shows_no_pipeline_difference_when_the_file_did_not_change(
    repository, origin, production, make_release, alice
):
    now_running(repository, production, make_release(repository, "v1.0.0", commit_sha=origin.head()))
    origin.write("app.py", "print('hello')\n")
    candidate = make_release(repository, "v1.1.0", commit_sha=origin.commit("Add the app"))
    summary = changes.summarise(promotion.promote(candidate, production, by=alice))
    assert summary["pipeline_diff"] == ""
    assert [f["path"] for f in summary["files"]] == ["app.py"]


def test_a_rollback_lists_the_commits_it_removes(repository, origin, production, make_release, alice):
    older = make_release(repository, "v1.0.0", commit_sha=origin.head())
    origin.write("app.py", "print('hello')\n")
    first = origin.commit("Add the app")
    origin.write("app.py", "print('hello, world')\n")
    second = origin.commit("Greet the world")
    now_running(repository, production, make_release(repository, "v1.1.0", commit_sha=second))

    deployment = promotion.promote(older, production, by=alice, trigger=Deployment.Trigger.ROLLBACK)
    summary = changes.summarise(deployment)

    assert summary["is_rollback"] is True
    assert [c["sha"] for c in summary["commits"]] == [second, first]
    assert summary["from"]["version"] == "v1.1.0" and summary["to"]["version"] == "v1.0.0"
    # The files go from what runs now to the rollback's target: the app disappears.
    assert summary["files"] == [{"path": "app.py", "old_path": "", "added": 0, "removed": 1}]


def test_the_release_that_runs_now_in_the_target_wins_over_the_one_recorded_when_the_deployment_was_made(
    repository, origin, production, make_release, alice
):
    now_running(repository, production, make_release(repository, "v1.0.0", commit_sha=origin.head()))
    middle = origin.commit("Middle")
    candidate = make_release(repository, "v1.2.0", commit_sha=origin.commit("Newest"))
    deployment = promotion.promote(candidate, production, by=alice)  # previous_release is v1.0.0
    now_running(repository, production, make_release(repository, "v1.1.0", commit_sha=middle))

    summary = changes.summarise(deployment)
    assert summary["from"]["version"] == "v1.1.0"
    assert [c["subject"] for c in summary["commits"]] == ["Newest"]


def test_a_first_deployment_lists_the_candidates_own_history_and_every_file_as_added(
    repository, origin, production, make_release, alice
):
    initial = origin.head()
    latest = origin.commit("Second commit")
    candidate = make_release(repository, "v1.0.0", commit_sha=latest)
    summary = changes.summarise(promotion.promote(candidate, production, by=alice))
    assert summary["from"] is None and summary["first_deployment"] is True
    assert [c["sha"] for c in summary["commits"]] == [latest, initial]
    pipeline_lines = len(PIPELINE.splitlines())
    assert {f["path"]: f["added"] for f in summary["files"]} == {".gitops.yml": pipeline_lines, "deploy.sh": 2}
    assert summary["pipeline_diff"].count("\n+") == pipeline_lines + 1  # the lines, and the "+++ b/" header


def test_it_caps_a_huge_change_but_keeps_every_commit_author(
    repository, origin, production, make_release, alice, monkeypatch
):
    monkeypatch.setattr(changes, "MAX_COMMITS", 2)
    monkeypatch.setattr(changes, "MAX_FILES", 2)
    now_running(repository, production, make_release(repository, "v1.0.0", commit_sha=origin.head()))
    for number, author in enumerate(["erin@example.com", "dana@example.com", "dana@example.com"]):
        origin.write(f"file{number}.txt", "x\n")
        sha = origin.commit(f"Commit {number}", author_email=author)

    candidate = make_release(repository, "v1.1.0", commit_sha=sha)
    change = changes.inspect(promotion.promote(candidate, production, by=alice))

    summary = change.summary
    assert [c["subject"] for c in summary["commits"]] == ["Commit 2", "Commit 1"]
    assert summary["commit_count"] == 3
    assert len(summary["files"]) == 2 and summary["totals"]["files"] == 3
    assert summary["truncated"] is True
    assert change.author_emails == ["dana@example.com", "erin@example.com"], "the author beyond the cap still counts"


def test_it_shows_how_long_the_candidate_has_run_in_the_environments_before(
    repository, origin, staging, production, make_release, alice
):
    candidate = make_release(repository, "v1.0.0", commit_sha=origin.head())
    start = datetime(2025, 3, 3, 9, 0, tzinfo=dt_timezone.utc)
    with time_machine.travel(start, tick=False) as traveller:
        staged = promotion.promote(candidate, staging, by=alice)
        staged.claim(worker_name="worker-1")
        traveller.shift(timedelta(seconds=90))
        staged.succeed()
        traveller.shift(timedelta(hours=2))
        summary = changes.summarise(promotion.promote(candidate, production, by=alice))

    assert summary["earlier_results"] == [{
        "environment": "staging",
        "deployment_id": staged.pk,
        "status": "succeeded",
        "finished_at": (start + timedelta(seconds=90)).isoformat(),
        "duration_seconds": 90,
        "running_for_seconds": 2 * 3600,
        "replaced_by": None,
    }]


def test_earlier_results_stop_counting_when_a_later_release_replaced_the_candidate(
    repository, origin, staging, production, make_release, alice
):
    candidate = make_release(repository, "v1.0.0", commit_sha=origin.head())
    newer = make_release(repository, "v1.1.0", commit_sha=origin.commit("Newer"))
    with time_machine.travel(datetime(2025, 3, 3, 9, 0, tzinfo=dt_timezone.utc), tick=False) as traveller:
        staged = promotion.promote(candidate, staging, by=alice)
        staged.claim(worker_name="worker-1")
        staged.succeed()
        traveller.shift(timedelta(minutes=30))
        replacing = promotion.promote(newer, staging, by=alice)
        replacing.claim(worker_name="worker-1")
        replacing.succeed()
        traveller.shift(timedelta(hours=5))
        summary = changes.summarise(promotion.promote(candidate, production, by=alice))

    (result,) = summary["earlier_results"]
    assert result["running_for_seconds"] == 30 * 60
    assert result["replaced_by"] == "v1.1.0"


def test_earlier_results_show_the_latest_attempt_where_the_candidate_never_succeeded(
    repository, origin, staging, production, make_release, alice
):
    candidate = make_release(repository, "v1.0.0", commit_sha=origin.head())
    staged = promotion.promote(candidate, staging, by=alice)
    staged.claim(worker_name="worker-1")
    staged.fail("exit status 1", exit_code=1)
    summary = changes.summarise(promotion.promote(candidate, production, by=alice))
    (result,) = summary["earlier_results"]
    assert (result["environment"], result["deployment_id"], result["status"]) == ("staging", staged.pk, "failed")
    assert result["running_for_seconds"] is None


def test_a_git_failure_gives_an_error_and_empty_lists_instead_of_raising(repository, production, make_release, alice):
    # make_release invents a sha that the repository does not have.
    candidate = make_release(repository, "v1.0.0")
    change = changes.inspect(promotion.promote(candidate, production, by=alice))
    assert change.summary["error"] == f"Commit {candidate.commit_sha[:10]} is no longer in repository {repository.url}."
    assert change.summary["commits"] == [] and change.summary["files"] == [] and change.summary["pipeline_diff"] == ""
    assert change.author_emails == ["dana@example.com"], "the candidate's author is known from the release"


def test_a_pipeline_path_outside_the_repository_is_refused_before_git_runs(repository, origin):
    with pytest.raises(git.GitError, match="^Refusing to compare '../etc/passwd'"):
        git.file_diff(repository, None, origin.head(), "../etc/passwd")


def backport_over_newer(origin, repository, make_release):
    """v8.6.1: ten commits on main after a branch point; v8.5.3: one backport on a branch from that point.
    Returns (v8.6.1, v8.5.3, the ten shas newest first, the backport's sha, the branch point's sha)."""
    from tests.conftest import git as run_git

    origin.write("app.py", "version = '8.5'\n")
    branch_point = origin.commit("Release 8.5")
    ten = []
    for n in range(1, 11):
        origin.write(f"features/feature_{n}.py", f"feature = {n}\n")
        ten.insert(0, origin.commit(f"Feature {n}", author_email=f"dev{n}@example.com"))
    origin.tag("v8.6.1")
    newer = make_release(repository, "v8.6.1", commit_sha=ten[0])
    run_git(origin.path, "checkout", "-q", "-b", "release-8.5", branch_point)
    origin.write("app.py", "version = '8.5'\nfixed = True\n")
    backport = origin.commit("Backport fix", author_email="erin@example.com")
    origin.tag("v8.5.3")
    older = make_release(repository, "v8.5.3", commit_sha=backport)
    return newer, older, ten, backport, branch_point


def test_a_backport_over_a_newer_release_lists_the_commits_it_rolls_back_and_the_one_it_adds(
    repository, origin, production, make_release, alice
):
    newer, older, ten, backport, _ = backport_over_newer(origin, repository, make_release)
    now_running(repository, production, newer)

    change = changes.inspect(promotion.promote(older, production, by=alice))

    summary = change.summary
    assert summary["direction"] == "diverged" and summary["is_rollback"] is True
    assert [c["sha"] for c in summary["commits"]] == ten and summary["commit_count"] == 10
    assert [c["subject"] for c in summary["added_commits"]] == ["Backport fix"] and summary["added_count"] == 1
    assert summary["added_commits"][0]["sha"] == backport
    # From what runs now to the candidate: the ten features go, the fix comes.
    files = {f["path"]: (f["added"], f["removed"]) for f in summary["files"]}
    assert files == {**{f"features/feature_{n}.py": (0, 1) for n in range(1, 11)}, "app.py": (1, 0)}
    # Whoever wrote a commit on either side had a hand in the change.
    assert change.author_emails == sorted({"dana@example.com", "erin@example.com",
                                           *(f"dev{n}@example.com" for n in range(1, 11))})


def test_each_summary_says_which_way_it_goes(repository, origin, production, make_release, alice):
    newer, older, _, _, branch_point = backport_over_newer(origin, repository, make_release)
    base = make_release(repository, "v8.5.0", commit_sha=branch_point)

    assert changes.summarise(promotion.promote(newer, production, by=alice))["direction"] == "first"
    now_running(repository, production, newer)
    rollback = changes.summarise(promotion.promote(base, production, by=alice, trigger=Deployment.Trigger.ROLLBACK))
    assert (rollback["direction"], rollback["is_rollback"], rollback["added_commits"]) == ("rollback", True, [])
    now_running(repository, production, base)
    forward = changes.summarise(promotion.promote(older, production, by=alice))
    assert (forward["direction"], forward["is_rollback"], forward["commit_count"]) == ("forward", False, 1)
