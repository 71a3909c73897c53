from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("pipelines", "0025_pipeline_from_the_branch"),
    ]

    operations = [
        migrations.AddField(
            model_name="stage",
            name="rollback_on_failure",
            field=models.BooleanField(
                default=False,
                help_text="When a deployment fails here, deploy again the release that last succeeded here (a "
                          "rollback: where the stage holds for approval, its policy says whether it needs one). A "
                          "rollback that fails is not rolled back.",
                verbose_name="roll back on failure",
            ),
        ),
    ]
