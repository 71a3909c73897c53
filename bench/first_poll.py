"""The first poll of a repository with 3,000 tags: every tag becomes a release in one poll.

The origin is written with `git fast-import` (3,000 commits, each with its own .gitops.yml and tag, every third
tag annotated), so building it takes a second. Then one `tracking.poll_repository` is timed: ls-remote, the
first fetch into the mirror, the batched reads (one for-each-ref, one log --stdin, one cat-file --batch) and
the 3,000 releases with their audit events. Target: ≤ 10 s (before the batched reads: ~100 s, three git
processes per tag). The floor printed beside it is one `git for-each-ref` over the tags of the same mirror.

Then one released tag is moved and the repository polled again (the move is found among 3,000 releases and
recorded once), and the repository page is rendered on its first and its 30th page of releases: same queries.
"""

import subprocess
import time

from _common import GIT_ENV, environment, git, ms, pipeline_yaml, portal, report

TAGS = 3000
TARGET = 10.0


def fast_imported_origin(path, tags):
    """A repository with `tags` commits on main, each tagged v1.<n>.0 and carrying a .gitops.yml."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    pipeline = pipeline_yaml("./deploy.sh").encode()
    stream = []
    for n in range(tags):
        deploy = f"#!/usr/bin/env bash\necho release {n}\n".encode()
        message = f"release 1.{n}.0\n".encode()
        stamp = 1_700_000_000 + n
        stream += [b"commit refs/heads/main\n", f"mark :{n + 1}\n".encode(),
                   f"author Dana Developer <dana@example.com> {stamp} +0000\n".encode(),
                   f"committer Dana Developer <dana@example.com> {stamp} +0000\n".encode(),
                   f"data {len(message)}\n".encode(), message]
        if n:
            stream.append(f"from :{n}\n".encode())
        stream += [f"M 100644 inline .gitops.yml\ndata {len(pipeline)}\n".encode(), pipeline, b"\n",
                   f"M 100755 inline deploy.sh\ndata {len(deploy)}\n".encode(), deploy, b"\n"]
        if n % 3 == 0:
            note = f"version 1.{n}.0\n".encode()
            stream += [f"tag v1.{n}.0\nfrom :{n + 1}\n".encode(),
                       f"tagger Dana Developer <dana@example.com> {stamp} +0000\n".encode(),
                       f"data {len(note)}\n".encode(), note]
        else:
            stream += [f"reset refs/tags/v1.{n}.0\nfrom :{n + 1}\n\n".encode()]
    subprocess.run(["git", "fast-import", "--quiet"], cwd=path, input=b"".join(stream), check=True,
                   env={**GIT_ENV, "HOME": str(path)})
    git(path, "checkout", "-q", "-f", "main")
    return path


def main():
    with portal("first-poll") as the_portal:
        from pipelines import git as portal_git
        from pipelines import tracking
        from pipelines.models import Release, Repository

        environment(name="staging", position=10, auto_deploy=False)
        started = time.perf_counter()
        origin = fast_imported_origin(the_portal.data_dir / "origin", TAGS)
        built = time.perf_counter() - started
        repository = Repository.objects.create(name="many-tags", url=str(origin))

        spent = {}
        for name in ("ls_remote", "sync_mirror", "tag_targets", "commits_info", "read_files"):
            original = getattr(portal_git, name)

            def timed(*args, _original=original, _name=name, **kwargs):
                begun = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - begun

            setattr(portal_git, name, timed)

        started = time.perf_counter()
        recorded = tracking.poll_repository(repository)
        elapsed = time.perf_counter() - started
        repository.refresh_from_db()
        if len(recorded) != TAGS or repository.last_error or Release.objects.exclude(error="").exists():
            raise RuntimeError(f"the first poll recorded {len(recorded)} of {TAGS} tags: {repository.last_error!r}")

        mirror = portal_git.mirror_path(repository)
        started = time.perf_counter()
        subprocess.run(["git", f"--git-dir={mirror}", "for-each-ref",
                        "--format=%(refname) %(objecttype) %(objectname) %(*objecttype) %(*objectname)", "refs/tags/"],
                       check=True, capture_output=True)
        for_each_ref = time.perf_counter() - started

        git(origin, "tag", "-f", "v1.5.0", "v1.6.0^{commit}")
        started = time.perf_counter()
        tracking.poll_repository(repository)
        moved_poll = time.perf_counter() - started
        moves = repository.releases.get(version="v1.5.0").tag_moves.count()
        if moves != 1:
            raise RuntimeError(f"the moved tag v1.5.0 was recorded {moves} times, not once")
        pages = _render_pages(repository, [1, 30])

        git_total = sum(spent.values())
        annotated = len(range(0, TAGS, 3))
        report(f"first poll of a repository with {TAGS} tags (one poll_repository call)", [
            ("first poll", ms(elapsed), f"≤ {ms(TARGET)}", elapsed <= TARGET),
            ("floor: one `git for-each-ref` over the tags of the mirror", ms(for_each_ref), None, None),
            ("  ls-remote", ms(spent.get("ls_remote", 0)), None, None),
            ("  first fetch into the mirror", ms(spent.get("sync_mirror", 0)), None, None),
            ("  for-each-ref (peel every tag)", ms(spent.get("tag_targets", 0)), None, None),
            ("  log --no-walk --stdin (commit of every tag)", ms(spent.get("commits_info", 0)), None, None),
            ("  cat-file --batch (every pipeline file)", ms(spent.get("read_files", 0)), None, None),
            ("  rest: parsing, releases and audit events", ms(elapsed - git_total), None, None),
            ("poll after one released tag moved (the move recorded once)", ms(moved_poll), None, None),
            *[(f"repository page, releases page {page}: {queries} queries", ms(seconds), None, None)
              for page, (seconds, queries) in pages.items()],
        ], notes=[f"origin built with git fast-import in {ms(built)}; {annotated} annotated tags, "
                  f"{TAGS - annotated} lightweight, each on its own commit with the same .gitops.yml; "
                  f"{elapsed / TAGS * 1000:.2f} ms per tag"])


def _render_pages(repository, pages):
    """{page: (seconds, queries)} for GETs of the repository page, signed in as a fresh admin."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    user = get_user_model().objects.create_superuser("bench-pages", "bench@example.com", "unused")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    url = f"/repos/{repository.name}/"
    client.get(url)  # warm the template cache
    figures = {}
    for page in pages:
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            response = client.get(url, {"page": page})
            seconds = time.perf_counter() - started
        if response.status_code != 200 or f"Page {page} of" not in response.content.decode():
            raise RuntimeError(f"page {page} of the releases did not render: {response.status_code}")
        figures[page] = (seconds, len(queries))
    return figures


if __name__ == "__main__":
    main()
