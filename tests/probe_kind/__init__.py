"""A kind of run that exists only in tests: the proof that a new kind is one model, one kind and one migration.

Nothing in the portal knows of it; the run kernel claims, fences, cancels and reconciles it because it is in the
registry (tests/test_a_new_kind_of_run.py). Installed by gitops_portal/test_settings.py only."""
