"""Reading a repository's URL without git: which host and project it names.

Infrastructure (docs/architecture.md, "Layers"): the models use it (Repository.git_host_address, for commit
statuses), so it imports nothing of the portal, and not GitPython either (pipelines/git.py does)."""

from urllib.parse import urlsplit


def host_and_path(url):
    """(host name, project path without .git) of a git URL in its https, ssh:// or scp-like (git@host:path)
    form; ("", "") for a local path."""
    url = (url or "").strip()
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme == "file":
            return "", ""
        host, path = (parts.hostname or "").lower(), parts.path
    elif ":" in url and "/" not in url.split(":", 1)[0]:  # scp-like: [user@]host:path
        host, path = url.split(":", 1)
        host = host.rsplit("@", 1)[-1].lower()
    else:
        return "", ""
    path = path.strip("/")
    if path.endswith(".git"):
        path = path[:-4]
    return host, path
