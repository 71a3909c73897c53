# Checks keep outputs and artifacts like builds, and a pull request the id of its one comment (issue 20, point 4).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('pipelines', '0027_stage_soak_time'),
    ]

    operations = [
        migrations.AddField(
            model_name='check',
            name='artifact_name',
            field=models.CharField(blank=True, help_text='Name in the gitops_artifacts storage.', max_length=500),
        ),
        migrations.AddField(
            model_name='check',
            name='artifact_sha256',
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name='check',
            name='artifact_size',
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='check',
            name='outputs',
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name='checkref',
            name='comment_id',
            field=models.CharField(blank=True, max_length=64),
        ),
    ]
