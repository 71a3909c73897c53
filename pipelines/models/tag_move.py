"""A released tag seen somewhere else than the last poll saw it: moved, moved back, or deleted.

A Release never follows its tag (it keeps the commit it was recorded with); these rows are how the portal
says that the tag lies, one per change the poller saw, with the commits involved."""

from django.db import models
from django.utils import timezone


class TagMove(models.Model):
    class Kind(models.TextChoices):
        MOVED = "moved", "moved"
        MOVED_BACK = "moved_back", "moved back"
        DELETED = "deleted", "deleted"

    # The follow-up kind written with each move; the approvals app mails the people who run the release.
    FOLLOW_UP = "mail.tag_moved"

    release = models.ForeignKey("pipelines.Release", on_delete=models.CASCADE, related_name="tag_moves")
    # Empty when the tag did not exist before (it had been deleted and is back).
    from_sha = models.CharField(max_length=40, blank=True)
    # Empty when the tag was deleted.
    to_sha = models.CharField(max_length=40, blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["seen_at", "id"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(kind="deleted") | models.Q(to_sha=""), name="tag_move_deleted_has_no_target"),
        ]

    def __str__(self):
        return f"{self.release} tag {self.get_kind_display()}"

    @property
    def short_from(self):
        return self.from_sha[:10]

    @property
    def short_to(self):
        return self.to_sha[:10]
