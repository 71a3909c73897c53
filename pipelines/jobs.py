"""rq jobs. Each takes ids, loads rows, and calls model methods; the database stays the truth and
the queue is only a wake-up call, so enqueueing twice or losing a job is harmless."""

import django_rq
from django.db import transaction

DEPLOY_QUEUE = "deploy"
GIT_QUEUE = "git"


def deployment_job_id(deployment_id):
    return f"deployment-{deployment_id}"


def enqueue_deployment(deployment):
    """Wake a worker for a queued deployment once the current transaction commits."""
    from pipelines.models import Deployment

    job_id = deployment_job_id(deployment.pk)
    Deployment.objects.filter(pk=deployment.pk).update(job_id=job_id)
    deployment.job_id = job_id
    transaction.on_commit(
        lambda: django_rq.get_queue(DEPLOY_QUEUE, commit_mode="auto").enqueue(
            "pipelines.jobs.run_deployment", deployment.pk, job_id=job_id, job_timeout=-1, result_ttl=600, failure_ttl=86400
        )
    )


def enqueue_poll(repository_id):
    transaction.on_commit(
        lambda: django_rq.get_queue(GIT_QUEUE, commit_mode="auto").enqueue(
            "pipelines.jobs.poll_repository", repository_id, job_id=f"poll-{repository_id}", result_ttl=60
        )
    )


def run_deployment(deployment_id):
    from pipelines import runner

    runner.run_deployment(deployment_id)


def poll_repository(repository_id):
    from pipelines import tracking
    from pipelines.models import Repository

    repository = Repository.objects.filter(pk=repository_id, enabled=True).first()
    if repository is not None:
        tracking.poll_repository(repository)


def reconcile():
    from pipelines import reconciler

    reconciler.reconcile()
