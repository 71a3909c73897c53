"""The approval part of each stage's policy: what every environment that required approval had becomes
the policy of its stage in the `default` lifecycle (pipelines/0006), and each change request points at
that stage. Runs before pipelines/0007, which removes those fields from the environments.

An environment that did not require approval keeps its settings too when it has an approver group or a
pending change request: before lifecycles anyone in the environment's group could decide on a request there
(an admin may have switched approval off while it was pending), and a request whose stage had no policy could
never be decided. Without a group, the policy gets an empty one named after the environment, as
pipelines/0005 does, so an admin sees whom to add."""

import django.core.validators
import django.db.models.deletion
from django.db import migrations, models


def copy_the_policies_to_the_default_stages(apps, schema_editor):
    Stage = apps.get_model("pipelines", "Stage")
    StagePolicy = apps.get_model("approvals", "StagePolicy")
    ChangeRequest = apps.get_model("approvals", "ChangeRequest")
    Group = apps.get_model("auth", "Group")
    stages = {stage.environment_id: stage for stage in Stage.objects.filter(lifecycle__name="default").select_related("environment")}
    pending = set(ChangeRequest.objects.filter(status="pending").values_list("environment_id", flat=True))
    for stage in stages.values():
        environment = stage.environment
        if not (environment.requires_approval or environment.approver_group_id or environment.pk in pending):
            continue
        group_id = environment.approver_group_id
        if group_id is None:
            group_id = Group.objects.get_or_create(name=f"{environment.name}-approvers")[0].pk
        StagePolicy.objects.create(
            stage=stage, required_approvals=environment.required_approvals,
            approver_group_id=group_id, allow_self_approval=environment.allow_self_approval,
            block_commit_authors=environment.block_commit_authors, approval_timeout=environment.approval_timeout,
        )
    for environment_id, stage in stages.items():
        ChangeRequest.objects.filter(environment_id=environment_id).update(stage=stage)
    if schema_editor.connection.vendor == "postgresql":
        # Check the new foreign keys now: PostgreSQL refuses the ALTER TABLE below while checks are pending.
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def copy_the_policies_back(apps, schema_editor):
    """The `default` lifecycle's policies become the environments' settings again. Dropped: the policies of
    other lifecycles' stages (their change requests keep their environment, whose settings then apply)."""
    StagePolicy = apps.get_model("approvals", "StagePolicy")
    Environment = apps.get_model("pipelines", "Environment")
    for policy in StagePolicy.objects.filter(stage__lifecycle__name="default").select_related("stage"):
        Environment.objects.filter(pk=policy.stage.environment_id).update(
            required_approvals=policy.required_approvals, approver_group_id=policy.approver_group_id,
            allow_self_approval=policy.allow_self_approval, block_commit_authors=policy.block_commit_authors,
            approval_timeout=policy.approval_timeout,
        )


class Migration(migrations.Migration):

    dependencies = [
        ('approvals', '0001_initial'),
        ('auth', '0012_alter_user_first_name_max_length'),
        ('pipelines', '0006_lifecycles'),
    ]
    # The upper layer says it must run first: pipelines' migrations know nothing of approvals.
    run_before = [
        ('pipelines', '0007_environment_policy_moved_to_stages'),
    ]

    operations = [
        migrations.CreateModel(
            name='StagePolicy',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('required_approvals', models.PositiveSmallIntegerField(default=1, validators=[django.core.validators.MinValueValidator(1)])),
                ('allow_self_approval', models.BooleanField(default=False, help_text='Let the person who requested a change approve it.')),
                ('block_commit_authors', models.BooleanField(default=True, help_text='Refuse approval from anyone whose e-mail authored a commit in the change.')),
                ('approval_timeout', models.DurationField(blank=True, help_text="Optional, e.g. '3 00:00:00' for three days.", null=True)),
                ('approver_group', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='auth.group')),
                ('stage', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='approval_policy', to='pipelines.stage')),
            ],
            options={
                'verbose_name_plural': 'stage policies',
                'constraints': [models.CheckConstraint(condition=models.Q(('required_approvals__gte', 1)), name='policy_needs_one_approval_at_least')],
            },
        ),
        migrations.AddField(
            model_name='changerequest',
            name='stage',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='pipelines.stage'),
        ),
        migrations.RunPython(copy_the_policies_to_the_default_stages, copy_the_policies_back),
        migrations.AlterField(
            model_name='changerequest',
            name='stage',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='pipelines.stage'),
        ),
    ]
