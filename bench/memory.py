"""Memory of the long-lived processes.

(a) gunicorn (1 worker) serving the dashboard of 50 repositories × 2 environments to a signed-in superuser:
    the worker's RSS after 1, 50, 100, 200, 500 and 1,000 requests of GET /.
(b) one long-running `manage.py rqworker git deploy`: the RSS of its main process (which runs deployments
    itself, see pipelines/worker.py) after deployments 1, 25, 50, 75 and 100 — it must stay flat — and the peak
    of its children (steps and their supervisors, work-horses of git jobs).
"""

import hashlib
import http.cookiejar
import re
import threading
import urllib.parse
import urllib.request

import psutil

from _common import environment, make_origin, pipeline_yaml, portal, report, wait_finished

REPOSITORIES = 50
WEB_SAMPLES = (1, 50, 100, 200, 500, 1000)  # RSS sampled after this many requests; the last is how many are made
WORKER_SAMPLES = (1, 25, 50, 75, 100)  # and after this many deployments
FLAT_MB = 2.0  # "flat": the worker's main process grows by no more than this from deployment 25 to 100
PASSWORD = "bench-password-8472"


def mb(rss):
    return f"{rss / 2**20:.1f} MB"


def dashboard_data(staging, production):
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from pipelines.models import Deployment, Release, Repository, Target

    get_user_model().objects.create_superuser("admin", "admin@example.com", PASSWORD)
    pipeline = pipeline_yaml("./deploy.sh", "./deploy.sh")
    for n in range(REPOSITORIES):
        repository = Repository.objects.create(name=f"service-{n:02d}", url=f"https://git.example.com/service-{n:02d}.git")
        releases = [Release.objects.create(repository=repository, version=version, pipeline_text=pipeline, message="change",
                                           commit_sha=hashlib.sha1(f"{n}{version}".encode()).hexdigest())
                    for version in ("v1.0.0", "v1.1.0")]
        for place, release in ((staging, releases[1]), (production, releases[0])):
            deployment = Deployment.objects.create(
                release=release, environment=place, repository=repository, status=Deployment.Status.SUCCEEDED,
                trigger=Deployment.Trigger.AUTO, queued_at=timezone.now(), started_at=timezone.now(),
                finished_at=timezone.now(), exit_code=0)
            Target.objects.create(repository=repository, environment=place, current_release=release,
                                  last_deployment=deployment)


def web_rss(base_url, master):
    """Sign in like a browser (cookie jar, CSRF token) and GET / REQUESTS times; {requests done: worker RSS}."""
    (worker,) = psutil.Process(master.pid).children()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(f"{base_url}/login/") as response:
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', response.read().decode())[1]
    form = urllib.parse.urlencode({"username": "admin", "password": PASSWORD, "csrfmiddlewaretoken": token, "next": "/"})
    with opener.open(f"{base_url}/login/", data=form.encode()) as response:
        if urllib.parse.urlsplit(response.url).path != "/":
            raise RuntimeError(f"sign-in failed, landed on {response.url}")
    samples = {0: worker.memory_info().rss}
    for n in range(1, WEB_SAMPLES[-1] + 1):
        with opener.open(f"{base_url}/") as response:
            body = response.read().decode()
            if response.status != 200 or f"service-{REPOSITORIES - 1:02d}" not in body:
                raise RuntimeError(f"GET / answered {response.status} without the dashboard")
        if n in WEB_SAMPLES:
            samples[n] = worker.memory_info().rss
    return samples


def horse_peak(worker, stop, peak):
    """Sample the RSS of the worker's children (steps, work-horses of git jobs) until `stop` is set."""
    main = psutil.Process(worker.pid)
    while not stop.wait(0.003):
        try:
            for horse in main.children():
                peak["rss"] = max(peak["rss"], horse.memory_info().rss)
                peak["seen"].add(horse.pid)
        except psutil.NoSuchProcess:
            pass


def worker_rss(the_portal, release, staging):
    from pipelines.models import Deployment
    from pipelines.promotion import promote

    worker = the_portal.start_worker("git", "deploy")
    main = psutil.Process(worker.pid)
    samples, peak, stop = {}, {"rss": 0, "seen": set()}, threading.Event()
    sampler = threading.Thread(target=horse_peak, args=(worker, stop, peak), daemon=True)
    sampler.start()
    try:
        for n in range(1, WORKER_SAMPLES[-1] + 1):
            trigger = Deployment.Trigger.MANUAL if n == 1 else Deployment.Trigger.RETRY
            deployment, _ = wait_finished(promote(release, staging, by=None, trigger=trigger))
            if deployment.status != Deployment.Status.SUCCEEDED:
                raise RuntimeError(f"deployment #{deployment.pk} {deployment.status}: {deployment.error}")
            if n in WORKER_SAMPLES:
                samples[n] = main.memory_info().rss
    finally:
        stop.set()
        sampler.join()
    return samples, peak


def main():
    with portal("memory") as the_portal:
        from pipelines import tracking
        from pipelines.models import Repository

        staging = environment(name="staging", position=10, auto_deploy=False)
        from django.contrib.auth.models import Group

        approvers = Group.objects.create(name="approvers")  # approval needs an approver group
        production = environment(name="production", position=20, approver_group=approvers)
        dashboard_data(staging, production)
        base_url, master = the_portal.start_web()
        web = web_rss(base_url, master)

        origin = make_origin(the_portal.data_dir / "origin", {".gitops.yml": pipeline_yaml("echo deployed $GITOPS_VERSION")},
                             tag="v1.0.0")
        repository = Repository.objects.create(name="small", url=str(origin))
        (release,) = tracking.poll_repository(repository)
        worker, peak = worker_rss(the_portal, release, staging)

        first, last = WEB_SAMPLES[0], WEB_SAMPLES[-1]
        growth = worker[WORKER_SAMPLES[-1]] - worker[WORKER_SAMPLES[1]]
        report("memory (RSS)", [
            *[(f"web worker after {n} × GET /" if n else "web worker after boot", mb(rss), None, None)
              for n, rss in web.items()],
            (f"web worker growth {first} → {last} requests", mb(web[last] - web[first]), None, None),
            *[(f"rq worker main after deployment {n}", mb(rss), None, None) for n, rss in worker.items()],
            (f"rq worker main growth {WORKER_SAMPLES[1]} → {WORKER_SAMPLES[-1]}", mb(growth), f"flat (≤ {FLAT_MB:.0f} MB)", growth <= FLAT_MB * 2**20),
            (f"children observed peak ({len(peak['seen'])} of {WORKER_SAMPLES[-1]} seen)", mb(peak["rss"]), None, None),
        ])


if __name__ == "__main__":
    main()
