"""Tornado handlers: the multi-IdP login page, OIDC start/callback, password forms, logout.

Routes (below the hub prefix, e.g. ``/hub``):

- ``GET /login``                 one page: a button per OIDC IdP, a form per password IdP
- ``GET /login/<idp>``           start the OIDC flow (password IdP: its form on the page)
- ``POST /login/<idp>``          password IdP sign-in
- ``GET /login/<idp>/callback``  finish the OIDC flow
- ``GET /logout``                hub logout, then the IdP's end-session page if configured

Handlers only move data between HTTP and the authenticator; every check lives in
:mod:`afauth.flow` (state, ``next``) or in the authenticator. They need only the few methods of
:class:`LoginService` from it, so this module does not import the authenticator.
"""

from __future__ import annotations

import html
import time
from http.client import responses
from typing import Any, ClassVar, Protocol
from urllib.parse import quote, urlencode

from jupyterhub.handlers.base import BaseHandler
from jupyterhub.handlers.login import LoginHandler, LogoutHandler
from jupyterhub.utils import get_browser_protocol, url_path_join
from tornado import web

from afauth.errors import AuthFailure
from afauth.flow import LoginState, check_state, pkce_challenge, safe_next
from afauth.idps import IdentityProvider, PasswordIdP, RedirectIdP
from afauth.metrics import failure_reason, record_login

COOKIE_PREFIX = "afauth-oidc-"
NOT_ALLOWED = "You are not allowed to use this hub. Ask the facility administrators."


class LoginService(Protocol):
    """What the handlers use of the authenticator (``AFAuthenticator`` provides it)."""

    login_timeout: int

    def idp(self, name: str) -> IdentityProvider | None: ...

    def visible_idps(self) -> list[IdentityProvider]: ...

    def single_password_idp(self) -> PasswordIdP | None: ...

    def used_states(self) -> set[str]: ...

    def mark_state_used(self, state: str) -> None: ...


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _error_html(error: str) -> str:
    return f'<p class="login_error alert alert-danger" role="alert">{_esc(error)}</p>'


def _buttons_html(idps: list[IdentityProvider], base: str, query: str) -> str:
    buttons = [i for i in idps if isinstance(i, RedirectIdP)]
    if not buttons:
        return ""
    parts = ['<div class="afauth-buttons">']
    for button in buttons:
        href = url_path_join(base, "login", quote(button.name)) + query
        parts.append(
            f'<p><a role="button" id="afauth-{_esc(button.name)}" class="btn btn-jupyter'
            f' btn-lg" href="{_esc(href)}">Sign in with {_esc(button.display_name)}</a></p>'
        )
    parts.append("</div>")
    return "".join(parts)


def _form_html(idp: PasswordIdP, action: str, xsrf: str, error: str, username: str) -> str:
    """The username/password form of one password IdP (``error`` shown inside it)."""
    name = _esc(idp.name)
    return (
        f'<form id="afauth-{name}" class="afauth-form" method="post"'
        f' action="{_esc(action)}"><h2>{_esc(idp.display_name)}</h2>'
        + (_error_html(error) if error else "")
        + f'<input type="hidden" name="_xsrf" value="{_esc(xsrf)}"/>'
        f'<label for="username-{name}">Username:</label>'
        f'<input id="username-{name}" class="form-control" type="text"'
        f' name="username" autocomplete="username" autocapitalize="off"'
        f' value="{_esc(username)}"/>'
        f'<label for="password-{name}">Password:</label>'
        f'<input id="password-{name}" class="form-control" type="password"'
        ' name="password" autocomplete="current-password"/>'
        '<input type="submit" class="btn btn-jupyter form-control" value="Sign in"/></form>'
    )


def _login_html(
    handler: BaseHandler,
    idps: list[IdentityProvider],
    *,
    next_url: str,
    error: str = "",
    error_idp: str = "",
    username: str = "",
) -> str:
    """The login page body: escaped here, never a template built from config."""
    base = handler.hub.base_url
    query = ("?" + urlencode({"next": next_url})) if next_url else ""
    xsrf = handler.xsrf_token.decode("ascii")
    parts = ['<div class="afauth-login"><h1>Sign in</h1>']
    if error and not error_idp:
        parts.append(_error_html(error))
    parts.append(_buttons_html(idps, base, query))
    for idp in (i for i in idps if isinstance(i, PasswordIdP)):
        mine = error_idp == idp.name
        action = url_path_join(base, "login", quote(idp.name)) + query
        parts.append(_form_html(idp, action, xsrf, error if mine else "", username if mine else ""))
    parts.append("</div>")
    return "".join(parts)


def render_login(
    handler: BaseHandler,
    *,
    error: str = "",
    error_idp: str = "",
    username: str = "",
    **ns: Any,
) -> Any:
    """The login page, for every route that shows it: ``render_template``'s result (an
    awaitable, or a string when JupyterHub renders an error page with ``sync=True``)."""
    auth: LoginService = handler.authenticator
    next_url = safe_next(handler.get_argument("next", ""), handler.base_url)
    custom = _login_html(
        handler,
        auth.visible_idps(),
        next_url=next_url,
        error=error,
        error_idp=error_idp,
        username=username,
    )
    return handler.render_template(
        "login.html",
        **{
            **ns,
            "next": next_url,
            "custom_html": custom,
            "login_error": None,
            "authenticator": auth,
            "xsrf": handler.xsrf_token.decode("ascii"),
        },
    )


NOTICE_COOKIE = "afauth-notice"


def set_notice(handler: BaseHandler, message: str) -> None:
    """Leave the login page ``message`` (why the session ended), in a signed cookie, unless
    this request already carries it (the login page shows it once)."""
    if handler.get_cookie(NOTICE_COOKIE) is None:
        handler.set_secure_cookie(
            NOTICE_COOKIE, message[:512], expires_days=1, path=handler.hub.base_url
        )


def take_notice(handler: BaseHandler) -> str:
    """The message :func:`set_notice` left, once ("" when none)."""
    raw = handler.get_secure_cookie(NOTICE_COOKIE, max_age_days=1)
    if handler.get_cookie(NOTICE_COOKIE) is not None:
        handler.clear_cookie(NOTICE_COOKIE, path=handler.hub.base_url)
    return raw.decode("utf-8", "replace") if raw else ""


class OneMessage:
    """JupyterHub's error page shows an HTTPError without a ``reason`` twice (as the heading
    and as the text): give it the standard phrase ("Forbidden") as the heading. Not for 404,
    whose page (404.html) shows the heading only."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        if isinstance(exc, web.HTTPError) and not exc.reason and status_code != 404:
            exc.reason = responses.get(status_code, "Error")
        super().write_error(status_code, **kwargs)  # type: ignore[misc]


class AFLoginHandler(OneMessage, LoginHandler):  # type: ignore[misc]
    """``/hub/login``: the page listing every visible IdP (and JupyterHub's POST for one
    password IdP, so scripted logins keep working)."""

    def _render(
        self, login_error: str | None = None, username: str | None = None, **kw: Any
    ) -> Any:
        single = self.authenticator.single_password_idp()
        notice = take_notice(self)
        return render_login(
            self,
            error=login_error or notice,
            error_idp=single.name if (single and login_error) else "",
            username=username or "",
            **kw,
        )


def _idp(handler: BaseHandler, name: str) -> IdentityProvider:
    idp: IdentityProvider | None = handler.authenticator.idp(name)
    if idp is None:
        raise web.HTTPError(404, f"There is no identity provider called '{name[:40]}' on this hub.")
    return idp


class IdPLoginHandler(OneMessage, BaseHandler):  # type: ignore[misc]
    """``/hub/login/<idp>``: start an OIDC flow, or sign in with a password."""

    async def _show_login(self, status: int = 200, **kw: str) -> None:
        self.set_status(status)
        self.finish(await render_login(self, **kw))

    async def get(self, name: str) -> None:
        idp = _idp(self, name)
        if not isinstance(idp, RedirectIdP):
            await self._show_login()
            return
        next_url = safe_next(self.get_argument("next", ""), self.base_url)
        state = LoginState.start(idp.name, next_url, time.time())
        try:
            url = await idp.authorization_url(
                redirect_uri=redirect_uri(self, idp),
                state=state.state,
                nonce=state.nonce,
                code_challenge=pkce_challenge(state.verifier),
            )
        except AuthFailure as exc:
            self.log.warning("cannot start sign-in with %s: %s", idp.name, exc.detail)
            record_login(idp.name, exc.status, failure_reason("idp", exc.status))
            raise web.HTTPError(exc.status, exc.message) from None
        self._set_cookie(
            COOKIE_PREFIX + idp.name,
            state.encode(),
            encrypted=True,
            path=url_path_join(self.hub.base_url, "login", quote(idp.name)),
            samesite="Lax",
            expires_days=None,
        )
        self.redirect(url)

    async def post(self, name: str) -> None:
        idp = _idp(self, name)
        if not isinstance(idp, PasswordIdP):
            raise web.HTTPError(405, f"{idp.display_name} signs you in on its own page, not here.")
        username = self.get_body_argument("username", "", strip=True)
        password = self.get_body_argument("password", "", strip=False)
        data = {"idp": idp.name, "username": username, "password": password}
        try:
            user = await self.login_user(data)
        except web.HTTPError as exc:
            await self._show_login(
                exc.status_code,
                error=exc.get_message() or "Sign-in failed.",
                error_idp=idp.name,
                username=username[:64],
            )
            return
        if user is None:
            await self._show_login(
                403, error=NOT_ALLOWED, error_idp=idp.name, username=username[:64]
            )
            return
        self._jupyterhub_user = user
        next_url = safe_next(self.get_argument("next", ""), self.base_url)
        self.redirect(next_url or self.get_next_url(user))


class CallbackHandler(OneMessage, BaseHandler):  # type: ignore[misc]
    """``/hub/login/<idp>/callback``: check state, exchange the code, sign the user in."""

    #: See :func:`completes_redirect_flow`: only this handler may finish an OIDC sign-in.
    completes_redirect_flow: ClassVar[bool] = True

    async def get(self, name: str) -> None:
        idp = _idp(self, name)
        if not isinstance(idp, RedirectIdP):
            raise web.HTTPError(404, "This identity provider has no sign-in callback.")
        saved = self._saved_state(idp)
        error = self.get_argument("error", "")
        if error:
            self.log.warning("%s returned error %r", idp.name, error[:64])
            record_login(idp.name, 403, "credentials")
            raise web.HTTPError(
                403, f"{idp.display_name} did not sign you in ({error[:64]}). Please try again."
            )
        iss = self.get_argument("iss", "")
        if iss and iss != getattr(idp, "issuer", iss):  # RFC 9207 mix-up defence
            raise web.HTTPError(400, "Sign-in failed: the answer came from another issuer.")
        code = self.get_argument("code", "")
        if not code or len(code) > 4096:
            raise web.HTTPError(400, f"{idp.display_name} returned no sign-in code.")
        data = {
            "idp": idp.name,
            "code": code,
            "code_verifier": saved.verifier,
            "nonce": saved.nonce,
            "redirect_uri": redirect_uri(self, idp),
        }
        user = await self.login_user(data)
        if user is None:
            raise web.HTTPError(403, NOT_ALLOWED)
        self._jupyterhub_user = user
        self.redirect(saved.next_url or self.get_next_url(user))

    def _saved_state(self, idp: RedirectIdP) -> LoginState:
        """The login this browser started (its cookie, consumed here), checked against the
        callback's ``state``; 400 when they do not match."""
        auth: LoginService = self.authenticator
        cookie = COOKIE_PREFIX + idp.name
        raw = self.get_secure_cookie(cookie, max_age_days=1)
        self.clear_cookie(cookie, path=url_path_join(self.hub.base_url, "login", quote(idp.name)))
        saved = LoginState.decode(raw) if raw else None
        problem = check_state(
            saved,
            idp.name,
            self.get_argument("state", None),
            now=time.time(),
            max_age=auth.login_timeout,
            used=auth.used_states(),
        )
        if problem or saved is None:
            self.log.warning("OIDC callback for %s refused: %s", idp.name, problem)
            record_login(idp.name, 400, "bad_request")
            raise web.HTTPError(
                400, f"Sign-in failed: {problem}. Please start again from the login page."
            )
        auth.mark_state_used(saved.state)
        return saved

    def append_query_parameters(self, url: str, exclude: Any = None) -> str:
        """Never carry the callback's ``code``/``state`` on to the next page."""
        return url

    def _request_summary(self) -> str:
        """What tornado logs with an error: without the query (code, state)."""
        return f"{self.request.method} {self.request.path}?[scrubbed] ({self.request.remote_ip})"


class AFLogoutHandler(LogoutHandler):  # type: ignore[misc]
    """Hub logout; then, for an IdP with ``end_session: true``, the IdP's logout page."""

    _end_session: str | None = None

    async def handle_logout(self) -> None:
        user = self.current_user
        if user is None:
            return
        state = await user.get_auth_state() or {}
        idp = self.authenticator.idp(str(state.get("idp", "")))
        if isinstance(idp, RedirectIdP):
            login = url_path_join(self.hub.base_url, "login")
            back = f"{get_browser_protocol(self.request)}://{self.request.host}{login}"
            self._end_session = await idp.end_session_url(
                id_token=state.get("id_token"), post_logout_uri=back
            )

    async def render_logout_page(self) -> None:
        if self._end_session:
            self.redirect(self._end_session)
        else:
            await super().render_logout_page()


def completes_redirect_flow(handler: object) -> bool:
    """Whether ``handler`` may finish a redirect (OIDC) sign-in: only :class:`CallbackHandler`,
    after its state check. A form posted to ``/login`` with a ``code`` never can."""
    return getattr(handler, "completes_redirect_flow", False) is True


def redirect_uri(handler: BaseHandler, idp: IdentityProvider) -> str:
    """The callback URL the IdP sends the browser back to."""
    configured = idp.config.get("redirect_uri")
    if configured:
        return str(configured)
    path = url_path_join(handler.hub.base_url, "login", quote(idp.name), "callback")
    public = handler.settings.get("public_url")
    if public:
        return f"{public.scheme}://{public.netloc}{path}"
    return f"{get_browser_protocol(handler.request)}://{handler.request.host}{path}"


def handlers() -> list[tuple[str, type[BaseHandler]]]:
    return [
        (r"/login", AFLoginHandler),
        (r"/logout", AFLogoutHandler),
        (r"/login/([a-z][a-z0-9-]{0,31})", IdPLoginHandler),
        (r"/login/([a-z][a-z0-9-]{0,31})/callback", CallbackHandler),
    ]
