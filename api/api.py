"""The REST API at /api/v1/: its OpenAPI schema at /api/v1/openapi.json, browsable at /api/v1/docs.

Every endpoint authenticates with a token (api/auth.py) and is checked against its rule in
api/permissions.py; errors are `{"error": code, "detail": words}` (api/errors.py)."""

from ninja import NinjaAPI

from api import errors
from api.auth import TokenAuth
from api.endpoints import audit, change_control, checks, insights, pipelines, runs

api = NinjaAPI(
    title="GitOps Portal API",
    version="1",
    description="Repositories, releases, deployments, checks, change control and delivery insights; any run (a "
                "deployment, build, preview or check) is cancelled at `POST /<kind>s/{id}/cancel`. Authenticate with "
                "`Authorization: Bearer <token>`; each endpoint needs one token scope (read, deploy, approve, "
                "checks:report). Lists page with an opaque `cursor`.",
    auth=TokenAuth(),
    urls_namespace="api",
    docs_url="/docs",
    openapi_url="/openapi.json",
)
errors.install(api)
api.add_router("", pipelines.router)
api.add_router("", change_control.router)
api.add_router("", checks.router)
api.add_router("", runs.router)
api.add_router("", insights.router)
api.add_router("", audit.router)
