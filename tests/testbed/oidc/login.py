"""A scripted browser: walk an authorization URL through the IdP's real login pages."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

__all__ = ["LoginError", "drive_login"]


class LoginError(RuntimeError):
    """``drive_login`` did not reach the relying party's redirect URI."""

    def __init__(self, message: str, *, status_code: int | None = None, url: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.url = url


@dataclass
class _Form:
    action: str
    method: str
    fields: list[tuple[str, str, str]] = field(default_factory=list)  # (type, name, value)

    @property
    def has_password(self) -> bool:
        return any(kind == "password" for kind, _, _ in self.fields)


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[_Form] = []
        self.alerts: list[str] = []
        self._form: _Form | None = None
        self._alert_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = _Form(
                attributes.get("action", ""), attributes.get("method", "get").upper()
            )
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and attributes.get("name"):
            kind = attributes.get("type", "text").lower()
            if kind not in ("submit", "button", "image", "reset"):
                self._form.fields.append((kind, attributes["name"], attributes.get("value", "")))
        if attributes.get("role") == "alert" or "error" in attributes.get("class", "").split():
            self._alert_depth += 1
            self.alerts.append("")
        elif self._alert_depth:
            self._alert_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        if self._alert_depth:
            self._alert_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._alert_depth:
            self.alerts[-1] += data


def _same_endpoint(url: str, target: str) -> bool:
    a, b = urlsplit(url), urlsplit(target)
    return (a.scheme, a.netloc, a.path or "/") == (b.scheme, b.netloc, b.path or "/")


_USERNAME_FIELDS = ("username", "login", "user", "email", "j_username")


async def drive_login(
    client: httpx.AsyncClient,
    authorize_url: str,
    username: str,
    password: str,
    *,
    max_steps: int = 20,
) -> str:
    """Follow ``authorize_url`` through the IdP's login (and consent) pages as a browser would.

    Uses ``client``'s cookie jar, follows redirects by hand and submits HTML forms. Returns the
    redirect to the relying party's ``redirect_uri`` (with ``code`` and ``state``, or ``error``)
    without requesting it. Raises ``LoginError`` when the IdP shows the login form again (wrong
    password: the page's error text is in the message) or answers anything unexpected.
    """
    query = parse_qs(urlsplit(authorize_url).query)
    redirect_uri = query.get("redirect_uri", [""])[0]
    idp_netloc = urlsplit(authorize_url).netloc
    method, url, data = "GET", authorize_url, None
    credentials_sent = False
    for _ in range(max_steps):
        response = await client.request(method, url, data=data, follow_redirects=False)
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            if (redirect_uri and _same_endpoint(location, redirect_uri)) or (
                not redirect_uri and urlsplit(location).netloc != idp_netloc
            ):
                return location
            method, url, data = "GET", location, None
            continue

        parser = _PageParser()
        if "html" in response.headers.get("content-type", ""):
            parser.feed(response.text)
        alerts = " ".join(" ".join(a.split()) for a in parser.alerts if a.strip())
        login_form = next((f for f in parser.forms if f.has_password), None)
        form = login_form or (
            parser.forms[0] if parser.forms and response.status_code == 200 else None
        )
        if form is None:
            raise LoginError(
                f"unexpected {response.status_code} from {response.url}: "
                f"{alerts or response.text[:500]}",
                status_code=response.status_code,
                url=str(response.url),
            )
        if form.has_password:
            if credentials_sent:
                raise LoginError(
                    f"login as {username!r} refused: {alerts or 'login form shown again'}",
                    status_code=response.status_code,
                    url=str(response.url),
                )
            credentials_sent = True
        fields: dict[str, str] = {}
        for kind, name, value in form.fields:
            if kind == "password":
                fields[name] = password
            elif kind in ("text", "email") and name in _USERNAME_FIELDS:
                fields[name] = username
            elif kind in ("checkbox", "radio") and not value:
                continue
            else:
                fields[name] = value
        action = urljoin(str(response.url), form.action or str(response.url))
        if redirect_uri and _same_endpoint(action, redirect_uri):
            raise LoginError("response_mode=form_post is not supported by drive_login", url=action)
        method, url = form.method, action
        data = fields if method == "POST" else None
        if method == "GET":
            url = str(httpx.URL(action).copy_merge_params(fields))
    raise LoginError(f"no redirect to the relying party after {max_steps} steps", url=url)
