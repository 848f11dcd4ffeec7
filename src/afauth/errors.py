"""User-facing login refusals.

Configuration problems use :class:`afcore.issues.ConfigError` like the rest of the project.
"""

from __future__ import annotations


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
