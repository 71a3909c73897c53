"""The Django admin: write-only webhook secret, refused URLs, Poll now, read-only records, audit of every change."""

import hashlib

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from pipelines.models import AuditEvent, Deployment, Environment, Release, Repository, Target
from pipelines.models.lifecycle import default_lifecycle_id
from tests.conftest import PIPELINE

SECRET = "s3cr3t-webhook-value-7f9a"


@pytest.fixture
def signed_repository(repository):
    Repository.objects.filter(pk=repository.pk).update(webhook_secret=SECRET)
    repository.refresh_from_db()
    return repository


# The check secrets inline of the repository's page, with no secret in it.
CHECK_SECRETS_NONE = {"check_secrets-TOTAL_FORMS": 0, "check_secrets-INITIAL_FORMS": 0,
                      "check_secrets-MIN_NUM_FORMS": 0, "check_secrets-MAX_NUM_FORMS": 1000}


def repository_form(repository, **overrides):
    data = {
        "name": repository.name, "url": repository.url, "web_url": repository.web_url, "enabled": "on",
        "branch": repository.branch, "release_from": repository.release_from, "tag_pattern": repository.tag_pattern,
        "pipeline_path": repository.pipeline_path, "poll_interval": repository.poll_interval,
        "webhook_secret": "", "lifecycle": default_lifecycle_id(), "_save": "Save", **CHECK_SECRETS_NONE,
    }
    data.update(overrides)
    return data


def change_url(repository):
    return reverse("admin:pipelines_repository_change", args=[repository.pk])


# --- the webhook secret ----------------------------------------------------------------------------


def test_the_secret_is_never_rendered_back(client, alice, signed_repository):
    client.force_login(alice)
    html = client.get(change_url(signed_repository)).content.decode()
    assert 'type="password" name="webhook_secret"' in html
    assert SECRET not in html
    assert "A secret is set" in html
    assert "http://127.0.0.1:8000/hooks/shop" in html


def test_a_blank_secret_keeps_the_old_one(client, alice, signed_repository):
    client.force_login(alice)
    response = client.post(change_url(signed_repository), repository_form(signed_repository, poll_interval=120))
    assert response.status_code == 302
    signed_repository.refresh_from_db()
    assert signed_repository.poll_interval == 120
    assert signed_repository.webhook_secret == SECRET


def test_a_new_secret_replaces_the_old_one(client, alice, signed_repository):
    client.force_login(alice)
    client.post(change_url(signed_repository), repository_form(signed_repository, webhook_secret="rotated-secret"))
    signed_repository.refresh_from_db()
    assert signed_repository.webhook_secret == "rotated-secret"


def test_an_admin_change_is_audited_without_the_secret(client, alice, signed_repository):
    client.force_login(alice)
    client.post(change_url(signed_repository), repository_form(signed_repository, branch="release", webhook_secret="rotated-secret"))
    event = AuditEvent.objects.get(action="admin.change")
    assert event.actor == alice
    assert (event.object_type, event.object_id) == ("pipelines.repository", str(signed_repository.pk))
    assert event.details == {
        "change": [{"changed": {"fields": ["Branch", "Webhook secret"]}}],
        "values": {"branch": ["main", "release"], "webhook_secret": "changed"},
    }, "the secret by name only"
    assert "rotated-secret" not in event.canonical_json() and SECRET not in event.canonical_json()
    assert AuditEvent.objects.first_broken() is None


def test_a_blank_secret_is_not_reported_as_a_change(client, alice, signed_repository):
    client.force_login(alice)
    client.post(change_url(signed_repository), repository_form(signed_repository, branch="release"))
    assert AuditEvent.objects.get(action="admin.change").details["change"] == [{"changed": {"fields": ["Branch"]}}]


# --- adding and deleting ---------------------------------------------------------------------------


def test_an_unsafe_url_is_refused_with_a_clear_message(client, alice, db):
    client.force_login(alice)
    response = client.post(reverse("admin:pipelines_repository_add"), {
        "name": "evil", "url": "ext::sh -c x", "branch": "main", "release_from": "tags", "tag_pattern": "v*",
        "pipeline_path": ".gitops.yml", "poll_interval": 60, "webhook_secret": "", "lifecycle": default_lifecycle_id(), "_save": "Save",
    })
    assert response.status_code == 200
    assert "Remote-helper transports such as &#x27;ext::&#x27; are refused" in response.content.decode()
    assert not Repository.objects.exists()
    assert not AuditEvent.objects.exists()


def test_adding_a_repository_is_audited(client, alice, origin):
    client.force_login(alice)
    response = client.post(reverse("admin:pipelines_repository_add"), {
        "name": "shop", "url": origin.url, "web_url": "", "enabled": False, "branch": "main", "release_from": "tags", "tag_pattern": "v*",
        "pipeline_path": ".gitops.yml", "poll_interval": 60, "webhook_secret": SECRET, "lifecycle": default_lifecycle_id(), "_save": "Save",
        **CHECK_SECRETS_NONE,
    })
    assert response.status_code == 302
    repository = Repository.objects.get(name="shop")
    assert repository.webhook_secret == SECRET
    event = AuditEvent.objects.get(action="admin.add")
    assert event.object_id == str(repository.pk) and event.actor == alice
    assert event.details["values"] == {
        "name": "shop", "url": origin.url, "web_url": "", "enabled": False, "branch": "main", "release_from": "tags", "tag_pattern": "v*",
        "pipeline_path": ".gitops.yml", "pipeline_from_branch": False, "poll_interval": 60, "webhook_secret": "set",
        "lifecycle": "default", "git_host": "", "api_url": "", "host_project": "", "check_branches": "",
    }
    assert SECRET not in event.canonical_json()


def test_deleting_is_audited(client, alice, db):
    environment = Environment.objects.create(name="qa", position=5)
    client.force_login(alice)
    response = client.post(reverse("admin:pipelines_environment_delete", args=[environment.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Environment.objects.exists()
    event = AuditEvent.objects.get(action="admin.delete")
    assert (event.object_type, event.object_repr, event.actor) == ("pipelines.environment", "qa", alice)


def test_a_bulk_delete_audits_each_object(client, alice, db):
    qa = Environment.objects.create(name="qa", position=5)
    dev = Environment.objects.create(name="dev", position=1)
    client.force_login(alice)
    client.post(reverse("admin:pipelines_environment_changelist"), {
        "action": "delete_selected", ACTION_CHECKBOX_NAME: [qa.pk, dev.pk], "post": "yes",
    })
    assert not Environment.objects.exists()
    assert sorted(AuditEvent.objects.filter(action="admin.delete").values_list("object_repr", flat=True)) == ["dev", "qa"]


def test_a_lifecycles_stages_are_edited_inline_and_each_change_is_on_record(client, alice, environments):
    from pipelines.models import Lifecycle, Stage

    staging, production = environments
    lifecycle = Lifecycle.objects.get(name="default")
    first, second = Stage.objects.filter(lifecycle=lifecycle).order_by("position")
    client.force_login(alice)
    response = client.post(reverse("admin:pipelines_lifecycle_change", args=[lifecycle.pk]), {
        "name": "default", "description": "",
        "stages-TOTAL_FORMS": 2, "stages-INITIAL_FORMS": 2, "stages-MIN_NUM_FORMS": 0, "stages-MAX_NUM_FORMS": 1000,
        "stages-0-id": first.pk, "stages-0-lifecycle": lifecycle.pk, "stages-0-position": 10,
        "stages-0-environment": staging.pk, "stages-0-take_prereleases": "on",
        "stages-1-id": second.pk, "stages-1-lifecycle": lifecycle.pk, "stages-1-position": 20,
        "stages-1-environment": production.pk, "stages-1-auto_deploy": "on", "stages-1-requires_approval": "on",
        "stages-1-take_prereleases": "on",
        "_save": "Save",
    })
    assert response.status_code == 302, response.content.decode()[:3000]
    first.refresh_from_db()
    assert first.auto_deploy is False
    event = AuditEvent.objects.get(action="admin.change", object_type="pipelines.stage")
    assert event.details == {"of": "default", "values": {"auto_deploy": [True, False]}}


def stage_rows(lifecycle, **production_fields):
    """The inline's POST for the two stages of `lifecycle` (staging, production), as a browser sends it."""
    first, second = lifecycle.stages.order_by("position")
    rows = {
        "stages-TOTAL_FORMS": 2, "stages-INITIAL_FORMS": 2, "stages-MIN_NUM_FORMS": 0, "stages-MAX_NUM_FORMS": 1000,
        "stages-0-id": first.pk, "stages-0-lifecycle": lifecycle.pk, "stages-0-position": 10,
        "stages-0-environment": first.environment_id, "stages-0-auto_deploy": "on", "stages-0-take_prereleases": "on",
        "stages-1-id": second.pk, "stages-1-lifecycle": lifecycle.pk, "stages-1-position": 20,
        "stages-1-environment": second.environment_id, "stages-1-auto_deploy": "on", "stages-1-requires_approval": "on",
    }
    rows.update({f"stages-1-{name}": value for name, value in production_fields.items()})
    return rows


def test_a_stages_version_rules_are_set_inline_checked_and_on_record(client, alice, environments):
    from pipelines.models import Lifecycle, Stage

    lifecycle = Lifecycle.objects.get(name="default")
    client.force_login(alice)
    url = reverse("admin:pipelines_lifecycle_change", args=[lifecycle.pk])

    refused = client.post(url, {"name": "default", "description": "", "_save": "Save",
                                **stage_rows(lifecycle, version_constraint="2.x")})

    assert refused.status_code == 200
    assert ("&#x27;2.x&#x27; is not a version constraint: write PEP 440 specifiers separated by commas, such as "
            "&gt;=2,&lt;3 or ~=1.4.") in refused.content.decode()
    assert not AuditEvent.objects.filter(action="admin.change").exists()

    saved = client.post(url, {"name": "default", "description": "", "_save": "Save",
                              **stage_rows(lifecycle, version_constraint=" >=2,<3 ")})

    assert saved.status_code == 302, saved.content.decode()[:3000]
    production = Stage.objects.get(lifecycle=lifecycle, environment__name="production")
    assert (production.take_prereleases, production.version_constraint) == (False, ">=2,<3")
    event = AuditEvent.objects.get(action="admin.change", object_type="pipelines.stage")
    assert event.details == {"of": "default", "values": {"take_prereleases": [True, False],
                                                         "version_constraint": ["", ">=2,<3"]}}
    listed = client.get(reverse("admin:pipelines_lifecycle_changelist")).content.decode()
    assert "staging → production (approval) (no pre-releases · &gt;=2,&lt;3)" in listed


# --- poll now --------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_poll_now_asks_a_worker_to_poll_each_selected_repository(client, alice, origin, repository, tmp_path, run_workers):
    origin.tag("v1.0.0")
    missing = Repository.objects.create(name="missing", url=str(tmp_path / "no-such-repository"))
    client.force_login(alice)
    response = client.post(reverse("admin:pipelines_repository_changelist"), {
        "action": "poll_now", ACTION_CHECKBOX_NAME: [repository.pk, missing.pk],
    }, follow=True)
    assert "Polling missing, shop now; new releases show on the repository page." in response.content.decode()
    assert not Release.objects.exists(), "no git in the web request"
    assert set(Repository.objects.values_list("poll_requested_at", flat=True)) != {None}
    assert AuditEvent.objects.filter(action="repository.poll_requested", actor=alice).count() == 2

    run_workers()

    assert Release.objects.filter(repository=repository, version="v1.0.0").exists()
    missing.refresh_from_db()
    assert missing.last_error


# --- read-only records -----------------------------------------------------------------------------


@pytest.fixture
def deployment(repository, staging):
    release = Release.objects.create(
        repository=repository, version="v1", commit_sha=hashlib.sha1(b"v1").hexdigest(), pipeline_text=PIPELINE
    )
    return Deployment.objects.create(
        release=release, environment=staging, repository=repository, status=Deployment.Status.SUCCEEDED,
        trigger=Deployment.Trigger.MANUAL,
    )


@pytest.mark.parametrize("model", ["release", "deployment", "auditevent", "externalcheck"])
def test_recorded_history_is_read_only(client, alice, deployment, model):
    from pipelines.models import ExternalCheck

    AuditEvent.objects.record(action="test.event", actor=alice)
    reported, _ = ExternalCheck.objects.report(deployment.repository, commit_sha=deployment.release.commit_sha,
                                               name="ci/tests", state="success", by=alice)
    obj = {"release": deployment.release, "deployment": deployment,
           "auditevent": AuditEvent.objects.get(action="test.event"), "externalcheck": reported}[model]
    client.force_login(alice)
    assert client.get(reverse(f"admin:pipelines_{model}_changelist")).status_code == 200
    change_page = client.get(reverse(f"admin:pipelines_{model}_change", args=[obj.pk]))
    assert change_page.status_code == 200
    assert 'name="_save"' not in change_page.content.decode()
    assert client.get(reverse(f"admin:pipelines_{model}_add")).status_code == 403
    assert client.post(reverse(f"admin:pipelines_{model}_delete", args=[obj.pk]), {"post": "yes"}).status_code == 403


def test_the_deployment_admin_links_to_its_page(client, alice, deployment):
    client.force_login(alice)
    html = client.get(reverse("admin:pipelines_deployment_change", args=[deployment.pk])).content.decode()
    assert f'href="{reverse("deployment_detail", args=[deployment.pk])}"' in html


def test_a_target_can_only_be_paused_and_resumed(client, alice, repository, staging):
    target = Target.objects.create(repository=repository, environment=staging)
    url = reverse("admin:pipelines_target_change", args=[target.pk])
    client.force_login(alice)
    html = client.get(url).content.decode()
    assert 'name="auto_deploy_paused"' in html and 'name="paused_reason"' in html
    assert 'name="current_release"' not in html and 'name="repository"' not in html
    assert client.get(reverse("admin:pipelines_target_add")).status_code == 403

    response = client.post(url, {"auto_deploy_paused": "on", "paused_reason": "", "_save": "Save"})
    assert response.status_code == 200 and "Give a reason" in response.content.decode()

    client.post(url, {"auto_deploy_paused": "on", "paused_reason": "freeze", "_save": "Save"})
    target.refresh_from_db()
    assert target.auto_deploy_paused and target.paused_by == alice and target.paused_at is not None
    assert AuditEvent.objects.filter(action="target.paused", actor=alice).exists()
    assert AuditEvent.objects.filter(action="admin.change", object_id=str(target.pk)).exists()

    client.post(url, {"paused_reason": "", "_save": "Save"})
    target.refresh_from_db()
    assert not target.auto_deploy_paused and target.paused_by is None


def test_signed_in_users_without_staff_cannot_open_the_admin(client, charlie):
    client.force_login(charlie)
    response = client.get(reverse("admin:index"))
    assert response.status_code == 302 and "/admin/login/" in response.url


def test_change_requests_are_read_only_in_the_admin(client, alice):
    client.force_login(alice)
    assert client.get("/admin/approvals/changerequest/").status_code == 200
    assert client.get("/admin/approvals/changerequest/add/").status_code == 403


def test_a_policy_change_in_the_admin_records_the_old_and_new_values(client, alice, production):
    from tests.conftest import stage_of

    policy = stage_of(production).approval_policy
    client.force_login(alice)
    url = f"/admin/approvals/stagepolicy/{policy.pk}/change/"
    form = {"stage": policy.stage_id, "required_approvals": 2, "approver_group": policy.approver_group_id,
            "block_commit_authors": "on", "approval_timeout": ""}
    response = client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    event = AuditEvent.objects.filter(action="admin.change").latest("seq")
    assert event.details["values"] == {"required_approvals": [1, 2]}


def test_adding_someone_to_an_approver_group_is_audited(client, alice, charlie, approvers):
    client.force_login(alice)
    form = {"username": "charlie", "email": "charlie@example.com", "is_active": "on", "groups": [approvers.pk],
            "date_joined_0": "2026-11-01", "date_joined_1": "10:00:00", "last_login_0": "", "last_login_1": ""}
    response = client.post(f"/admin/auth/user/{charlie.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:3000]
    event = AuditEvent.objects.filter(action="admin.change").latest("seq")
    assert event.details["values"]["groups"] == [[], ["approvers"]]


def test_only_allow_listed_fields_are_recorded_with_their_values(client, alice, signed_repository, monkeypatch):
    """A field the allow-list does not name is recorded by name only, whatever it holds."""
    from pipelines.admin import RepositoryAdmin

    monkeypatch.setattr(RepositoryAdmin, "audited_fields", ["branch"])
    client.force_login(alice)
    client.post(change_url(signed_repository), repository_form(signed_repository, branch="release", tag_pattern="rel-*"))
    event = AuditEvent.objects.get(action="admin.change")
    assert event.details["values"] == {"branch": ["main", "release"]}
    assert event.details["change"] == [{"changed": {"fields": ["Branch", "Tag pattern"]}}]


def test_a_user_password_change_is_recorded_by_name_only(client, alice, charlie):
    client.force_login(alice)
    response = client.post(f"/admin/auth/user/{charlie.pk}/password/",
                           {"password1": "N3w-pass-phrase!", "password2": "N3w-pass-phrase!", "usable_password": "true"})
    assert response.status_code == 302, response.content.decode()[:2000]
    event = AuditEvent.objects.filter(action="admin.change").latest("seq")
    assert "N3w-pass-phrase!" not in event.canonical_json()
    assert "pbkdf2" not in event.canonical_json()


def test_a_check_secret_is_set_in_the_repository_admin_encrypted_and_never_shown_again(client, alice, repository, settings):
    from pipelines.models import RepositorySecret
    from tests.conftest import new_secrets_key

    settings.GITOPS_SECRETS_KEYS = [new_secrets_key()]
    client.force_login(alice)
    value = "registry-token-9c2d7be1"
    response = client.post(change_url(repository), repository_form(repository, **{
        "check_secrets-TOTAL_FORMS": 1, "check_secrets-0-name": "REGISTRY_TOKEN", "check_secrets-0-value": value,
        "check_secrets-0-repository": repository.pk, "check_branches": "feature/* fix-*"}))
    assert response.status_code == 302, response.content.decode()[:2000]
    secret = RepositorySecret.objects.get(repository=repository)
    assert secret.name == "REGISTRY_TOKEN" and value not in secret.ciphertext
    assert RepositorySecret.objects.values_for(repository) == {"REGISTRY_TOKEN": value}
    assert Repository.objects.get(pk=repository.pk).check_branches == "feature/* fix-*"
    page = client.get(change_url(repository)).content.decode()
    assert "REGISTRY_TOKEN" in page and value not in page
    event = AuditEvent.objects.filter(action="admin.change").latest("id")
    assert event.details["values"]["secrets"] == {"REGISTRY_TOKEN": "set"} and value not in event.canonical_json()


def test_a_branch_glob_that_git_would_misread_is_refused(client, alice, repository):
    client.force_login(alice)
    response = client.post(change_url(repository), repository_form(repository, check_branches="feature/* --all"))
    assert response.status_code == 200
    assert "is not a branch glob" in response.content.decode()


# --- archive instead of delete -----------------------------------------------------------------------


def test_delete_explains_archiving_and_archives_keeping_the_history_then_restores(client, alice, repository):
    release = Release.objects.create(repository=repository, version="v1.0.0", commit_sha="a" * 40, pipeline_text=PIPELINE)
    client.force_login(alice)
    delete_url = reverse("admin:pipelines_repository_delete", args=[repository.pk])

    assert f'href="{delete_url}" class="deletelink">Archive…</a>' in client.get(change_url(repository)).content.decode()
    page = client.get(delete_url).content.decode()
    assert "A repository is not deleted" in page and 'value="Archive shop"' in page
    assert 'href="' + change_url(repository) + '"' in page  # a way back, not a dead end

    response = client.post(delete_url, {})
    assert response.status_code == 302 and response.url == change_url(repository)
    repository.refresh_from_db()
    assert repository.is_archived and Release.objects.filter(pk=release.pk).exists()
    assert list(Repository.objects.visible()) == [] and Repository.objects.due_for_poll() == []
    assert AuditEvent.objects.filter(action="repository.archived", actor=alice, repository=repository).count() == 1
    change_page = client.get(change_url(repository)).content.decode()
    assert "is archived" in change_page and f'href="{delete_url}" class="deletelink">Restore…</a>' in change_page

    assert 'value="Restore shop"' in client.get(delete_url).content.decode()
    client.post(delete_url, {"restore": "1"})
    repository.refresh_from_db()
    assert not repository.is_archived and list(Repository.objects.visible()) == [repository]
    assert AuditEvent.objects.filter(action="repository.restored", actor=alice, repository=repository).count() == 1


def test_archiving_twice_records_it_once(alice, repository):
    assert repository.archive(by=alice) is True
    assert Repository.objects.get(pk=repository.pk).archive(by=alice) is False
    assert AuditEvent.objects.filter(action="repository.archived").count() == 1


def test_the_repository_list_offers_archive_and_restore_but_no_bulk_delete(client, alice, repository):
    client.force_login(alice)
    changelist = reverse("admin:pipelines_repository_changelist")
    html = client.get(changelist).content.decode()
    assert 'value="archive"' in html and 'value="restore"' in html and 'value="delete_selected"' not in html

    client.post(changelist, {"action": "archive", ACTION_CHECKBOX_NAME: [repository.pk]})
    assert Repository.objects.get(pk=repository.pk).is_archived
    assert change_url(repository) not in client.get(changelist, {"archived": "no"}).content.decode()
    assert change_url(repository) in client.get(changelist, {"archived": "yes"}).content.decode()


# --- the admin checks a repository against its remote ---------------------------------------------------


def add_repository(client, **fields):
    data = {
        "name": "shop", "url": "", "web_url": "", "enabled": "on", "branch": "main", "release_from": "tags",
        "tag_pattern": "v*", "pipeline_path": ".gitops.yml", "poll_interval": 60, "webhook_secret": "",
        "lifecycle": default_lifecycle_id(), "_save": "Save", **CHECK_SECRETS_NONE, **fields,
    }
    return client.post(reverse("admin:pipelines_repository_add"), data, follow=True)


def test_saving_lists_the_remote_and_says_how_many_tags_match(client, alice, origin):
    origin.tag("v1.0.0")
    origin.tag("v1.1.0")
    origin.tag("nightly")
    client.force_login(alice)

    html = add_repository(client, url=origin.url).content.decode()

    assert Repository.objects.filter(name="shop").exists()
    assert "Connected; the branch &#x27;main&#x27; exists." in html
    assert "2 of the remote&#x27;s 3 tags match &#x27;v*&#x27;." in html


@pytest.mark.parametrize("fields, says", [
    ({"url": "/nonexistent/repository"}, "Cannot reach repository /nonexistent/repository"),
    ({"url": "https://no-such-host.invalid/shop.git"}, "Cannot reach repository https://no-such-host.invalid/shop.git"),
    ({"branch": "trunk", "release_from": "commits"}, "The remote has no branch &#x27;trunk&#x27; (it has: main)."),
])
def test_a_setup_that_cannot_work_is_refused_with_the_reason(client, alice, origin, fields, says):
    client.force_login(alice)
    html = add_repository(client, **{"url": origin.url, **fields}).content.decode()
    assert says in html and "Save even if the check fails" in html
    assert not Repository.objects.exists()


def test_save_anyway_keeps_a_repository_whose_host_is_down_with_a_warning(client, alice, db):
    client.force_login(alice)
    html = add_repository(client, url="/nonexistent/repository", save_anyway="on").content.decode()
    assert Repository.objects.filter(name="shop").exists()
    assert "Saved although the check failed: Cannot reach repository /nonexistent/repository" in html


def test_a_glob_that_never_closes_its_bracket_is_refused(client, alice, origin):
    client.force_login(alice)
    html = add_repository(client, url=origin.url, tag_pattern="v[0-9").content.decode()
    assert "&#x27;v[0-9&#x27; opens a &#x27;[&#x27; that no &#x27;]&#x27; closes" in html
    assert not Repository.objects.exists()


def test_no_matching_tag_and_a_url_registered_twice_are_warned_about(client, alice, origin, repository):
    client.force_login(alice)
    html = add_repository(client, name="shop-again", url=origin.url, tag_pattern="release-*").content.decode()
    assert Repository.objects.filter(name="shop-again").exists()
    assert "The same git URL is registered as shop" in html
    assert "0 of the remote&#x27;s 0 tags match &#x27;release-*&#x27;. No release appears" in html


def test_an_unchanged_remote_is_not_asked_again(client, alice, repository):
    # Renaming nothing about the remote (here: the poll interval) saves without a network call, even if the
    # remote is gone now.
    Repository.objects.filter(pk=repository.pk).update(url="/gone/now")
    repository.refresh_from_db()
    client.force_login(alice)
    response = client.post(change_url(repository), repository_form(repository, poll_interval=90))
    assert response.status_code == 302


def test_labels_read_as_words(client, alice, repository):
    client.force_login(alice)
    html = client.get(change_url(repository)).content.decode()
    assert ">Git URL:<" in html and ">Web page:<" in html and ">Url:<" not in html and ">Web url:<" not in html


def test_internals_are_listed_for_superusers_only(client, alice, django_user_model):
    from django.contrib.auth.models import Permission

    staff = django_user_model.objects.create_user("sam", "sam@example.com", "password", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(content_type__app_label__in=["pipelines", "django_rq"]))
    client.force_login(staff)
    index = client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:pipelines_repository_changelist") in index
    assert reverse("admin:pipelines_target_changelist") not in index and "django_rq" not in index

    client.force_login(alice)
    index = client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:pipelines_target_changelist") in index and "django_rq" in index
