"""The log of a run on its way to the database: secrets masked, stderr marked, buffered through blips."""

import logging
import time

from django.conf import settings

from pipelines import masking, run_log

from .blips import DATABASE_BLIP, reset_connection

logger = logging.getLogger(__name__)

LOG_FLUSH_SECONDS = 0.25
LOG_FLUSH_BYTES = 64 * 1024
STDOUT, STDERR = "stdout", "stderr"


class LogWriter:
    """A run's log on its way to the database: secrets masked (also when one is split across
    two chunks of output), and buffered, so a flush that fails keeps its text for the next one; a
    database blip loses no line and never reaches the step."""

    def __init__(self, run, secrets):
        """`run`: a claimed FencedRun; `secrets`: what to mask (its kind's `log_secrets`)."""
        self.run = run
        self.secrets = secrets
        # One masker per stream: a secret split across two reads of stdout is masked even when a line of
        # stderr came in between.
        self.maskers = {stream: masking.StreamMasker(self.secrets) for stream in (STDOUT, STDERR)}
        self.pending = []
        self.failing_since = None
        self.seq = 0  # the runner writes the whole log of the run it has just claimed
        self.last_stream, self.at_line_start = STDOUT, True

    def mask_also(self, values):
        """Mask these values too (the environment's secrets); called before anything is written."""
        self.secrets = {*self.secrets, *masking.environment_secrets(values)}
        self.maskers = {stream: masking.StreamMasker(self.secrets) for stream in (STDOUT, STDERR)}

    def write(self, text, *, stream=STDOUT):
        """Add text of a stream: STDOUT (also what the runner says) or STDERR, whose lines are marked."""
        self._add(self.maskers[stream].feed(text), stream)

    def _add(self, text, stream):
        if not text:
            return
        if stream != self.last_stream and not self.at_line_start:
            self.pending.append("\n")  # the other stream's line was cut short by this one
            self.at_line_start = True
        if stream == STDERR:
            text = run_log.mark_errors(text, at_line_start=self.at_line_start)
        self.pending.append(text)
        self.last_stream, self.at_line_start = stream, text.endswith("\n")

    def step_started(self, number, total, step):
        self.write(run_log.step_started(number, total, step.name, step.run))

    def step_ended(self, number, total, outcome, seconds):
        if outcome.timed_out:
            status = "timed out"
        elif outcome.cancelled:
            status = "cancelled"
        elif outcome.lost:
            status = "stopped"
        else:
            status = "succeeded" if outcome.exit_code == 0 else "failed"
        self._add("\n" if not self.at_line_start else "", self.last_stream)
        self.write(run_log.step_ended(number, total, status=status, exit_code=outcome.exit_code, seconds=seconds))

    def end_streams(self):
        """A step's output ended: what each masker held back (the start of what might have been a secret)
        is written out."""
        for stream, masker in self.maskers.items():
            self._add(masker.finish(), stream)

    def flush(self, *, final=False):
        """Store what is pending; False when the database did not take it (it stays pending).

        A piece whose answer was lost may have been stored: it is sent again alone, under its own number (the
        database keeps the first copy), and what was written since goes in the next piece. Sent together
        under the old number, the newer text would be dropped with the duplicate."""
        if final:
            self.end_streams()
        while self.pending:
            retrying = self.failing_since is not None
            text = self.pending[0] if retrying else "".join(self.pending)
            try:
                self.run.append_log(text, seq=self.seq + 1)
            except DATABASE_BLIP as exc:
                if not retrying:
                    self.failing_since = time.monotonic()
                    self.pending = [text]
                    logger.warning("could not store the log of %s (%s); keeping it to retry", self.run, exc)
                reset_connection()
                return False
            self.seq += 1
            self.pending = self.pending[1:] if retrying else []
            self.failing_since = None
        return True

    def pending_size(self):
        return sum(map(len, self.pending))

    def close(self):
        """Store everything left, retrying for up to half of GITOPS_WORKER_LOST_AFTER."""
        deadline = time.monotonic() + settings.GITOPS_WORKER_LOST_AFTER / 2
        while not self.flush(final=True):
            if time.monotonic() > deadline:
                logger.error("gave up storing the end of the log of %s", self.run)
                return False
            time.sleep(0.25)
        return True


