from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("approvals", "0004_stagepolicy_allow_api_approval"),
    ]

    operations = [
        migrations.AddField(
            model_name="stagepolicy",
            name="pre_approved_rollback",
            field=models.BooleanField(
                default=False,
                help_text="When the stage rolls back on failure, deploy the rollback to the release that ran here "
                          "before without a new approval (recorded as approved by this policy). Off: the rollback "
                          "opens a change request at once.",
                verbose_name="pre-approved rollback",
            ),
        ),
    ]
