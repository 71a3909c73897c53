"""How a model asks for work it cannot do itself, without importing the layers above it.

The models are the bottom of the portal's layers above infrastructure (docs/architecture.md): they import
nothing of the runs, the jobs or the services, not even inside a function. A model that needs a worker woken
or a commit status sent names the request (`wakeups.ask("enqueue_run", run)`); the layer that knows how to
do it installs the handler once, when the app is ready (`PipelinesConfig.ready`, approvals' `ready`). The
handlers defer their effect to the commit themselves (`transaction.on_commit`), so a rolled-back transaction
wakes nothing.

A request with no handler installed raises at once: a forgotten handler is a bug to see in the first test,
not a queue that silently never wakes."""

_handlers = {}


class NoHandler(LookupError):
    pass


def install(name, handler):
    """Make `handler` carry out the requests named `name` (a later install replaces an earlier one)."""
    _handlers[name] = handler


def ask(name, *args, **kwargs):
    """Carry out the request `name` with the installed handler; returns what the handler returns."""
    try:
        handler = _handlers[name]
    except KeyError:
        raise NoHandler(f"No handler is installed for {name!r}: the layer that carries it out installs one in "
                        f"its AppConfig.ready().") from None
    return handler(*args, **kwargs)
