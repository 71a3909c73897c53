"""The published OpenAPI schema is valid OpenAPI, says how to authenticate, and is browsable without a CDN."""

from pathlib import Path

from openapi_spec_validator import validate

README = Path(__file__).resolve().parent.parent / "README.md"


def test_it_publishes_a_schema_that_an_openapi_validator_accepts(client, db):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    validate(schema)  # raises on any violation of the OpenAPI 3.1 specification
    assert "/api/v1/releases/{pk}/promote" in schema["paths"]
    assert "/api/v1/deployments/{pk}/log" in schema["paths"]
    promote = schema["paths"]["/api/v1/releases/{pk}/promote"]["post"]
    assert promote["security"] == [{"TokenAuth": []}]
    assert schema["components"]["securitySchemes"]["TokenAuth"] == {"type": "http", "scheme": "bearer"}


def test_its_docs_page_serves_swagger_from_the_portal_itself(client, db):
    response = client.get("/api/v1/docs")
    assert response.status_code == 200
    page = response.content.decode()
    assert "/static/ninja/swagger-ui-bundle.js" in page
    assert "cdn" not in page.lower()
    assert "/api/v1/openapi.json" in page


def test_the_readme_links_the_docs_page():
    assert "/api/v1/docs" in README.read_text()
