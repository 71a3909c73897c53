"""The first poll of a repository with 3,000 tags: every tag becomes a release in one poll.

The origin is written with `git fast-import` (3,000 commits, each with its own .gitops.yml and tag, every third
tag annotated), so building it takes a second. Then one `tracking.poll_repository` is timed: ls-remote, the
first fetch into the mirror, the batched reads (one for-each-ref, one log --stdin, one cat-file --batch) and
the 3,000 releases with their audit events. Target: ≤ 10 s (before the batched reads: ~100 s, three git
processes per tag). The floor printed beside it is one `git for-each-ref` over the tags of the same mirror.
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
        ], notes=[f"origin built with git fast-import in {ms(built)}; {annotated} annotated tags, "
                  f"{TAGS - annotated} lightweight, each on its own commit with the same .gitops.yml; "
                  f"{elapsed / TAGS * 1000:.2f} ms per tag"])


if __name__ == "__main__":
    main()
