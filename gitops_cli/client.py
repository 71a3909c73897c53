"""A small HTTP client of the portal's API (the standard library's urllib: the CLI needs nothing else).

The URL and the token come from GITOPS_URL and GITOPS_TOKEN, else from `url` and `token` in
~/.config/gitops/config.toml (or the file GITOPS_CONFIG names)."""

import json
import os
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

USER_AGENT = "gitops-cli/1"
MAX_RATE_LIMIT_WAIT = 60


class ApiError(Exception):
    """The API said no: `status` is the HTTP status, `code` and `detail` the error body."""

    def __init__(self, status, code, detail, body=None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.body = status, code, detail, body or {}


class ConfigError(Exception):
    pass


def config_path():
    return Path(os.environ.get("GITOPS_CONFIG") or Path.home() / ".config" / "gitops" / "config.toml")


def load_config(url=None, token=None):
    """(url, token): arguments first, then the environment, then the config file."""
    url = url or os.environ.get("GITOPS_URL")
    token = token or os.environ.get("GITOPS_TOKEN")
    if not (url and token):
        path = config_path()
        if path.exists():
            with path.open("rb") as file:
                stored = tomllib.load(file)
            url, token = url or stored.get("url"), token or stored.get("token")
    if not url:
        raise ConfigError("No portal URL: set GITOPS_URL (or `url` in the config file) or pass --url.")
    if not token:
        raise ConfigError("No API token: set GITOPS_TOKEN (or `token` in the config file) or pass --token.")
    return url.rstrip("/"), token


class Client:
    def __init__(self, url, token, timeout=30):
        self.base = url.rstrip("/") + "/api/v1"
        self.token, self.timeout = token, timeout

    def get(self, path, **params):
        query = {key: value for key, value in params.items() if value is not None}
        return self.request("GET", path + ("?" + urllib.parse.urlencode(query) if query else ""))

    def post(self, path, body=None):
        return self.request("POST", path, body or {})

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json", "User-Agent": USER_AGENT}
        if data is not None:
            headers["Content-Type"] = "application/json"
        waited = 0
        while True:
            request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read() or b"null")
            except urllib.error.HTTPError as exc:
                retry_after = int(exc.headers.get("Retry-After") or 0)
                if exc.code == 429 and waited + retry_after <= MAX_RATE_LIMIT_WAIT:
                    time.sleep(retry_after)  # the API's own back-off, bounded
                    waited += retry_after
                    continue
                raise _api_error(exc) from None
            except urllib.error.URLError as exc:
                raise ApiError(0, "unreachable", f"Cannot reach {self.base}: {exc.reason}") from None

    def iterate(self, path, limit=None, **params):
        """Every item of a cursor-paged list, newest first (at most `limit`)."""
        cursor, count = None, 0
        while True:
            page = self.get(path, cursor=cursor, **params)
            for item in page["items"]:
                yield item
                count += 1
                if limit is not None and count >= limit:
                    return
            cursor = page.get("next")
            if not cursor:
                return


def _api_error(exc):
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return ApiError(exc.code, body.get("error", "http_error"), body.get("detail", f"HTTP {exc.code} {exc.reason}"), body)
