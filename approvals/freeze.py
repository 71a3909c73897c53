"""Freeze windows: times when deployments to some environments wait, and the audited way through one.

A window is either one-off (`starts_at` ≤ now < `ends_at`) or recurring: a cron rule for its start,
read in the window's IANA `time_zone`, lasting `duration`. The runner asks `deploy_guard` (listed in
settings.GITOPS_DEPLOY_GUARDS) before it claims a queued deployment; while the answer is a reason the
deployment stays queued, and the reconciler enqueues it again once the guard lets it through.

DST: a recurring window *starts* on the local wall clock and *lasts* `duration` of real time. The start
is the cron rule's latest fire time in local time ("Friday 18:00 Europe/Berlin" is 18:00 in Berlin in
summer and in winter alike); the end is that aware start converted to UTC plus the duration. Adding a
timedelta to a zoneinfo-aware datetime would be wall-clock arithmetic instead, so a 60-hour window that
spans the October change would end an hour late (or early in March). When the start itself falls in the
spring-forward gap (02:30 on the last Sunday of March), croniter moves it to the first existing minute
after; when it falls in the repeated hour of October, it starts at the latest of the two."""

import logging
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from approvals.models import FreezeOverride, FreezeWindow
from pipelines.models import AuditEvent, Deployment, FollowUp, Repository, Target
from pipelines.models.followup import PROMOTE_REEVALUATE

logger = logging.getLogger(__name__)

# croniter's get_prev() looks strictly before its start time; a hair later, a window is active at the
# very instant it starts.
_JUST_AFTER = timedelta(microseconds=1)
# Back-to-back windows chain: "frozen until" is when the last of them ends. A recurring window that
# never leaves a gap (a daily 24-hour one) would chain for ever, so chaining stops after this many.
_MAX_CHAINED_WINDOWS = 30


class FreezeOverrideRefused(PermissionDenied):
    """This person may not let this deployment through a freeze now; the message says why."""


class Freeze(NamedTuple):
    """An environment frozen now, until when, and by which window (the one that ends last)."""

    environment: object
    until: datetime
    window: FreezeWindow

    @property
    def reason(self):
        return self.window.reason

    def __str__(self):
        until = format_until(self.until)
        return f"{self.environment} is frozen until {until} ({self.window.name}: {self.window.reason})"


def format_until(moment):
    """'2026-12-01 08:00 UTC', in the portal's time zone."""
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M %Z")


# --- when a window freezes ---------------------------------------------------------------------------


def window_end(window, now):
    """When `window` ends if it is active at `now`, else None. Disabled windows never freeze."""
    if not window.enabled:
        return None
    if window.is_recurring:
        return _recurring_end(window, now)
    if window.starts_at and window.ends_at and window.starts_at <= now < window.ends_at:
        return window.ends_at
    return None


def _recurring_end(window, now):
    if not window.duration or window.duration <= timedelta(0):
        return None
    try:
        zone = ZoneInfo(window.time_zone)
        started = croniter(window.cron, now.astimezone(zone) + _JUST_AFTER).get_prev(datetime)
    except (ValueError, ZoneInfoNotFoundError) as exc:  # CroniterError is a ValueError
        # FreezeWindow.clean() refuses these; a row written past it must not stop the runner or the reconciler.
        logger.error("Freeze window %s (#%s) cannot be evaluated and is ignored: %s", window, window.pk, exc)
        return None
    ends = started.astimezone(UTC) + window.duration  # real time, not wall-clock time: see the module docstring
    return ends if ends > now else None


def _chained_end(windows, now):
    """(until, window) for the windows active at `now`, following any that are active when those end."""
    frozen = None
    moment = now
    for _ in range(_MAX_CHAINED_WINDOWS):
        ends = [(end, window) for window in windows if (end := window_end(window, moment))]
        if not ends:
            break
        frozen = max(ends, key=lambda pair: pair[0])
        moment = frozen[0]  # a window active then ends later still
    return frozen


def _candidate_windows(now):
    """Enabled windows that may be active at `now` or later: one-off windows that ended are left out."""
    return FreezeWindow.objects.filter(enabled=True).filter(~Q(cron="") | Q(ends_at__gt=now))


def frozen_until(environment, now):
    """(until, window) when `environment` is frozen at `now`, else None.

    With overlapping windows, `until` is the latest end: the windows active now, then any window
    active at the moment those end (touching or overlapping), and so on. One query."""
    windows = list(_candidate_windows(now).filter(environments=environment))
    return _chained_end(windows, now)


def active_freezes(now=None):
    """Every environment frozen at `now`, as Freeze(environment, until, window) in promotion order.

    Two queries however many windows and environments: the windows, then their environments."""
    now = now or timezone.now()
    windows = list(_candidate_windows(now).prefetch_related("environments"))
    by_environment = {}
    for window in windows:
        for environment in window.environments.all():
            by_environment.setdefault(environment.pk, (environment, []))[1].append(window)
    freezes = []
    for environment, its_windows in by_environment.values():
        frozen = _chained_end(its_windows, now)
        if frozen:
            freezes.append(Freeze(environment, *frozen))
    return sorted(freezes, key=lambda freeze: (freeze.environment.position, freeze.environment.name))


# --- when a window ends --------------------------------------------------------------------------------

# How far back the reconciler looks for windows that ended: a reconciler that was down longer than this lets a
# freeze's end pass unnoticed, which costs nothing but the re-evaluation (what waited is woken all the same).
ENDED_LOOKBACK = timedelta(days=1)


def last_end(window, now):
    """When the latest occurrence of `window` that is over ended (at or before `now`), or None."""
    if not window.enabled:
        return None
    if not window.is_recurring:
        return window.ends_at if window.ends_at and window.ends_at <= now else None
    if not window.duration or window.duration <= timedelta(0):
        return None
    try:
        zone = ZoneInfo(window.time_zone)
        starts = croniter(window.cron, now.astimezone(zone) + _JUST_AFTER)
        for _ in range(3):  # the occurrence under way now, if any, has not ended: look at the one before
            ends = starts.get_prev(datetime).astimezone(UTC) + window.duration
            if ends <= now:
                return ends
    except (ValueError, ZoneInfoNotFoundError):
        return None  # reported where the window is evaluated for the guard
    return None


def reevaluate_after_freezes(now):
    """The reconciler's hook for freezes that ended: once per ended occurrence (within ENDED_LOOKBACK), promotion
    decides again for every repository that deploys to the window's environments (a PROMOTE_REEVALUATE follow-up
    each, keyed by the window and its end so that the next ticks schedule nothing more). What the freeze held is
    woken by the reconciler anyway, newest approval last; this is for what promotion would take now."""
    since = now - ENDED_LOOKBACK
    windows = (FreezeWindow.objects.filter(enabled=True)
               .filter(~Q(cron="") | Q(ends_at__gt=since, ends_at__lte=now)).prefetch_related("environments"))
    scheduled = 0
    for window in windows:
        ended = last_end(window, now)
        if ended is None or ended <= since:
            continue
        key = f"{window.pk}:{ended.isoformat()}"
        if FollowUp.objects.filter(kind=PROMOTE_REEVALUATE, payload__freeze_end=key).exists():
            continue
        pairs = (Target.objects.filter(environment__in=window.environments.all())
                 .values_list("repository_id", "environment_id").distinct())
        with transaction.atomic():
            for repository_id, environment_id in pairs:
                FollowUp.objects.schedule(PROMOTE_REEVALUATE, repository=Repository(pk=repository_id), payload={
                    "environment": environment_id, "freeze_end": key, "because": f"the freeze {window} ended"})
                scheduled += 1
    return scheduled


# --- the guard and the way through -------------------------------------------------------------------


def deploy_guard(deployment, now):
    """Why this queued deployment must wait for a freeze, or None.

    A deployment that someone let through (a FreezeOverride) never waits for a freeze."""
    return hold_reasons([deployment], now).get(deployment.pk)


def hold_reasons(deployments, now):
    """The GITOPS_DEPLOY_GUARDS function: {deployment id: why it must wait} for those a freeze holds.

    Three queries however many deployments wait (the reconciler asks about all of them every tick)."""
    freezes = {freeze.environment.pk: freeze for freeze in active_freezes(now)}
    frozen = [deployment for deployment in deployments if deployment.environment_id in freezes]
    if not frozen:
        return {}
    let_through = set(
        FreezeOverride.objects.filter(deployment__in=[d.pk for d in frozen]).values_list("deployment_id", flat=True)
    )
    return {d.pk: str(freezes[d.environment_id]) for d in frozen if d.pk not in let_through}


def override_freeze(deployment, *, by, reason):
    """Let `deployment` run during a freeze. Needs `approvals.deploy_during_freeze` and a written reason.

    It does not replace an approval: a held deployment still waits for its change request. A second
    call for the same deployment returns the first override and records nothing more."""
    reason = (reason or "").strip()
    if not by.has_perm("approvals.deploy_during_freeze"):
        raise FreezeOverrideRefused(
            f"{by.get_username()} may not deploy during a freeze: that needs the permission "
            "“Can deploy to an environment during a freeze window”."
        )
    if not reason:
        raise FreezeOverrideRefused("Say why this deployment must run during the freeze: a reason is required.")
    if deployment.is_finished or deployment.status == Deployment.Status.RUNNING:
        raise FreezeOverrideRefused(
            f"Deployment #{deployment.pk} is {deployment.get_status_display().lower()}; "
            "only a deployment that is still waiting can be let through a freeze."
        )
    frozen = frozen_until(deployment.environment_id, timezone.now())
    with transaction.atomic():
        # Its row first: a promotion or a run may lock it too, and the audit chain comes last for everyone.
        # Read the status under the lock: an approval may have queued it since the caller loaded it.
        status = Deployment.objects.select_for_update().filter(pk=deployment.pk).values_list("status", flat=True).get()
        override, created = FreezeOverride.objects.get_or_create(
            deployment=deployment, defaults={"user": by, "reason": reason}
        )
        if not created:
            return override  # a double click: it is already through
        AuditEvent.objects.record(
            action="freeze.overridden", actor=by, obj=deployment, repository=deployment.repository,
            environment=deployment.environment,
            details={
                "reason": reason,
                "window": frozen[1].name if frozen else None,
                "until": frozen[0].isoformat() if frozen else None,
                "release": deployment.release.version,
            },
        )
        if status == Deployment.Status.QUEUED:
            deployment.wake()  # held by the guard until now: wake it
    return override
