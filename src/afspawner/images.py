"""Container image references and the patterns a site allows users to type.

Pure. :func:`parse_reference` reads an image reference by the grammar of the OCI distribution
reference (``github.com/distribution/reference``), more strictly where the grammar is loose, and
normalises it the way Docker does (``python:3.11`` → ``docker.io/library/python:3.11``; no tag
and no digest → ``:latest``). :func:`parse_pattern` reads a site's pattern; :func:`check_image`
decides whether a user-typed image is allowed and returns its canonical form, or raises
:class:`ImageError` with a message for the user.

Pattern semantics (name part, then an optional ``:tag`` pattern, then an optional ``@digest``):

- ``*`` matches any run of characters except ``/`` (so within one path component, or within
  the tag); ``**`` (name part only) matches any run of characters including ``/``.
- Everything else matches itself. The registry (first component) is written out, without
  wildcards, so that a pattern never admits an unknown registry.
- Without a ``:tag`` part, any tag (or none) is allowed; with one, the image must carry a tag
  that matches it. With ``@digest``, the image must carry exactly that digest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from afcore.issues import Checker, kind

T = TypeVar("T")

MAX_REFERENCE = 512  # characters; the name alone is limited to 255 as in the grammar
MAX_NAME = 255

_HOST_COMPONENT = r"(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])"
_HOST = re.compile(rf"{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*(?::[0-9]{{1,5}})?")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
_ASCII_VISIBLE = re.compile(r"[\x21-\x7e]+")
DEFAULT_REGISTRY = "docker.io"
OTHER = ":other"  # the form's "Other..." pick with an empty box; never a valid reference


class ImageError(ValueError):
    """An image reference or pattern is malformed, or not allowed; the message says why."""


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised image reference."""

    registry: str  # docker.io, quay.io, localhost:5000
    repository: str  # library/python, pangeo/pangeo-notebook
    tag: str | None
    digest: str | None  # sha256:<64 hex>

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return f"{self.name}{tag}{digest}"


def _is_host(component: str) -> bool:
    """Docker's rule: the first component names a registry if it has '.' or ':' or is
    ``localhost``; otherwise the image is on Docker Hub."""
    return "." in component or ":" in component or component == "localhost"


def _split(text: str) -> tuple[str, str | None, str | None]:
    """``name[:tag][@digest]`` → its three parts (a ':' before the last '/' is a port)."""
    name, _, digest = text.partition("@")
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, (digest if "@" in text else None)


def _check_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise ImageError(f"{what} must be a string")
    if not text:
        raise ImageError(f"{what} is empty")
    if len(text) > MAX_REFERENCE:
        raise ImageError(f"{what} is too long ({len(text)} characters; at most {MAX_REFERENCE})")
    if not _ASCII_VISIBLE.fullmatch(text):
        raise ImageError(f"{what} may not contain spaces, control or non-ASCII characters")
    if "://" in text:
        raise ImageError(f"{what} is not a URL: write it without a scheme (quay.io/org/name:tag)")
    if ".." in text:
        raise ImageError(f"{what} may not contain '..'")
    if text.count("@") > 1:
        raise ImageError(f"{what} has more than one '@'")
    return text


def _check_name(name: str, what: str) -> tuple[str, str]:
    """A name → (registry, repository), by the grammar, normalised like Docker."""
    if not name:
        raise ImageError(f"{what} has no name")
    parts = name.split("/")
    if len(parts) > 1 and _is_host(parts[0]):
        registry, path = parts[0], parts[1:]
        if not _HOST.fullmatch(registry):
            raise ImageError(f"{what} has an invalid registry '{registry[:60]}' (lower-case host)")
        if registry == "index.docker.io":
            registry = DEFAULT_REGISTRY
    else:
        registry, path = DEFAULT_REGISTRY, parts
    for comp in path:
        if not comp:
            raise ImageError(f"{what} has an empty path component (a '//' or a '/' at an end)")
        if comp != comp.lower():
            raise ImageError(f"{what}: the repository must be lower-case ('{comp[:60]}')")
        if not _PATH_COMPONENT.fullmatch(comp):
            raise ImageError(
                f"{what} has an invalid path component '{comp[:60]}' (lower-case letters and "
                "digits, joined by single '.', '_', '__' or dashes)"
            )
    if registry == DEFAULT_REGISTRY and len(path) == 1:
        path = ["library", *path]
    if len(registry) + 1 + len("/".join(path)) > MAX_NAME:
        raise ImageError(f"{what} has a name longer than {MAX_NAME} characters")
    return registry, "/".join(path)


def parse_reference(text: object, what: str = "image") -> Reference:
    """Parse and normalise an image reference, or raise :class:`ImageError`."""
    ref = _check_text(text, what)
    name, tag, digest = _split(ref)
    registry, repository = _check_name(name, what)
    if tag is not None and not _TAG.fullmatch(tag):
        raise ImageError(f"{what} has an invalid tag '{tag[:60]}' (letters, digits, '_', '.', '-')")
    if digest is not None and not _DIGEST.fullmatch(digest):
        raise ImageError(f"{what} has an invalid digest (sha256:<64 lower-case hex digits>)")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, repository, tag, digest)


@dataclass(frozen=True)
class Pattern:
    """A compiled allow pattern; ``text`` is what the site wrote."""

    text: str
    name: re.Pattern[str]
    tag: re.Pattern[str] | None
    digest: str | None

    def matches(self, ref: Reference) -> bool:
        if not self.name.fullmatch(ref.name):
            return False
        if self.tag is not None and (ref.tag is None or not self.tag.fullmatch(ref.tag)):
            return False
        return self.digest is None or ref.digest == self.digest


def _glob(text: str, double: bool) -> re.Pattern[str]:
    """``*`` → ``[^/]*``; ``**`` → ``.*`` when ``double``; everything else literally."""
    out = []
    for i, chunk in enumerate(re.split(r"(\*\*|\*)", text)):
        if i % 2 == 0:
            out.append(re.escape(chunk))
        elif chunk == "**":
            out.append(".*")
        else:
            out.append("[^/]*")
    if not double and "**" in text:
        raise ImageError("'**' is allowed only in the name part of a pattern")
    if "***" in text:
        raise ImageError("'***' is ambiguous; write '*' or '**'")
    return re.compile("".join(out), re.ASCII)


def parse_pattern(text: object) -> Pattern:
    """Compile a site's allow pattern, or raise :class:`ImageError` saying what is wrong."""
    pat = _check_text(text, "pattern")
    name, tag, digest = _split(pat)
    first = name.split("/")[0]
    if "*" in first or "/" not in name or not _is_host(first):
        raise ImageError(
            "write the registry out, without wildcards, then a path (e.g. quay.io/pangeo/* or "
            "docker.io/library/python:3.1*)"
        )
    if digest is not None and "*" in digest:
        raise ImageError("a digest cannot have wildcards")
    # the literal parts must be valid by the grammar: replace each wildcard by a letter
    plain = re.sub(r"\*+", "x", pat)
    try:
        parse_reference(plain, "pattern")
    except ImageError as exc:
        raise ImageError(str(exc)) from None
    if first == "index.docker.io":
        name = DEFAULT_REGISTRY + name[len(first) :]
    if name.startswith(DEFAULT_REGISTRY + "/") and name.count("/") == 1 and "**" not in name:
        name = f"{DEFAULT_REGISTRY}/library/{name.split('/', 1)[1]}"  # as Docker normalises
    return Pattern(
        text=pat,
        name=_glob(name, double=True),
        tag=_glob(tag, double=False) if tag is not None else None,
        digest=digest,
    )


@dataclass(frozen=True)
class TagPattern:
    """A pattern of ``image_choice.tags``: ``*`` matches any run of tag characters."""

    text: str
    regex: re.Pattern[str]


def tag_pattern(text: object) -> TagPattern:
    """Compile a tag pattern, or raise :class:`ImageError`."""
    if not isinstance(text, str) or not text:
        raise ImageError("a tag pattern must be a non-empty string")
    if "**" in text or not _TAG.fullmatch(re.sub(r"\*+", "x", text)):
        raise ImageError(
            f"'{text[:60]}' is not a tag pattern (letters, digits, '_', '.', '-' and '*')"
        )
    return TagPattern(text, _glob(text, double=False))


def check_image(
    text: object | Reference,
    allow: Sequence[Pattern],
    tags: Sequence[TagPattern] = (),
    require_digest: bool = False,
) -> Reference:
    """A user-typed image, parsed and checked against the site's rules, or :class:`ImageError`."""
    ref = text if isinstance(text, Reference) else parse_reference(text)
    if not any(p.matches(ref) for p in allow):
        allowed = ", ".join(p.text for p in allow) or "none"
        raise ImageError(f"image '{ref}' is not allowed here; allowed: {allowed}")
    if tags and (ref.tag is None or not any(t.regex.fullmatch(ref.tag) for t in tags)):
        raise ImageError(
            f"image '{ref}' must have one of the tags {', '.join(t.text for t in tags)}"
        )
    if require_digest and ref.digest is None:
        raise ImageError(
            f"image '{ref}' must be pinned by digest (name@sha256:...), so that it cannot change"
        )
    return ref


@dataclass(frozen=True)
class ImagePreset:
    """A named image a user may pick for a flavor (``image_choice.choices[]``)."""

    image: str
    display: str


@dataclass(frozen=True)
class ImageChoice:
    """Which images a flavor lets its users choose (the flavor key ``image_choice``).

    ``presets`` are offered as choices, the flavor's ``image`` first; a non-empty ``allow``
    adds "Other...": a typed image must match one pattern, carry a tag matching one of
    ``tags`` (when given) and a digest (when ``require_digest``).
    """

    presets: tuple[ImagePreset, ...]
    allow: tuple[Pattern, ...] = ()
    tags: tuple[TagPattern, ...] = ()
    require_digest: bool = False

    def preset(self, ref: Reference) -> ImagePreset | None:
        """The preset that names the same image as ``ref`` (compared in canonical form)."""
        return next((p for p in self.presets if reference_or_none(p.image) == ref), None)

    def check(self, text: object) -> str:
        """The image to run for ``text``: a preset as the site wrote it, or the canonical
        form of an allowed typed image; else :class:`ImageError`."""
        ref = parse_reference(text)
        preset = self.preset(ref)
        if preset is not None:
            return preset.image
        if not self.allow:
            names = ", ".join(p.image for p in self.presets)
            raise ImageError(f"image '{ref}' is not one of the choices: {names}")
        return str(check_image(ref, self.allow, self.tags, self.require_digest))


_CHOICE_KEYS = {"choices", "allow", "tags", "require_digest"}


def _compiled(
    c: Checker, raw: object, path: str, compile_one: Callable[[object], T]
) -> tuple[T, ...]:
    if not isinstance(raw, list):
        c.err(path, f"expected a list, got {kind(raw)}")
        return ()
    out = []
    for i, item in enumerate(raw):
        try:
            out.append(compile_one(item))
        except ImageError as exc:
            c.err(f"{path}[{i}]", str(exc))
    return tuple(out)


def _preset(c: Checker, raw: object, path: str) -> ImagePreset | None:
    """A choice: an image reference, or ``{image, display}``."""
    if isinstance(raw, Mapping):
        data = c.mapping(raw, path, {"image", "display"}, {"image"})
        if data is None or "image" not in data:
            return None
        image, where = data["image"], f"{path}.image"
        display = c.string(data["display"], f"{path}.display") if "display" in data else None
    else:
        image, where, display = raw, path, None
    if not isinstance(image, str):
        c.err(where, f"expected an image reference, got {kind(image)}")
        return None
    try:
        parse_reference(image)
    except ImageError as exc:
        c.err(where, str(exc))
        return None
    return ImagePreset(image, display or image)


def load_image_choice(c: Checker, raw: object, path: str, image: str | None) -> ImageChoice | None:
    """The flavor key ``image_choice`` at ``path``; problems go to ``c`` with their key path.

    ``image`` is the flavor's own image, always the first choice.
    """
    data = c.mapping(raw, path, _CHOICE_KEYS)
    if data is None:
        return None
    presets = []
    if "choices" in data:
        raw_choices = data["choices"]
        if not isinstance(raw_choices, list):
            c.err(f"{path}.choices", f"expected a list, got {kind(raw_choices)}")
        else:
            for i, item in enumerate(raw_choices):
                p = _preset(c, item, f"{path}.choices[{i}]")
                if p is not None:
                    presets.append(p)
    allow = _compiled(c, data["allow"], f"{path}.allow", parse_pattern) if "allow" in data else ()
    tags = _compiled(c, data["tags"], f"{path}.tags", tag_pattern) if "tags" in data else ()
    digest = (
        c.boolean(data["require_digest"], f"{path}.require_digest")
        if "require_digest" in data
        else False
    )
    if not presets and not allow and "choices" not in data and "allow" not in data:
        c.err(path, "give choices (images to pick from) and/or allow (patterns for 'Other...')")
    if (tags or digest) and "allow" not in data:
        c.err(path, "tags and require_digest apply to typed images: add allow patterns")
    canon = [str(parse_reference(p.image)) for p in presets]
    for i, name in enumerate(canon):
        if name in canon[:i]:
            c.err(f"{path}.choices[{i}]", f"names the same image as an earlier choice ({name})")
    if image is not None:
        try:
            own = str(parse_reference(image))
        except ImageError:
            own = None  # reported at the flavor's image
        if own is not None and own not in canon:
            presets.insert(0, ImagePreset(image, image))
        elif own is not None:
            presets.insert(0, presets.pop(canon.index(own)))
    return ImageChoice(tuple(presets), allow, tags, digest)


def reference_or_none(text: str) -> Reference | None:
    """``text`` parsed, or ``None`` when it is not a valid reference."""
    try:
        return parse_reference(text)
    except ImageError:
        return None


def image_problem(text: str) -> str | None:
    """Why ``text`` is not a valid image reference (``None`` when it is); for the loader."""
    try:
        parse_reference(text)
    except ImageError as exc:
        return str(exc)
    return None
