"""Errors of the authenticator: user-facing login refusals and configuration problems."""

from __future__ import annotations

from afspawner.validation import ConfigIssue  # one key-path error type for both packages

__all__ = ["AuthFailure", "ConfigError", "ConfigIssue"]


class AuthFailure(Exception):
    """A login or refresh is refused.

    ``message`` is shown to the person signing in, so it says what happened and what to do;
    it never contains a token or a password. ``detail`` goes to the hub log only (also
    free of secrets). ``status`` is the HTTP status of the error page.
    """

    def __init__(self, message: str, *, detail: str = "", status: int = 403) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.status = status


class ConfigError(ValueError):
    """The authenticator configuration is invalid; ``issues`` lists every problem."""

    def __init__(self, issues: list[ConfigIssue], source: str = "AFAuthenticator") -> None:
        self.issues = issues
        lines = "\n".join(f"  - {issue}" for issue in issues)
        super().__init__(f"{source} configuration has {len(issues)} error(s):\n{lines}")


def join_path(prefix: str, key: str | int) -> str:
    """``idps[2]`` + ``client_id`` → ``idps[2].client_id``; ints become ``[n]``."""
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key
