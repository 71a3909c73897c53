"""Each log chunk knows its line count and whether it holds a step's line, so that the deployment page reads
the tail of a long log without reading all of it (Deployment.log_tail). Existing chunks are counted here."""

from django.db import migrations, models
from django.db.models import Q, Value
from django.db.models.functions import Length, Replace

STEP_MARK, UNMARKED_STEP = "\x1e", "==> step "  # pipelines/run_log.py, as of this migration


def count_existing_chunks(apps, schema_editor):
    chunks = apps.get_model("pipelines", "DeploymentLogChunk").objects
    chunks.update(line_count=Length("text") - Length(Replace("text", Value("\n"), Value(""))))
    chunks.filter(Q(text__contains=STEP_MARK) | Q(text__contains=UNMARKED_STEP)).update(has_step_lines=True)


class Migration(migrations.Migration):
    dependencies = [("pipelines", "0017_dashboard_indexes")]

    operations = [
        migrations.AddField(model_name="deploymentlogchunk", name="line_count",
                            field=models.PositiveIntegerField(default=0)),
        migrations.AddField(model_name="deploymentlogchunk", name="has_step_lines",
                            field=models.BooleanField(default=False)),
        migrations.RunPython(count_existing_chunks, migrations.RunPython.noop),
    ]
