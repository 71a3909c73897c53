"""The API's status endpoint (`GET /api/v1/status`: what runs where) at 500 repositories.

500 repositories in a lifecycle of two stages, each with a release running in both environments, are made in
bulk; then the endpoint is called 200 times in-process through Django's full request stack (middleware, token
check with its Redis rate counter, serialisation). Target: p95 ≤ 50 ms. The number of SQL queries per request is
counted at 50 and at 500 repositories: it must be the same (no query per repository)."""

import os
import statistics
import time

from _common import environment, ms, percentile, portal, report

REPOSITORIES = 500
REQUESTS = 200
TARGET_P95 = 0.050


def populate(first, count, environments):
    from pipelines.models import Release, Repository, Target

    repositories = Repository.objects.bulk_create(
        [Repository(name=f"repo-{n:04d}", url=f"/nonexistent/repo-{n:04d}") for n in range(first, first + count)])
    releases = Release.objects.bulk_create(
        [Release(repository=r, version="v1.0.0", commit_sha=f"{n:040x}") for n, r in enumerate(repositories, first)])
    Target.objects.bulk_create([Target(repository=release.repository, environment=env, current_release=release)
                                for release in releases for env in environments])


def queries_per_request(client, headers):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = client.get("/api/v1/status", **headers)
    assert response.status_code == 200, response.content[:300]
    return len(captured), len(response.json())


def main():
    os.environ.setdefault("GITOPS_API_RATE_LIMIT", "1000000")
    with portal("api"):
        from datetime import timedelta

        from django.contrib.auth import get_user_model
        from django.test import Client
        from django.utils import timezone

        from api.models import ApiToken

        environments = [environment("staging", 10), environment("production", 20)]
        user = get_user_model().objects.create_user("bench")
        _, token = ApiToken.objects.issue(user=user, name="bench", scopes=["read"], by=user,
                                          expires_at=timezone.now() + timedelta(days=1))
        client = Client(HTTP_HOST="127.0.0.1")
        headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}

        populate(0, 50, environments)
        client.get("/api/v1/status", **headers)  # the token's first use records it (then once a minute at most)
        small_queries, small_rows = queries_per_request(client, headers)
        populate(50, REPOSITORIES - 50, environments)
        large_queries, large_rows = queries_per_request(client, headers)
        if (small_rows, large_rows) != (50, REPOSITORIES):
            raise RuntimeError(f"unexpected rows: {small_rows}, {large_rows}")

        for _ in range(10):  # warm up
            client.get("/api/v1/status", **headers)
        timings = []
        for _ in range(REQUESTS):
            started = time.perf_counter()
            response = client.get("/api/v1/status", **headers)
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200
        p95 = percentile(timings, 0.95)
        report(f"API status endpoint, {REPOSITORIES} repositories × 2 stages, {REQUESTS} requests", [
            ("p95", ms(p95), f"≤ {ms(TARGET_P95)}", p95 <= TARGET_P95),
            ("median", ms(statistics.median(timings)), None, None),
            ("SQL queries per request at 50 / 500 repositories", f"{small_queries} / {large_queries}", "equal",
             small_queries == large_queries),
            ("response size", f"{len(response.content) // 1024} KiB", None, None),
        ])


if __name__ == "__main__":
    main()
