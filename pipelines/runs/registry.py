"""The kinds of run. A kind is one model (a FencedRun), the queue that wakes its worker, and what its run does;
everything that handles runs in general (the jobs, the worker, the reconciler, cancel, the pages) iterates
this registry, so a new kind is one model, one kind and one migration."""

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Kind:
    """What the kernel needs to know of a kind of run.

    - `name`: the model's name (`deployment`), the prefix of its job ids and of its audit actions.
    - `model`: the FencedRun subclass whose rows are the runs.
    - `queue`: the rq queue whose workers run it.
    - `execute(context)`: the run itself, once claimed, under its heartbeat (kernel.Context): prepare, run the
      steps through `context.steps`, record the outcome through `context.succeed` / `fail` / `cancel`.
    - `related`: what to load with the row (select_related), for `execute` and the reconciler.
    - `log_secrets(run)`: what to mask in its log from the first line.
    - `may_start(run)`: called before the claim, False to leave the run queued (a freeze holds it) or because
      `may_start` settled it (a preview whose deployment stopped waiting).
    - `step_noun`: how its failure messages name a step ("Build step 'compile' exited with status 2.")."""

    name: str
    model: type
    queue: str
    execute: Callable
    related: tuple = ()
    log_secrets: Callable = field(default=lambda run: set())
    may_start: Callable = field(default=lambda run: True)
    step_noun: str = "Step"

    def job_id(self, run_id):
        return f"{self.name}-{run_id}"

    def rows(self):
        """The runs of this kind with what their runner and the reconciler read of them."""
        rows = self.model.objects.all()
        return rows.select_related(*self.related) if self.related else rows


_kinds = {}


def register(kind):
    """Add a kind (from its AppConfig.ready); registering the same name again replaces it."""
    _kinds[kind.name] = kind
    return kind


def unregister(name):
    _kinds.pop(name, None)


def kinds():
    return list(_kinds.values())


def get(name):
    try:
        return _kinds[name]
    except KeyError:
        raise LookupError(f"No kind of run is named {name!r}; the kinds are {', '.join(sorted(_kinds))}.") from None


def of(run):
    """The kind of a run (a model instance)."""
    return get(run._meta.model_name)


def for_job_id(job_id):
    """(kind, run id) of an rq job id such as "build-12", or None when it names no run."""
    name, _, number = (job_id or "").rpartition("-")
    if name in _kinds and number.isdigit():
        return _kinds[name], int(number)
    return None
