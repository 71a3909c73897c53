"""The settings read from the environment, each case in a fresh interpreter with exactly the variables given."""

import json
import os
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

REPORT = """
import json
from gitops_portal import settings as s
db = s.DATABASES["default"]
print(json.dumps({
    "DEBUG": s.DEBUG, "SECRET_KEY": s.SECRET_KEY, "ALLOWED_HOSTS": s.ALLOWED_HOSTS,
    "ENGINE": db["ENGINE"], "NAME": str(db["NAME"]), "HOST": db.get("HOST"), "PORT": db.get("PORT"),
    "USER": db.get("USER"), "PASSWORD": db.get("PASSWORD"), "OPTIONS": db.get("OPTIONS", {}),
    "CONN_MAX_AGE": db.get("CONN_MAX_AGE"), "CONN_HEALTH_CHECKS": db.get("CONN_HEALTH_CHECKS"),
    "REDIS_URL": s.REDIS_URL, "QUEUE_URLS": sorted({q["URL"] for q in s.RQ_QUEUES.values()}),
    "GITOPS_DATA_DIR": str(s.GITOPS_DATA_DIR), "GITOPS_SECRETS_KEYS": s.GITOPS_SECRETS_KEYS,
}))
"""


def load_settings(tmp_path, **env):
    """Import the settings with only PATH, a data dir in tmp_path and `env` set; returns the completed process."""
    environment = {"PATH": os.environ["PATH"], "GITOPS_DATA_DIR": str(tmp_path / "data"), **env}
    return subprocess.run([sys.executable, "-c", REPORT], cwd=BASE_DIR, env=environment, capture_output=True, text=True, timeout=60)


def settings_with(tmp_path, **env):
    result = load_settings(tmp_path, **{"SECRET_KEY": "k" * 50, **env})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_secret_key_is_required_when_debug_is_off(tmp_path):
    result = load_settings(tmp_path)

    assert result.returncode != 0
    assert "django.core.exceptions.ImproperlyConfigured: SECRET_KEY must be set when DEBUG is off." in result.stderr


def test_an_empty_secret_key_counts_as_missing(tmp_path):
    result = load_settings(tmp_path, SECRET_KEY="", DEBUG="false")

    assert "SECRET_KEY must be set when DEBUG is off." in result.stderr


def test_debug_runs_without_a_secret_key(tmp_path):
    loaded = settings_with(tmp_path, SECRET_KEY="", DEBUG="1")

    assert loaded["DEBUG"] is True
    assert loaded["SECRET_KEY"]


def test_the_secret_key_is_taken_from_the_environment(tmp_path):
    loaded = settings_with(tmp_path, SECRET_KEY="s3cret-from-env")

    assert loaded["SECRET_KEY"] == "s3cret-from-env" and loaded["DEBUG"] is False


def test_default_database_is_sqlite_in_the_data_dir_with_wal(tmp_path):
    loaded = settings_with(tmp_path)

    data_dir = tmp_path / "data"
    assert loaded["GITOPS_DATA_DIR"] == str(data_dir) and data_dir.is_dir()
    assert loaded["ENGINE"] == "django.db.backends.sqlite3"
    assert loaded["NAME"] == str(data_dir / "portal.sqlite3")
    assert "PRAGMA journal_mode=WAL" in loaded["OPTIONS"]["init_command"]
    assert loaded["OPTIONS"]["timeout"] >= 5


def test_database_url_selects_postgresql(tmp_path):
    loaded = settings_with(tmp_path, DATABASE_URL="postgres://portal:pa%40ss@db.example.com:5433/gitops")

    assert loaded["ENGINE"] == "django.db.backends.postgresql"
    assert (loaded["NAME"], loaded["HOST"], loaded["PORT"], loaded["USER"], loaded["PASSWORD"]) == (
        "gitops", "db.example.com", 5433, "portal", "pa@ss"
    )
    assert "init_command" not in loaded["OPTIONS"]


def test_connections_are_kept_and_checked_before_reuse(tmp_path):
    loaded = settings_with(tmp_path, DATABASE_URL="postgres://portal@db.example.com/gitops")
    assert (loaded["CONN_MAX_AGE"], loaded["CONN_HEALTH_CHECKS"]) == (60, True)
    assert "server_side_binding" not in loaded["OPTIONS"]  # no prepared statements: see the settings
    assert settings_with(tmp_path)["CONN_MAX_AGE"] == 0  # the embedded SQLite file: nothing to keep


def test_default_redis_is_the_embedded_socket_in_the_data_dir(tmp_path):
    loaded = settings_with(tmp_path)

    expected = f"unix://{tmp_path / 'data' / 'redis' / 'redis.sock'}"
    assert loaded["REDIS_URL"] == expected
    assert loaded["QUEUE_URLS"] == [expected]


def test_the_embedded_redis_password_is_read_from_its_sealed_directory(tmp_path):
    directory = tmp_path / "data" / "redis"
    directory.mkdir(parents=True)
    (directory / "password").write_text("0123abcd\n")

    loaded = settings_with(tmp_path)

    assert loaded["REDIS_URL"] == f"unix://:0123abcd@{directory / 'redis.sock'}"
    assert loaded["QUEUE_URLS"] == [loaded["REDIS_URL"]]
    assert settings_with(tmp_path, REDIS_URL="redis://:pw@cache:6379/0")["REDIS_URL"] == "redis://:pw@cache:6379/0"


def test_the_data_directory_is_created_traversable_but_not_listable(tmp_path):
    import stat

    settings_with(tmp_path)

    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o711
    assert stat.S_IMODE((tmp_path / "data" / "redis").stat().st_mode) == 0o700


def test_redis_url_is_used_by_every_queue(tmp_path):
    loaded = settings_with(tmp_path, REDIS_URL="redis://cache.example.com:6380/2")

    assert loaded["QUEUE_URLS"] == ["redis://cache.example.com:6380/2"]


def test_allowed_hosts_are_a_comma_separated_list(tmp_path):
    assert settings_with(tmp_path, ALLOWED_HOSTS="portal.example.com, .internal.example.com")["ALLOWED_HOSTS"] == [
        "portal.example.com", ".internal.example.com"
    ]
    assert settings_with(tmp_path)["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1", "[::1]"]


def test_the_secrets_keys_are_taken_from_the_environment_first_one_first(tmp_path):
    loaded = settings_with(tmp_path, GITOPS_SECRETS_KEYS=" new-key , old-key,")

    assert loaded["GITOPS_SECRETS_KEYS"] == ["new-key", "old-key"]


def test_without_the_variable_the_secrets_keys_come_from_the_data_dirs_key_file(tmp_path):
    """The file `make run` generates, so that the embedded portal keeps its secrets readable across restarts."""
    assert settings_with(tmp_path)["GITOPS_SECRETS_KEYS"] == []
    (tmp_path / "data" / "secrets_keys").write_text("generated-key\n")

    assert settings_with(tmp_path)["GITOPS_SECRETS_KEYS"] == ["generated-key"]
    assert settings_with(tmp_path, GITOPS_SECRETS_KEYS="from-env")["GITOPS_SECRETS_KEYS"] == ["from-env"]
