"""The order of promotion and the rules now live on lifecycle stages (0006, and approvals/0002 for the
approval policy, which runs before this one): the environment keeps its name and its listing order."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('pipelines', '0006_lifecycles'),
    ]

    operations = [
        migrations.RemoveConstraint(model_name='environment', name='required_approvals_at_least_one'),
        migrations.RemoveConstraint(model_name='environment', name='approval_needs_an_approver_group'),
        migrations.RemoveField(model_name='environment', name='allow_self_approval'),
        migrations.RemoveField(model_name='environment', name='approval_timeout'),
        migrations.RemoveField(model_name='environment', name='approver_group'),
        migrations.RemoveField(model_name='environment', name='auto_deploy'),
        migrations.RemoveField(model_name='environment', name='block_commit_authors'),
        migrations.RemoveField(model_name='environment', name='required_approvals'),
        migrations.RemoveField(model_name='environment', name='requires_approval'),
        migrations.AlterField(
            model_name='environment',
            name='position',
            field=models.PositiveIntegerField(help_text='Where it is listed among environments: lower comes first.', unique=True),
        ),
    ]
