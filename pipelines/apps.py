from django.apps import AppConfig


class PipelinesConfig(AppConfig):
    name = "pipelines"
    verbose_name = "Pipelines"

    def ready(self):
        from pipelines import checks  # noqa: F401  (registers the system checks)
        from pipelines import forks

        forks.install()
