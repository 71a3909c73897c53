"""The audit head carries its last event's MAC, so that a writer links the next event after the head alone
(seq, hash, MAC), under the head row's lock, without reading the events (issue 19, cheaper runs)."""

from django.db import migrations, models


def copy_the_last_events_mac(apps, schema_editor):
    """An installation with a head: the MAC of the event it points at. Left empty when that event has none (a
    legacy chain) or is not there: the next writer then reads the chain's end from the events, as before."""
    AuditHead, AuditEvent = apps.get_model("pipelines", "AuditHead"), apps.get_model("pipelines", "AuditEvent")
    for head in AuditHead.objects.all():
        mac = AuditEvent.objects.filter(seq=head.seq, hash=head.hash).values_list("mac", flat=True).first()
        if mac:
            AuditHead.objects.filter(pk=head.pk).update(mac=mac)


class Migration(migrations.Migration):

    dependencies = [
        ("pipelines", "0023_every_run_can_be_cancelled"),
    ]

    operations = [
        migrations.AddField(
            model_name="audithead",
            name="mac",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        # Backwards, the column goes away with RemoveField: nothing to undo here.
        migrations.RunPython(copy_the_last_events_mac, migrations.RunPython.noop),
    ]
