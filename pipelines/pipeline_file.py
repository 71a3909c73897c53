"""Parse and validate `.gitops.yml`; every error names the line it is on.

    build:                      # optional: runs once per release, before the first environment
      variables: {ARCH: amd64}
      steps:
        - name: image
          run: ./build.sh       # writes key=value lines to $GITOPS_OUTPUTS, files to $GITOPS_ARTIFACTS/
    checks:                     # optional: runs for commits on branches and pull requests, deploys nowhere
      steps:
        - run: make test
    environments:
      staging:
        variables: {REGION: eu-west-1}
        steps:
          - name: apply
            run: ./deploy.sh
            timeout: 600
      production:
        preview:                # optional: runs when a stage that requires approval holds the deployment
          - name: plan
            run: terraform plan -out "$GITOPS_ARTIFACTS/plan"
        steps:
          - run: terraform apply "$GITOPS_ARTIFACTS/plan"
        verify:                 # optional: run after the steps succeed, with GITOPS_VERIFY=1; the deployment
          - name: smoke         # succeeds only once they pass
            run: ./smoke.sh
        drift:                  # optional: is what runs there still what git says? exit 0 in sync, 2 drifted
          - run: terraform plan -detailed-exitcode
"""

import re
from dataclasses import dataclass, field

import yaml
from django.conf import settings

DEFAULT_STEP_TIMEOUT = 1800
MAX_STEP_TIMEOUT = 24 * 3600
_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Set by the runner; a pipeline file may not override them.
RESERVED_VARIABLES = {"PATH", "HOME", "LANG"}
# A real pipeline file is a handful of levels deep; the YAML composer recurses once per level, so a file
# nested thousands deep would exhaust Python's stack. It is refused with a message instead.
MAX_NESTING = 50


def size_problem(text):
    """Why `text` is too large to be a pipeline file ("is 20,971,520 bytes, more than …"), or "".

    A real pipeline file is a few KiB; a huge one would be stored with every release and parsed and shown on
    its pages (20 MB: a 17 s release page). Over GITOPS_PIPELINE_FILE_MAX_BYTES it is refused: neither parsed nor stored."""
    limit = settings.GITOPS_PIPELINE_FILE_MAX_BYTES
    if len(text) <= limit // 4:  # at most 4 bytes a character: surely small enough, without encoding it
        return ""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size <= limit:
        return ""
    return f"is {size:,} bytes, more than the {limit:,} bytes a pipeline file may have (GITOPS_PIPELINE_FILE_MAX_BYTES)"


class PipelineFileError(ValueError):
    def __init__(self, message, line=None):
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


@dataclass(frozen=True)
class Step:
    name: str
    run: str
    timeout: int = DEFAULT_STEP_TIMEOUT


@dataclass(frozen=True)
class EnvironmentSpec:
    name: str
    steps: tuple[Step, ...]
    variables: dict = field(default_factory=dict)
    # Run when the deployment is held for approval; what they leave is what its steps apply. () when none.
    preview: tuple[Step, ...] = ()
    # Run after the steps succeed, in the same checkout and environment plus GITOPS_VERIFY=1. () when none.
    verify: tuple[Step, ...] = ()
    # Check the release running there against reality, in a checkout of it, with GITOPS_DRIFT=1: exit 0 in sync,
    # 2 drifted (as `terraform plan -detailed-exitcode`), anything else the check failed. () when none.
    drift: tuple[Step, ...] = ()

    @property
    def verify_from(self):
        """The number of the first verify step in the run's log (they are numbered after the steps), 0 when none."""
        return len(self.steps) + 1 if self.verify else 0


@dataclass(frozen=True)
class BuildSpec:
    """The `build:` section: the same steps and variables as an environment's, run once per release."""

    steps: tuple[Step, ...]
    variables: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineSpec:
    environments: dict  # name -> EnvironmentSpec, in file order
    build: BuildSpec | None = None
    # The `checks:` section: run for branches and pull requests, never with an environment's variables or secrets.
    checks: BuildSpec | None = None

    def names(self):
        return list(self.environments)


class _DepthLimitedLoader(yaml.SafeLoader):
    """SafeLoader that refuses nesting beyond MAX_NESTING before the composer's recursion gets deep."""

    def compose_node(self, parent, index):
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_NESTING:
                mark = self.peek_event().start_mark
                raise PipelineFileError(f"the file is nested too deeply (more than {MAX_NESTING} levels)", mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _line(node):
    return node.start_mark.line + 1


def _mapping(node, what):
    if not isinstance(node, yaml.MappingNode):
        raise PipelineFileError(f"{what} must be a mapping", _line(node))
    result = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise PipelineFileError(f"keys of {what} must be plain names", _line(key_node))
        if key_node.value in result:
            raise PipelineFileError(f"{what} names {key_node.value!r} twice", _line(key_node))
        result[key_node.value] = (key_node, value_node)
    return result


def _scalar(node, what):
    if not isinstance(node, yaml.ScalarNode):
        raise PipelineFileError(f"{what} must be a single value", _line(node))
    return node.value


def _reject_unknown(keys, allowed, what):
    for name, (key_node, _) in keys.items():
        if name not in allowed:
            raise PipelineFileError(f"unknown key {name!r} in {what} (allowed: {', '.join(sorted(allowed))})", _line(key_node))


def _parse_step(node, env_name, index):
    what = f"step {index} of {env_name!r}"
    keys = _mapping(node, what)
    _reject_unknown(keys, {"name", "run", "timeout"}, what)
    if "run" not in keys:
        raise PipelineFileError(f"{what} has no 'run' command", _line(node))
    run = _scalar(keys["run"][1], f"'run' of {what}").strip()
    if not run:
        raise PipelineFileError(f"'run' of {what} is empty", _line(keys["run"][1]))
    name = _scalar(keys["name"][1], f"'name' of {what}") if "name" in keys else f"step {index}"
    timeout = DEFAULT_STEP_TIMEOUT
    if "timeout" in keys:
        raw = _scalar(keys["timeout"][1], f"'timeout' of {what}")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_STEP_TIMEOUT:
            raise PipelineFileError(
                f"'timeout' of {what} must be a whole number of seconds from 1 to {MAX_STEP_TIMEOUT}", _line(keys["timeout"][1])
            )
        timeout = int(raw)
    return Step(name=name, run=run, timeout=timeout)


def _parse_steps(node, env_name, what):
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise PipelineFileError(f"{what} must be a non-empty list", _line(node))
    return tuple(_parse_step(step, env_name, i) for i, step in enumerate(node.value, start=1))


def _parse_environment(name, node, what=None, *, of_environment=True):
    what = what or f"environment {name!r}"
    keys = _mapping(node, what)
    _reject_unknown(keys, {"steps", "variables", "preview", "verify", "drift"} if of_environment else {"steps", "variables"},
                    what)
    variables = {}
    if "variables" in keys:
        for var, (key_node, value_node) in _mapping(keys["variables"][1], f"'variables' of {what}").items():
            if not _VARIABLE_NAME.match(var) or var in RESERVED_VARIABLES or var.startswith("GITOPS_"):
                raise PipelineFileError(f"{var!r} cannot be used as a variable name", _line(key_node))
            variables[var] = _scalar(value_node, f"variable {var!r}")
    if "steps" not in keys:
        raise PipelineFileError(f"{what} has no 'steps'", _line(node))
    steps = _parse_steps(keys["steps"][1], name, f"'steps' of {what}")
    preview, verify, drift = (
        _parse_steps(keys[section][1], f"{name} {section}", f"'{section}' of {what}") if section in keys else ()
        for section in ("preview", "verify", "drift"))
    return EnvironmentSpec(name=name, steps=steps, variables=variables, preview=preview, verify=verify, drift=drift)


def parse_pipeline(text, *, known_environments=None):
    """Return a PipelineSpec, or raise PipelineFileError with the line of the problem.

    With `known_environments`, an environment the portal does not have is an error too."""
    if problem := size_problem(text):
        raise PipelineFileError(f"the file {problem}")
    try:
        root = yaml.compose(text, Loader=_DepthLimitedLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PipelineFileError(f"not valid YAML: {problem}", mark.line + 1 if mark else None) from exc
    if root is None:
        raise PipelineFileError("the file is empty")
    keys = _mapping(root, "the file")
    _reject_unknown(keys, {"build", "checks", "environments"}, "the file")
    checks = None
    if "checks" in keys:
        section = _parse_environment("checks", keys["checks"][1], what="the 'checks' section", of_environment=False)
        checks = BuildSpec(steps=section.steps, variables=section.variables)
    if "environments" not in keys:
        raise PipelineFileError("the file has no 'environments'", _line(root))
    environments = {}
    for name, (key_node, value_node) in _mapping(keys["environments"][1], "'environments'").items():
        if known_environments is not None and name not in known_environments:
            known = ", ".join(sorted(known_environments)) or "none"
            raise PipelineFileError(f"unknown environment {name!r} (the portal has: {known})", _line(key_node))
        environments[name] = _parse_environment(name, value_node)
    if not environments:
        raise PipelineFileError("'environments' is empty", _line(keys["environments"][1]))
    build = None
    if "build" in keys:
        section = _parse_environment("build", keys["build"][1], what="the 'build' section", of_environment=False)
        build = BuildSpec(steps=section.steps, variables=section.variables)
    return PipelineSpec(environments=environments, build=build, checks=checks)
