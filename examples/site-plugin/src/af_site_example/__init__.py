"""A sample site plugin for jupyterhub-af (installed by the test command, used by tests)."""
