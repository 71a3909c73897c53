"""Rows of the environment page: what runs there per repository, and its history with the rollbacks that
make sense. Built from rows the view loads once; templates ask them questions, never the database."""

from dataclasses import dataclass

from pipelines.models import Deployment, DriftCheck, Target


@dataclass
class CurrentRow:
    target: Target
    put_there_by: Deployment | None  # the success that put the current release in place (None: unknown)
    drift: DriftCheck | None = None  # the newest drift check that answered (in sync, drifted, failed)
    drift_waiting: bool = False  # a drift check is queued or running
    drifted_since: object = None  # when the drift the newest check found began (drifted targets only)

    @property
    def sync_state(self):
        """What the page says of git and reality here: "in sync", "drifted", "check failed" or "never checked"."""
        return self.drift.get_status_display().lower() if self.drift is not None else "never checked"

    @property
    def release(self):
        return self.target.current_release


@dataclass
class HistoryRow:
    deployment: Deployment
    current_release_id: int | None  # what runs on its target now
    target_busy: bool  # a deployment of its target is waiting or running

    @property
    def rollback_refusal(self):
        """Why this row offers no rollback, in words; None when it does. Only a past success of a release
        that is not what runs there now, not blocked, with nothing else on its way to the target."""
        deployment = self.deployment
        if deployment.status != Deployment.Status.SUCCEEDED:
            return "not a success"
        if deployment.release_id == self.current_release_id:
            return "runs there now"
        if deployment.release.blocked:
            return "blocked"
        if self.target_busy:
            return "a deployment is on its way"
        return None
