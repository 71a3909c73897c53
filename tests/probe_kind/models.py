"""The one model of the probe kind: a run of one step, `script`."""

from django.db import models

from pipelines.models.run import FencedRun

PROBE_TRANSITIONS = {
    "queued": {"running", "failed", "cancelled"},
    "running": {"succeeded", "failed", "cancelled"},
    "succeeded": set(),
    "failed": set(),
    "cancelled": set(),
}


class Probe(FencedRun):
    TRANSITIONS = PROBE_TRANSITIONS

    status = models.CharField(max_length=20, choices=[(status, status.capitalize()) for status in PROBE_TRANSITIONS])
    script = models.TextField()

    def __str__(self):
        return f"probe #{self.pk}"

    def audit_scope(self):
        return {}

    def succeed(self):
        return self.transition("succeeded", exit_code=0)


class ProbeLogChunk(models.Model):
    probe = models.ForeignKey(Probe, on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.PositiveIntegerField()
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["probe", "seq"], name="unique_probe_log_chunk_seq")]
