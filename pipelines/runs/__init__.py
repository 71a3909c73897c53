"""The run kernel: how every kind of run (a deployment, a build, a preview, a check, and whatever comes next)
is claimed, fenced, logged, sandboxed, cancelled and recorded, in one place.

- `registry.py`: the kinds of run. A kind names its model, its queue and what its run does (`execute`);
  the jobs, the worker, the reconciler, the pages and cancel iterate the registry, never a list of their own.
- `kernel.py`: one run from its wake-up to its recorded outcome: load, claim by compare-and-swap, the
  heartbeat that holds the lease, the steps, the result and its audit event; database blips retried at
  every phase; rq's stop-job and the portal's cancel stop the step.
- `heartbeat.py` (the lease), `log.py` (the masked, buffered log writer), `steps.py` (one step in its
  sandbox and process group, and its environment), `process.py` (what a process running a run sets on
  itself), `blips.py` (riding out a database that drops for a while).
- `deploy.py`, `build.py`, `preview.py`, `check.py`: the four kinds.

Runs sit between the services (promotion, follow-ups, the reconciler) and the models: they import models and
infrastructure, never a service; what must happen after a run (the automatic promotion) is a follow-up row the
model records, carried out through the handler the services install (pipelines/models/wakeups.py)."""
