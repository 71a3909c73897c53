"""Lifecycles: today's global environments, their order and their automatic/approval flags become the
stages of one lifecycle, `default`, which every repository follows; nothing else changes. The approval
part of each stage's policy is copied by approvals/0002, before 0007 removes it from the environments."""

import django.db.models.deletion
from django.db import migrations, models

import pipelines.models.lifecycle


def make_the_default_lifecycle(apps, schema_editor):
    Lifecycle = apps.get_model("pipelines", "Lifecycle")
    Stage = apps.get_model("pipelines", "Stage")
    Environment = apps.get_model("pipelines", "Environment")
    Repository = apps.get_model("pipelines", "Repository")
    default, _ = Lifecycle.objects.get_or_create(
        name="default", defaults={"description": "The environments and their rules as they were before lifecycles."})
    Stage.objects.bulk_create([
        Stage(lifecycle=default, environment=environment, position=environment.position,
              auto_deploy=environment.auto_deploy, requires_approval=environment.requires_approval)
        for environment in Environment.objects.order_by("position")
    ])
    Repository.objects.update(lifecycle=default)
    if schema_editor.connection.vendor == "postgresql":
        # Check the new foreign keys now: PostgreSQL refuses the ALTER TABLE below while checks are pending.
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def copy_the_default_stages_back(apps, schema_editor):
    """The `default` lifecycle's stages become the environments' flags again. Dropped: every other lifecycle
    (its repositories follow the environments, as all did before). A default stage that holds deployments
    without an approval policy gets an empty approver group named after its environment, as 0005 does: the
    older schema refuses approval without a group, and an admin sees whom to add."""
    Stage = apps.get_model("pipelines", "Stage")
    Environment = apps.get_model("pipelines", "Environment")
    Group = apps.get_model("auth", "Group")
    for stage in Stage.objects.filter(lifecycle__name="default").select_related("environment"):
        fields = {"auto_deploy": stage.auto_deploy, "requires_approval": stage.requires_approval}
        if stage.requires_approval and stage.environment.approver_group_id is None:
            fields["approver_group"] = Group.objects.get_or_create(name=f"{stage.environment.name}-approvers")[0]
        Environment.objects.filter(pk=stage.environment_id).update(**fields)
    if schema_editor.connection.vendor == "postgresql":
        # Check the foreign keys now: PostgreSQL refuses to alter a table while checks on it are pending.
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


class Migration(migrations.Migration):

    dependencies = [
        ('pipelines', '0005_fenced_runs_follow_ups_audit_mac'),
    ]

    operations = [
        migrations.CreateModel(
            name='Lifecycle',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.SlugField(max_length=100, unique=True)),
                ('description', models.TextField(blank=True)),
            ],
            options={'ordering': ['name']},
        ),
        migrations.CreateModel(
            name='Stage',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('position', models.PositiveIntegerField(help_text='Order of promotion within the lifecycle: lower comes first.')),
                ('auto_deploy', models.BooleanField(default=True, help_text='Deploy here automatically once the stage before succeeded.')),
                ('requires_approval', models.BooleanField(default=False, help_text='Deployments here wait for approval (the approval policy says by whom).')),
                ('environment', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='stages', to='pipelines.environment')),
                ('lifecycle', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='stages', to='pipelines.lifecycle')),
            ],
            options={
                'ordering': ['lifecycle', 'position'],
                'constraints': [
                    models.UniqueConstraint(fields=('lifecycle', 'environment'), name='one_stage_per_environment'),
                    models.UniqueConstraint(fields=('lifecycle', 'position'), name='one_stage_per_position'),
                ],
            },
        ),
        migrations.AddField(
            model_name='repository',
            name='lifecycle',
            field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.PROTECT, related_name='repositories', to='pipelines.lifecycle'),
        ),
        migrations.RunPython(make_the_default_lifecycle, copy_the_default_stages_back),
        # Every row has its lifecycle now. Not null first, then the default: a default given together with
        # NOT NULL would be evaluated here, through the live model rather than this migration's.
        migrations.AlterField(
            model_name='repository',
            name='lifecycle',
            field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='repositories', to='pipelines.lifecycle'),
        ),
        migrations.AlterField(
            model_name='repository',
            name='lifecycle',
            field=models.ForeignKey(default=pipelines.models.lifecycle.default_lifecycle_id, help_text='The stages its releases go through, and each stage\'s rules.', on_delete=django.db.models.deletion.PROTECT, related_name='repositories', to='pipelines.lifecycle'),
        ),
    ]
