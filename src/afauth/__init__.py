"""Multi-IdP authenticator for analysis facilities.

``from afauth import AFAuthenticator`` gives the authenticator class (like oauthenticator's
top-level classes); it is imported on first use, so the pure modules (``afauth.mapping``,
``afauth.flow``) do not load JupyterHub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from afauth.authenticator import AFAuthenticator

__all__ = ["AFAuthenticator"]


def __getattr__(name: str) -> Any:
    if name == "AFAuthenticator":
        from afauth.authenticator import AFAuthenticator

        return AFAuthenticator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
