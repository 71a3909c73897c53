"""The `gitops` commands. Tables and progress for a terminal; `--json` for scripts (stdout holds only JSON).

Exit status: 0 success; 1 the portal could not be reached or failed; 2 usage, configuration, authentication
or not found; and for `promote --wait` / `logs --follow`: 3 refused, 4 rejected or cancelled, 5 failed,
6 timed out."""

import json
import sys
import time

import click

from gitops_cli.client import ApiError, Client, ConfigError, load_config

EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, EXIT_REFUSED, EXIT_REJECTED, EXIT_FAILED, EXIT_TIMED_OUT = 0, 1, 2, 3, 4, 5, 6
POLL_SECONDS = 1.0
OUTCOMES = {"succeeded": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_REJECTED, "rejected": EXIT_REJECTED}


def exit_code_of(error):
    if error.status == 0 or error.status >= 500:
        return EXIT_UNREACHABLE
    if error.status == 409 or error.code in ("refused", "api_approval_disabled", "service_account"):
        return EXIT_REFUSED
    return EXIT_USAGE


class Context:
    def __init__(self, url, token):
        self._url, self._token, self._client = url, token, None

    @property
    def api(self):
        if self._client is None:
            try:
                self._client = Client(*load_config(self._url, self._token))
            except ConfigError as exc:
                fail(str(exc), EXIT_USAGE)
        return self._client


def fail(message, code):
    click.echo(f"gitops: {message}", err=True)
    sys.exit(code)


def call(function, *args, **kwargs):
    """Run an API call; an API error ends the program with its words and exit status."""
    try:
        return function(*args, **kwargs)
    except ApiError as exc:
        raise_for(exc)


def raise_for(error):
    fail(f"{error.detail} ({error.code})" if error.status else error.detail, exit_code_of(error))


def emit_json(value):
    click.echo(json.dumps(value, indent=2, default=str))


def table(rows, headers):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(click.style(h.ljust(w), bold=True) for h, w in zip(headers, widths))
    click.echo(line)
    for row in rows:
        click.echo("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())


def colour(status):
    colours = {"succeeded": "green", "failed": "red", "running": "yellow", "queued": "cyan",
               "awaiting_approval": "magenta", "cancelled": "bright_black", "rejected": "red"}
    return click.style(status, fg=colours.get(status)) if status else "-"


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="GITOPS_URL", help="The portal, e.g. https://gitops.example.com (env GITOPS_URL).")
@click.option("--token", envvar="GITOPS_TOKEN", help="An API token (env GITOPS_TOKEN).")
@click.pass_context
def cli(ctx, url, token):
    """GitOps Portal from the command line: what runs where, releases, promotions, logs, approvals, checks."""
    ctx.obj = Context(url, token)


@cli.command()
@click.argument("repository", required=False)
@json_option
@click.pass_obj
def status(obj, repository, as_json):
    """What runs where: each repository (or REPOSITORY) in each stage of its lifecycle."""
    rows = call(obj.api.get, "/status", repository=repository)
    if as_json:
        return emit_json(rows)
    lines = []
    for repo in rows:
        for target in repo["targets"]:
            last = target["last_deployment"]
            lines.append((repo["name"], target["environment"], target["current_version"] or "-",
                          colour(last["status"]) if last else "-", f"#{last['id']} {last['version']}" if last else "-",
                          (target.get("sync_state") or "-").replace("_", " "), "paused" if target["paused"] else ""))
    table(lines, ["REPOSITORY", "ENVIRONMENT", "RUNNING", "LAST", "DEPLOYMENT", "SYNC", ""])


@cli.command("check-drift")
@click.argument("repository")
@click.argument("environment")
@json_option
@click.pass_obj
def check_drift(obj, repository, environment, as_json):
    """Check now that what runs for REPOSITORY in ENVIRONMENT is what git says (its drift: steps); `gitops status`
    shows the answer."""
    answer = call(obj.api.post, f"/repositories/{repository}/environments/{environment}/check-drift")
    if as_json:
        return emit_json(answer)
    click.echo(answer["detail"])


@cli.command()
@click.argument("repository")
@click.option("--limit", default=20, show_default=True, help="How many, newest first.")
@json_option
@click.pass_obj
def releases(obj, repository, limit, as_json):
    """The releases of REPOSITORY, newest first."""
    items = call(lambda: list(obj.api.iterate(f"/repositories/{repository}/releases", limit=limit)))
    if as_json:
        return emit_json(items)
    table([(r["version"], r["commit_sha"][:10], "blocked" if r["blocked"] else ("invalid" if r["error"] else "ok"),
            ",".join(r["environments"]), (r["message"] or "").splitlines()[0][:50] if r["message"] else "")
           for r in items], ["VERSION", "COMMIT", "STATE", "STAGES", "MESSAGE"])


def find_release(api, repository, version):
    page = call(api.get, f"/repositories/{repository}/releases", version=version)
    if not page["items"]:
        fail(f"{repository} has no release {version!r}.", EXIT_USAGE)
    return page["items"][0]


@cli.command()
@click.argument("repository")
@click.argument("version")
@click.argument("environment")
@click.option("--wait", is_flag=True, help="Wait for the deployment to finish, streaming its log.")
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds to wait with --wait.")
@click.option("--override-reason", default="", help="Skip a closed pre-production gate (needs the permission).")
@json_option
@click.pass_obj
def promote(obj, repository, version, environment, wait, timeout, override_reason, as_json):
    """Promote VERSION of REPOSITORY to ENVIRONMENT, through the pre-production gate.

    With --wait: exit 0 only when it succeeded; 3 refused, 4 rejected or cancelled, 5 failed, 6 timed out."""
    release = find_release(obj.api, repository, version)
    try:
        deployment = obj.api.post(f"/releases/{release['id']}/promote",
                                  {"environment": environment, "override_reason": override_reason})
    except ApiError as exc:
        if not (wait and exc.code == "already_on_its_way"):
            raise_for(exc)
        # What the caller waits for is this version there: follow the deployment already on its way (one that a
        # success before promoted automatically, say) rather than fail.
        click.echo(f"{exc.detail} Following it.", err=True)
        deployment = call(obj.api.get, f"/deployments/{exc.body['deployment']}")
    else:
        click.echo(f"{repository} {version} → {environment}: deployment #{deployment['id']} is {deployment['status']}.",
                   err=True)
    if not wait:
        return emit_json(deployment) if as_json else None
    final = follow(obj.api, deployment["id"], timeout, log_to_stderr=as_json)
    if as_json:
        emit_json(final)
    sys.exit(outcome(final))


def outcome(deployment):
    if deployment is None:
        return EXIT_TIMED_OUT
    return OUTCOMES.get(deployment["status"], EXIT_FAILED)


def follow(api, deployment_id, timeout, *, log_to_stderr=False):
    """Stream the log until the deployment finishes; returns it then, or None when `timeout` passed first."""
    deadline = time.monotonic() + timeout
    after, said_waiting = 0, False
    while True:
        chunk = call(api.get, f"/deployments/{deployment_id}/log", after=after)
        if chunk["text"]:
            click.echo(chunk["text"], nl=False, err=log_to_stderr)
        after = chunk["last_seq"]
        if chunk["is_finished"]:
            deployment = call(api.get, f"/deployments/{deployment_id}")
            message = f"Deployment #{deployment_id} {deployment['status']}"
            click.echo(message + (f": {deployment['error']}" if deployment["error"] else "."), err=True)
            return deployment
        if chunk["status"] == "awaiting_approval" and said_waiting is not True:
            # The change request opens a moment after the deployment is held (a follow-up does it).
            if not said_waiting:
                click.echo("Waiting for approval…", err=True)
                said_waiting = "said"
            change_request = call(api.get, f"/deployments/{deployment_id}")["change_request_id"]
            if change_request:
                click.echo(f"Change request #{change_request} is open: approve it in the portal, or with "
                           f"`gitops approve {change_request}` where its stage allows that.", err=True)
                said_waiting = True
        if time.monotonic() >= deadline:
            click.echo(f"Timed out after {timeout:g} s; deployment #{deployment_id} is {chunk['status']}.", err=True)
            return None
        time.sleep(POLL_SECONDS)


@cli.command()
@click.argument("deployment", type=int)
@click.option("--follow", "-f", "following", is_flag=True, help="Keep streaming until the deployment finishes.")
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds to follow at most.")
@click.pass_obj
def logs(obj, deployment, following, timeout):
    """The log of DEPLOYMENT (with --follow: its exit status is the deployment's outcome, as for promote --wait)."""
    if not following:
        chunk = call(obj.api.get, f"/deployments/{deployment}/log")
        click.echo(chunk["text"], nl=False)
        return
    sys.exit(outcome(follow(obj.api, deployment, timeout)))


def decide(obj, verdict, change_request, comment, as_json):
    result = call(obj.api.post, f"/change-requests/{change_request}/{verdict}", {"comment": comment})
    if as_json:
        return emit_json(result)
    click.echo(f"Change request #{change_request} ({result['repository']} {result['version']} → "
               f"{result['environment']}) is {result['status']}.")


@cli.command()
@click.argument("change_request", type=int)
@click.option("-m", "--message", "comment", default="", help="Your comment.")
@json_option
@click.pass_obj
def approve(obj, change_request, comment, as_json):
    """Approve CHANGE_REQUEST (where its stage allows decisions through the API)."""
    decide(obj, "approve", change_request, comment, as_json)


@cli.command()
@click.argument("change_request", type=int)
@click.option("-m", "--message", "comment", required=True, help="Why (required).")
@json_option
@click.pass_obj
def reject(obj, change_request, comment, as_json):
    """Reject CHANGE_REQUEST, saying why."""
    decide(obj, "reject", change_request, comment, as_json)


@cli.group()
def deployment():
    """Deployments: cancel one (promote, logs and the top-level commands do the rest)."""


@cli.group()
def build():
    """Builds of releases: cancel one."""


@cli.group()
def preview():
    """Previews of deployments held for approval: cancel one."""


@cli.group()
def check():
    """Checks of commits: report CI's results so that they count like the portal's own; cancel the portal's."""


def add_cancel(group, kind):
    """`gitops <kind> cancel ID`, for every kind of run alike (`POST /<kind>s/{id}/cancel`)."""

    @group.command("cancel", help=f"Cancel {kind} ID: one not started yet is cancelled; a running one's runner is "
                                  f"asked to stop its step (it stops within seconds). Exit 3 when it has finished "
                                  f"or a cancel was asked for already. Needs a token with the deploy scope.")
    @click.argument("run_id", metavar="ID", type=int)
    @json_option
    @click.pass_obj
    def cancel(obj, run_id, as_json):
        run = call(obj.api.post, f"/{kind}s/{run_id}/cancel")
        if as_json:
            return emit_json(run)
        if run["status"] == "cancelled":
            click.echo(f"{kind.capitalize()} #{run_id} is {colour('cancelled')}.")
        else:
            click.echo(f"Asked the runner to stop {kind} #{run_id}; it is {colour(run['status'])} until its step has "
                       f"stopped.")

    return cancel


for _group in (deployment, build, preview, check):
    add_cancel(_group, _group.name)


@check.command("report")
@click.argument("repository")
@click.argument("sha")
@click.argument("name")
@click.option("--state", required=True, type=click.Choice(["pending", "success", "failure", "error"]),
              help="The result, as the git hosts say it.")
@click.option("--url", "target_url", default="", help="The CI job's page.")
@click.option("--description", default="", help="A line about the result.")
@json_option
@click.pass_obj
def check_report(obj, repository, sha, name, state, target_url, description, as_json):
    """Report the check NAME of commit SHA of REPOSITORY (a later report of the same NAME by the same token's
    owner replaces it; another reporter's result of that NAME stays). The owner needs pipelines.report_checks.

    A stage that requires passing checks takes a release only when every check of its commit passed."""
    result = call(obj.api.post, f"/repositories/{repository}/commits/{sha}/checks",
                  {"name": name, "state": state, "url": target_url, "description": description})
    if as_json:
        return emit_json(result)
    click.echo(f"{repository} {sha[:10]}: {result['name']} is {result['state']}.")
