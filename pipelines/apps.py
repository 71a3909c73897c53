from django.apps import AppConfig


class PipelinesConfig(AppConfig):
    name = "pipelines"
    verbose_name = "Pipelines"

    def ready(self):
        from pipelines import system_checks  # noqa: F401  (registers the system checks)
        from pipelines import commit_status, followups, forks, jobs
        from pipelines.runs import install as runs_install

        forks.install()
        runs_install.install()  # the kinds of run and the kernel's wake-ups (pipelines/runs/)
        followups.install_wakeups()
        # The models ask for work through pipelines/models/wakeups.py; the layers that do it answer.
        jobs.install_wakeups()
        commit_status.install_wakeups()
