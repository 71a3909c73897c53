"""How a deploy step's command line is wrapped before it starts (see pipelines/runner.py)."""


def wrap(argv, *, account=None):
    """The command that runs `argv` as a step; today unchanged."""
    return list(argv)
