"""One run, of any kind, from its wake-up to its recorded outcome.

1. Load the row; a run that is not queued any more was a duplicate wake-up. Ask its kind whether it may start.
2. Claim it: a compare-and-swap on its status (a deployment also takes its target's lease), as this process.
3. Under its heartbeat (heartbeat.py), the kind's `execute` prepares the run and runs its steps through
   `Context.steps`; a cancel is checked before every step and stops the one running (steps.py).
4. The outcome is recorded through `Context`: success, failure, cancellation, each one transition of the row
   with its audit event; a follow-up recorded with it (the automatic promotion) is carried out at once.

Fencing: a run never overlaps the next run of its target. It holds its lease, renewed by the heartbeat; when
no beat renewed it for half of GITOPS_WORKER_LOST_AFTER, the run kills its step itself, so by the time the
lease expires and the reconciler may fail it and start the next one, nothing of it runs any more. A step
dies with the process that runs it (its supervisor's parent-death signal, pipelines/sandbox.py).

Blips: a database error at any phase (loading, the claim, reading variables and secrets, between steps,
recording the outcome) is retried for up to half of GITOPS_WORKER_LOST_AFTER (blips.py); the log is
buffered meanwhile (log.py), the heartbeat retries at its next beat.

Cancel: the portal's cancel (FencedRun.cancel: the page, the API, the CLI) records the request and wakes this
process through rq's stop-job command; rq's own stop-job (its dashboard, `rq`'s API) reaches the same place
and is recorded as a cancel too. The step is stopped at once; without Redis, the next heartbeat finds the
request in the database instead."""

import logging
import os
import socket
import threading
import time

import django_rq
import rq as queues_rq
from django.db import connection, transaction
from redis.exceptions import RedisError

from pipelines import queues, sandbox
from pipelines.models import DeploymentStateError, FollowUp, StaleStatus, TargetBusy
from pipelines.models.run import this_host
from pipelines.models.wakeups import ask

from . import blips, registry
from .heartbeat import Heartbeat
from .log import LogWriter
from .process import seal_work_horse
from .steps import run_step

logger = logging.getLogger(__name__)

JOB_FUNCTION = "pipelines.runs.kernel.run"
# No rq timeout: a run takes as long as its steps, and each step has its own.
JOB_OPTIONS = {"result_ttl": 600, "failure_ttl": 86400}


# --- waking a worker ---------------------------------------------------------------------------------------


def enqueue(run):
    """Record the job id on a queued run's row and wake a worker of its kind's queue once the current
    transaction commits."""
    kind = registry.of(run)
    job_id = kind.job_id(run.pk)
    if run.job_id != job_id:  # set once: a run woken again (next in line, requeued) keeps its job id
        type(run).objects.filter(pk=run.pk).update(job_id=job_id)
        run.job_id = job_id
    transaction.on_commit(lambda: queues.enqueue(kind.queue, JOB_FUNCTION, kind.name, run.pk, job_id=job_id,
                                                 job_timeout=-1, **JOB_OPTIONS))


def enqueue_many(runs):
    """`enqueue` for many new queued runs of one kind at once (the scheduler's due drift checks): their job ids
    in one UPDATE, and one round trip to Redis after the commit. Enqueueing never fails the caller (queues.py)."""
    if not runs:
        return
    kind = registry.of(runs[0])
    for run in runs:
        run.job_id = kind.job_id(run.pk)
    type(runs[0]).objects.bulk_update(runs, ["job_id"])
    jobs = [queues_rq.Queue.prepare_data(JOB_FUNCTION, args=(kind.name, run.pk), job_id=run.job_id, timeout=-1,
                                         **JOB_OPTIONS) for run in runs]

    def wake():
        try:
            django_rq.get_queue(kind.queue).enqueue_many(jobs)
        except RedisError as exc:
            logger.warning("could not enqueue %d %s runs (%s); the reconciler will", len(jobs), kind.name, exc)

    transaction.on_commit(wake)


def stop_job(job_id):
    """Stop the run of rq job `job_id` if this process runs it (rq's stop-job command, in the worker's
    command thread). Recorded as a cancel where nobody asked for one yet. True when it was running here."""
    with _running_lock:
        running = _running.get(job_id)
    if running is None:
        return False
    run, heartbeat = running
    try:
        try:
            type(run).objects.get(pk=run.pk).cancel(reason="Stopped by rq's stop-job command.")
        except DeploymentStateError:
            pass  # a cancel was already asked for (the portal's own, which sent this command), or it ended
        except Exception:
            logger.exception("could not record the stop of %s; stopping its step anyway", run)
    finally:
        heartbeat.stop.set()  # the step is killed at once (steps.py), its outcome asked of the database
        connection.close()  # this thread's own connection
    return True


def send_stop(run):
    """Wake the worker running `run` to stop its step now (its heartbeat would find the cancel within a beat)."""
    from rq.command import send_stop_job_command
    from rq.exceptions import InvalidJobOperation, NoSuchJobError

    try:
        send_stop_job_command(django_rq.get_connection(registry.of(run).queue), run.job_id)
    except (RedisError, NoSuchJobError, InvalidJobOperation) as exc:
        logger.warning("could not send the stop of %s through Redis (%s); its heartbeat will find it", run, exc)


_running = {}  # {job id: (run, heartbeat)} of the runs this process runs now
_running_lock = threading.Lock()


# --- the run -----------------------------------------------------------------------------------------------


def run(kind_name, run_id):
    """The rq job of every run (JOB_FUNCTION)."""
    kind = registry.get(kind_name)
    found = blips.retry("loading it", lambda: kind.rows().filter(pk=run_id).first(), subject=f"{kind_name} {run_id}")
    if found is None or found.status != "queued":
        return  # a duplicate wake-up: it ran, runs, or was cancelled
    if not blips.retry("asking whether it may start", lambda: kind.may_start(found), subject=found):
        return
    seal_work_horse()
    try:
        _claim(found)
    except (StaleStatus, TargetBusy):
        return  # another worker claimed it first, or the running run of its target wakes it when it ends
    log = LogWriter(found, secrets=kind.log_secrets(found))
    job_id = kind.job_id(found.pk)
    try:
        with Heartbeat(found) as heartbeat:
            with _running_lock:
                _running[job_id] = (found, heartbeat)
            kind.execute(Context(kind, found, heartbeat, log))
    except (SystemExit, KeyboardInterrupt):
        # The worker is stopping cold (a second SIGTERM or Ctrl-C) during the run: the step's group is
        # already killed (steps.run_step). One attempt to say so; if it fails, the reconciler finds the runner gone.
        logger.warning("%s: the worker stopped during the run", found)
        try:
            log.close()
            found.fail(f"The worker running this {found._meta.verbose_name} was shut down during the run; its "
                       f"step was stopped.")
        except Exception:
            logger.exception("could not record that %s was stopped", found)
        raise
    except sandbox.StepsUnsealed as exc:  # not a crash: said in the log already, and the reason is the error
        log.close()
        record(found, "failure", lambda: found.fail(str(exc)))
    except Exception as exc:
        logger.exception("%s crashed in the portal", found)
        try:
            log.close()
        except Exception:
            logger.exception("could not store the end of the log of %s", found)
        error = f"The portal could not run this {found._meta.verbose_name}: {exc}"

        def fail():
            # What failed may have been a transition whose transaction rolled back: the row's status, not the
            # one this object was given before it did, says what the run is now.
            found.refresh_from_db(fields=["status"])
            found.fail(error)

        record(found, "failure", fail)
    finally:
        with _running_lock:
            _running.pop(job_id, None)


def _claim(run):
    """Claim the run as this process, through database blips: an attempt whose answer was lost may have
    claimed it already, which the next attempt recognises by the worker name and pid it wrote."""
    me = {"worker_name": f"{socket.gethostname()}:{os.getpid()}", "runner_host": this_host(), "runner_pid": os.getpid()}
    tried = False

    def attempt():
        nonlocal tried
        if tried:
            mine = type(run).objects.filter(pk=run.pk, status="running", **me).exists()
            if mine:
                run.refresh_from_db()
                return
        tried = True
        run.claim(**me)

    blips.retry("claiming it", attempt, subject=run)


def record(run, what, action):
    """Record the run's outcome (`action`), retrying through a database blip for up to half of
    GITOPS_WORKER_LOST_AFTER: the run's lease is good that long. True once recorded, False when the run
    was no longer running (cancelled, or given up as lost) or the database stayed away."""
    deadline = time.monotonic() + blips.patience()
    delay, failed_before = 0.2, False
    while True:
        try:
            if failed_before:  # an attempt may have committed before its answer was lost
                run.refresh_from_db(fields=["status"])
                if run.status != "running":
                    return False
            action()
            return True
        except StaleStatus:
            return False
        except blips.DATABASE_BLIP as exc:
            if time.monotonic() + delay > deadline:
                logger.error("could not record the %s of %s: %s", what, run, exc)
                return False
            logger.warning("recording the %s of %s failed (%s); retrying", what, run, exc)
            failed_before = True
            blips.reset_connection()
            time.sleep(delay)  # backing off from a database that is away, not waiting for work
            delay = min(delay * 2, 2.0)


class Context:
    """What a kind's `execute` works with: the claimed run, its heartbeat and log, and the ways to end it."""

    def __init__(self, kind, run, heartbeat, log):
        self.kind, self.run, self.heartbeat, self.log = kind, run, heartbeat, log

    def read(self, what, action):
        """A database read of the run's preparation (variables, secrets, what a build left), through blips."""
        return blips.retry(what, action, subject=self.run)

    def steps(self, steps, workdir, environment, account, shared=(), *, noun=None, first=1, total=None, settles=()):
        """Run the steps in order; record how the first one that did not succeed ended. True when all succeeded.
        `noun`, `first` and `total`: for a second list of the same run (a deployment's verify steps), how its
        failures name a step and how its log numbers them (after the first list's, so each is its own section).
        `settles`: exit statuses that end the list with an answer rather than a failure (a drift check's 2,
        "drifted"): the step's StepOutcome is returned, nothing recorded, for the kind to record."""
        noun = noun or self.kind.step_noun
        total = total or first - 1 + len(steps)
        for number, step in enumerate(steps, start=first):
            if self.heartbeat.stop.is_set() or self._cancel_requested():
                self._stopped(f"before step '{step.name}'")
                return False
            self.log.step_started(number, total, step)
            started = time.monotonic()
            outcome = run_step(self.run, step, workdir, environment, self.heartbeat, self.log, account, shared=shared)
            self.log.step_ended(number, total, outcome, time.monotonic() - started)
            if outcome.cancelled or outcome.lost:
                self._stopped(f"during step '{step.name}'")
                return False
            if outcome.timed_out:
                self.log.write(f"==> timed out after {step.timeout}s; the step's processes were killed\n")
                self._record_failure(f"{noun} '{step.name}' timed out after {step.timeout} s.", outcome.exit_code)
                return False
            if outcome.exit_code in settles:
                return outcome
            if outcome.exit_code != 0:
                self._record_failure(f"{noun} '{step.name}' exited with status {outcome.exit_code}.", outcome.exit_code)
                return False
        return True

    def fail(self, reason):
        """End the run as failed, saying why in its log too."""
        self.log.write(f"==> {reason}\n")
        self._record_failure(reason)

    def cancel(self, reason):
        """End the run as cancelled before it changed anything (a refusal to start), saying why."""
        self.log.write(f"==> {reason}\n")
        self.log.close()
        record(self.run, "cancellation", lambda: self.run.transition("cancelled", error=reason,
                                                                     details={"reason": reason}))

    def succeed(self, action=None):
        """Record the success (`action`, by default the model's `succeed()`); a follow-up it returns (the
        automatic promotion) is carried out at once, in this process: should that fail or this process die
        first, the reconciler re-drives it."""
        self.log.close()
        recorded = {}
        action = action or self.run.succeed
        if record(self.run, "success", lambda: recorded.update(outcome=action())) \
                and isinstance(recorded["outcome"], FollowUp):
            follow_up = recorded["outcome"].pk
            try:  # an attempt cut short by a blip is claimed again or left to the reconciler (FollowUp.claim)
                blips.retry("carrying out what follows its success", lambda: ask("carry_out_follow_up", follow_up),
                            subject=self.run)
            except Exception:
                logger.exception("what follows the success of %s failed; the reconciler retries it", self.run)

    def _record_failure(self, error, exit_code=None):
        self.log.close()
        record(self.run, "failure", lambda: self.run.fail(error, exit_code=exit_code))

    def _cancel_requested(self):
        """Asked from the database before every step, the first included (a cancel asked while the checkout was
        made means it never starts, with or without Redis to carry rq's stop-job): the heartbeat alone could be
        a beat late. A database that does not answer now says nothing; the heartbeat goes on asking."""
        try:
            return not type(self.run).objects.filter(pk=self.run.pk, status="running", cancel_requested_at=None).exists()
        except blips.DATABASE_BLIP:
            blips.reset_connection()
            return False

    def _why_stopped(self):
        """(status, whether a cancel was asked for) as the database has them, or (None, None) when it does not answer."""
        try:
            found = type(self.run).objects.filter(pk=self.run.pk).values_list("status", "cancel_requested_at").first()
        except blips.DATABASE_BLIP:
            blips.reset_connection()
            return None, None
        return (found[0], found[1] is not None) if found else (None, None)

    def _stopped(self, when):
        """The run stops early: its lease was lost, a cancel was asked for, or it was given up."""
        heartbeat, log, run = self.heartbeat, self.log, self.run
        if heartbeat.lost.is_set():
            log.write(f"==> {heartbeat.lost_reason()}\n")
            self._record_failure(heartbeat.lost_reason())
            return
        status, cancel_asked = self._why_stopped()
        if status not in (None, "running"):
            log.close()
            return  # given up (the reconciler) or finished elsewhere: nothing left to record
        if cancel_asked is False:  # still running, nobody asked: its lease went to no one it knows of
            self.fail("The run stopped: its lease was no longer its own.")
            return
        log.write("==> cancelled\n")
        log.close()
        record(run, "cancel", lambda: run.transition("cancelled", error=f"Cancelled {when}."))
