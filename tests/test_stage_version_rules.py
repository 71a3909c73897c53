"""Which versions a stage takes: pre-releases or not, and a PEP 440 constraint. The rules hold for automatic
promotion; a person may still deploy by hand, warned. A release a rule skips says why, on its page and in
the audit log."""

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from api.models import Scope
from pipelines import promotion
from pipelines.models import AuditEvent, Deployment
from tests.conftest import bearer, set_stage, stage_of

pytestmark = pytest.mark.django_db


def succeeded(deployment):
    deployment.claim(worker_name="test")
    deployment.succeed()
    return deployment


def skip_reasons(release):
    return list(AuditEvent.objects.filter(action="promotion.skipped", object_type="pipelines.release",
                                          object_id=str(release.pk)).values_list("details__reason", flat=True))


def release_page(client, release):
    return client.get(reverse("release_detail", args=[release.repository.name, release.version])).content.decode()


def test_a_stage_that_refuses_pre_releases_does_not_take_one_and_says_why(client, alice, repository, staging,
                                                                           production, make_release):
    set_stage(production, take_prereleases=False)
    candidate = make_release(repository, "v2.0.0rc1")

    on_staging = succeeded(promotion.on_release_recorded(candidate))

    assert promotion.on_deployment_succeeded(on_staging) is None
    assert not Deployment.objects.filter(environment=production).exists()
    assert skip_reasons(candidate) == ["not taken by production: pre-release"]
    client.force_login(alice)
    assert "not taken by production: pre-release" in release_page(client, candidate)


def test_a_stage_that_refuses_pre_releases_takes_finals_and_post_releases(repository, staging, production,
                                                                          make_release):
    set_stage(production, take_prereleases=False)
    for version in ["v2.0.0", "v2.0.0.post1"]:
        on_staging = succeeded(promotion.on_release_recorded(make_release(repository, version)))
        assert promotion.on_deployment_succeeded(on_staging).environment == production


def test_a_development_release_is_a_pre_release(repository, staging, make_release):
    set_stage(staging, take_prereleases=False)
    release = make_release(repository, "v2.0.0.dev3")
    assert promotion.on_release_recorded(release) is None
    assert skip_reasons(release) == ["not taken by staging: pre-release"]


def test_a_constraint_refuses_versions_outside_it_automatically(client, alice, repository, staging, make_release):
    set_stage(staging, version_constraint=">=2,<3")
    outside = make_release(repository, "v3.0.0")

    assert promotion.on_release_recorded(outside) is None
    assert skip_reasons(outside) == ["not taken by staging: v3.0.0 is outside >=2,<3"]
    client.force_login(alice)
    assert "not taken by staging: v3.0.0 is outside &gt;=2,&lt;3" in release_page(client, outside)

    inside = make_release(repository, "v2.5.0")
    assert promotion.on_release_recorded(inside).environment == staging
    assert skip_reasons(inside) == []


def test_a_constraint_never_takes_a_tag_that_is_no_version(repository, staging, make_release):
    set_stage(staging, version_constraint=">=0")
    nightly = make_release(repository, "nightly-x")
    assert promotion.on_release_recorded(nightly) is None
    assert skip_reasons(nightly) == ["not taken by staging: nightly-x is not a version, so it cannot meet >=0"]


def test_a_constraint_takes_pre_releases_inside_it_when_the_stage_takes_pre_releases(repository, staging, make_release):
    set_stage(staging, version_constraint=">=2,<3")
    assert promotion.on_release_recorded(make_release(repository, "v2.1.0rc1")).environment == staging
    # "<3" keeps out 3.0's own pre-releases (PEP 440).
    assert promotion.on_release_recorded(make_release(repository, "v3.0.0rc1")) is None


def test_a_person_may_deploy_what_the_rule_refuses_and_the_page_warns_first(client, alice, repository, staging,
                                                                            make_release):
    set_stage(staging, take_prereleases=False)
    candidate = make_release(repository, "v2.0.0b1")
    client.force_login(alice)

    page = release_page(client, candidate)

    assert "not taken by staging: pre-release" in page
    assert ('data-confirm="Deploy v2.0.0b1 to staging? Automatic promotion skips it (not taken by staging: '
            'pre-release).') in page
    deployment = promotion.promote(candidate, staging, by=alice)
    assert deployment.status == Deployment.Status.QUEUED


def test_a_constraint_that_is_no_pep_440_specifier_is_refused_with_a_clear_message(staging):
    stage = stage_of(staging)
    stage.version_constraint = ">= two"
    with pytest.raises(ValidationError) as refused:
        stage.full_clean()
    assert refused.value.message_dict["version_constraint"] == [
        "'>= two' is not a version constraint: write PEP 440 specifiers separated by commas, such as >=2,<3 or ~=1.4."]
    stage.version_constraint = ">=2, <3"
    stage.full_clean()


def test_the_dashboard_heading_shows_which_versions_a_stage_takes(client, alice, repository, staging, production):
    set_stage(production, take_prereleases=False, version_constraint=">=2,<3")
    client.force_login(alice)
    html = client.get(reverse("dashboard")).content.decode()
    assert "<th>staging</th>" in html
    assert ('<span class="tag" title="Which versions this stage takes automatically">no pre-releases · '
            '&gt;=2,&lt;3</span>') in html


def test_the_api_says_which_versions_each_stage_takes(client, alice, make_token, staging, production):
    set_stage(production, take_prereleases=False, version_constraint=">=2,<3")
    [lifecycle] = client.get("/api/v1/lifecycles", **bearer(make_token(alice, Scope.READ))).json()
    assert [(s["environment"], s["take_prereleases"], s["version_constraint"]) for s in lifecycle["stages"]] == [
        ("staging", True, ""), ("production", False, ">=2,<3")]
