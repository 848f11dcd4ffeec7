"""Image references and allow patterns (afspawner.images): examples and properties."""

from __future__ import annotations

import re
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afspawner.images import (
    ImageError,
    Pattern,
    Reference,
    check_image,
    parse_pattern,
    parse_reference,
    tag_pattern,
)

SHA = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("python", "docker.io/library/python:latest"),
        ("python:3.11", "docker.io/library/python:3.11"),
        ("jupyter/scipy-notebook", "docker.io/jupyter/scipy-notebook:latest"),
        ("index.docker.io/jupyter/base", "docker.io/jupyter/base:latest"),
        ("quay.io/pangeo/ml-notebook:2023.05.08", "quay.io/pangeo/ml-notebook:2023.05.08"),
        ("localhost:5000/a/b/c:v1", "localhost:5000/a/b/c:v1"),
        ("localhost/a", "localhost/a:latest"),
        (f"ghcr.io/x/y@{SHA}", f"ghcr.io/x/y@{SHA}"),
        (f"ghcr.io/x/y:1.0@{SHA}", f"ghcr.io/x/y:1.0@{SHA}"),
        ("a/b__c/d-e--f:TAG_x.1-2", "docker.io/a/b__c/d-e--f:TAG_x.1-2"),
        ("10.0.0.1:5000/x", "10.0.0.1:5000/x:latest"),
    ],
)
def test_references_are_parsed_and_normalised(text: str, canonical: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == canonical
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        (" python", "spaces"),
        ("python ", "spaces"),
        ("python\n", "spaces"),
        ("py\tthon", "spaces"),
        ("pythön", "non-ASCII"),
        ("quay.io/Pangeo/x", "must be lower-case"),
        ("Python", "must be lower-case"),
        ("Quay.io/pangeo/x", "invalid registry"),
        ("quay.io/a..b", "may not contain '..'"),
        ("quay.io/../etc", "may not contain '..'"),
        ("quay.io/a:1..2", "may not contain '..'"),
        ("quay..io/x", "may not contain '..'"),
        ("https://quay.io/x", "not a URL"),
        ("docker://x", "not a URL"),
        ("quay.io//x", "empty path component"),
        ("quay.io/x/", "empty path component"),
        ("x:", "invalid tag"),
        ("x:.tag", "invalid tag"),
        ("x:" + "a" * 129, "invalid tag"),
        ("x@sha256:abc", "invalid digest"),
        ("x@md5:" + "0" * 32, "invalid digest"),
        (f"x@{SHA.upper()}", "invalid digest"),
        ("x@a@b", "more than one '@'"),
        (":tag", "no name"),
        ("x" * 600, "too long"),
        ("quay.io/" + "a" * 250, "longer than 255"),
        ("x;rm -rf", "spaces"),
        ("x;rm", "invalid path component"),
        ("-x", "invalid path component"),
        ("x_", "invalid path component"),
        ("a/b:c/d", "invalid path component"),
    ],
)
def test_malformed_references_are_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ImageError, match=reason.replace("(", r"\(")):
        parse_reference(text)


@pytest.mark.parametrize("value", [None, 3, ["x"], b"python"])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(ImageError, match="must be a string"):
        parse_reference(value)


ALLOW = [
    parse_pattern("quay.io/pangeo/*"),
    parse_pattern("docker.io/library/python:3.1*"),
    parse_pattern("ghcr.io/org/**"),
    parse_pattern(f"registry.example.org/pinned@{SHA}"),
]


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("quay.io/pangeo/ml-notebook:2023.05.08", True),
        ("quay.io/pangeo/x", True),  # :latest
        (f"quay.io/pangeo/x@{SHA}", True),
        ("quay.io/pangeo/x/y:1", False),  # '*' does not cross '/'
        ("quay.io/pangeo:1", False),
        ("quay.io/pangeoevil/x:1", False),
        ("quay.io.evil.com/pangeo/x:1", False),
        ("evil.com/quay.io/pangeo/x:1", False),
        ("quay.io:443/pangeo/x:1", False),
        ("python:3.11", True),  # docker.io/library/python:3.11
        ("docker.io/library/python:3.1", True),
        ("python:3.9", False),
        ("python", False),  # :latest
        (f"python@{SHA}", False),  # the pattern names a tag
        ("docker.io/evil/python:3.11", False),
        ("ghcr.io/org/a/b/c:1", True),  # '**' crosses '/'
        ("ghcr.io/org/a", True),
        ("ghcr.io/orgx/a", False),
        ("ghcr.io/other/a", False),
        (f"registry.example.org/pinned@{SHA}", True),
        (f"registry.example.org/pinned:1@{SHA}", True),
        ("registry.example.org/pinned:1", False),
        ("registry.example.org/pinned@sha256:" + "1" * 64, False),
    ],
)
def test_allow_patterns(text: str, ok: bool) -> None:
    if ok:
        assert check_image(text, ALLOW) == parse_reference(text)
    else:
        with pytest.raises(
            ImageError, match=re.escape("is not allowed here; allowed: quay.io/pangeo/*")
        ):
            check_image(text, ALLOW)


def test_tags_and_digest_requirements() -> None:
    allow = [parse_pattern("quay.io/**")]
    tags = [tag_pattern("2023.*"), tag_pattern("stable")]
    assert str(check_image("quay.io/a:2023.05.08", allow, tags)) == "quay.io/a:2023.05.08"
    assert check_image("quay.io/a:stable", allow, tags).tag == "stable"
    with pytest.raises(ImageError, match=re.escape("must have one of the tags 2023.*, stable")):
        check_image("quay.io/a:latest", allow, tags)
    with pytest.raises(ImageError, match="must have one of the tags"):
        check_image(f"quay.io/a@{SHA}", allow, tags)  # no tag at all
    with pytest.raises(ImageError, match="must be pinned by digest"):
        check_image("quay.io/a:1", allow, require_digest=True)
    assert check_image(f"quay.io/a:1@{SHA}", allow, tags=(), require_digest=True).digest == SHA


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("*/x", "write the registry out"),
        ("quay.*/x", "write the registry out"),
        ("pangeo/*", "write the registry out"),
        ("quay.io", "write the registry out"),
        ("**", "write the registry out"),
        ("quay.io/a:**", "only in the name part"),
        ("quay.io/***", "ambiguous"),
        ("quay.io/a@sha256:*", "a digest cannot have wildcards"),
        ("quay.io/A*", "must be lower-case"),
        ("quay.io/a..*", "may not contain '..'"),
        ("https://quay.io/*", "not a URL"),
        ("quay.io/ *", "spaces"),
    ],
)
def test_bad_patterns_are_refused(text: str, reason: str) -> None:
    with pytest.raises(ImageError, match=reason.replace("*", r"\*")):
        parse_pattern(text)


def test_docker_hub_patterns_are_normalised_like_references() -> None:
    assert check_image("python:3.12", [parse_pattern("docker.io/python")]).name == (
        "docker.io/library/python"
    )
    official = parse_pattern("docker.io/*")  # = docker.io/library/*: the official images
    assert check_image("ubuntu:24.04", [official]).repository == "library/ubuntu"
    with pytest.raises(ImageError):
        check_image("jupyter/base", [official])
    hub = parse_pattern("index.docker.io/jupyter/*")
    assert check_image("jupyter/base:1", [hub]).name == "docker.io/jupyter/base"


# -- properties --------------------------------------------------------------------------------


@cache
def glob(pattern: str, text: str) -> bool:
    """An independent matcher (backtracking, no regex): '*' any run without '/', '**' any run."""
    if not pattern:
        return not text
    if pattern.startswith("**"):
        return any(glob(pattern[2:], text[i:]) for i in range(len(text) + 1))
    if pattern[0] == "*":
        return any(glob(pattern[1:], text[i:]) for i in range(len(text) + 1) if "/" not in text[:i])
    return bool(text) and text[0] == pattern[0] and glob(pattern[1:], text[1:])


def oracle(pattern: str, ref: Reference) -> bool:
    """Does ``ref`` fall inside ``pattern`` (as written, docker.io short forms aside)?"""
    name, _, digest = pattern.partition("@")
    tag = None
    if name.rfind(":") > name.rfind("/"):
        name, _, tag = name.rpartition(":")
    if not glob(name, ref.name):
        return False
    if tag is not None and (ref.tag is None or not glob(tag, ref.tag)):
        return False
    return not digest or ref.digest == digest


REGISTRIES = ["quay.io", "ghcr.io", "docker.io", "localhost:5000", "registry.example.org"]
component = st.text(alphabet="ab1", min_size=1, max_size=3)
pattern_part = st.text(alphabet="ab1*", min_size=1, max_size=4).filter(lambda s: "***" not in s)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    parts = draw(st.lists(pattern_part, min_size=2, max_size=3))
    text = draw(st.sampled_from(REGISTRIES)) + "/" + "/".join(parts)
    if draw(st.booleans()):
        text += ":" + draw(st.text(alphabet="ab1.*", min_size=1, max_size=4)).lstrip(".") + "a"
    return text  # patterns with '**' in the tag are refused by parse_pattern and dropped


@st.composite
def references(draw: st.DrawFn) -> str:
    registry = draw(st.sampled_from([*REGISTRIES, "quay.io.evil.com", "evil.com", "quay.io:1"]))
    text = registry + "/" + "/".join(draw(st.lists(component, min_size=1, max_size=4)))
    if draw(st.booleans()):
        text += ":" + draw(st.text(alphabet="ab1.-", min_size=1, max_size=4)).lstrip(".-") + "b"
    if draw(st.booleans()):
        text += "@" + SHA
    return text


@st.composite
def instances(draw: st.DrawFn, pattern: str) -> str:
    """A reference made from ``pattern`` (wildcards filled in), often mutated a little."""
    name, tag = pattern, None
    if name.rfind(":") > name.rfind("/"):
        name, _, tag = name.rpartition(":")

    def fill(text: str, star: st.SearchStrategy[str]) -> str:
        chunks = re.split(r"(\*\*|\*)", text)
        deep = st.lists(component, max_size=3).map("/".join)
        return "".join(
            c if i % 2 == 0 else draw(deep if c == "**" else star) for i, c in enumerate(chunks)
        )

    text = fill(name, st.text(alphabet="ab1", max_size=3))
    if tag is not None:
        text += ":" + fill(tag, st.text(alphabet="ab1.-", max_size=3))
    elif draw(st.booleans()):
        text += ":" + draw(component)
    mutation = draw(st.sampled_from(["", "", "/x", ".evil.com", "A", "/..", " ", ":9", "@" + SHA]))
    at = draw(st.integers(0, len(text)))
    return text[:at] + mutation + text[at:]


@st.composite
def allow_and_image(draw: st.DrawFn) -> tuple[list[str], str]:
    texts = draw(st.lists(patterns(), min_size=1, max_size=3))
    if draw(st.booleans()):
        return texts, draw(references())
    return texts, draw(instances(draw(st.sampled_from(texts))))


def _compiled(texts: list[str]) -> list[tuple[str, Pattern]]:
    out = []
    for t in texts:
        try:
            out.append((t, parse_pattern(t)))
        except ImageError:
            continue
    return out


@settings(max_examples=400, deadline=None)
@given(allow_and_image())
def test_matching_agrees_with_an_independent_matcher(case: tuple[list[str], str]) -> None:
    pattern_texts, text = case
    compiled = _compiled(pattern_texts)
    try:
        ref = parse_reference(text)
    except ImageError:
        return
    for written, pattern in compiled:  # two or more path components: never normalised
        assert pattern.matches(ref) == oracle(written, ref), (written, text)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        allow_and_image(),
        st.tuples(
            st.lists(patterns(), min_size=1, max_size=3),
            st.one_of(
                st.text(max_size=40),
                st.text(alphabet="quay.io/pangeoAB:@*-_ \n\t1", max_size=40),
                st.builds(lambda s: "quay.io/" + s, st.text(alphabet="ab/.:@-_ A\n%", max_size=20)),
            ),
        ),
    )
)
def test_nothing_outside_the_patterns_is_ever_accepted(case: tuple[list[str], str]) -> None:
    pattern_texts, text = case
    compiled = _compiled(pattern_texts)
    allow = [p for _, p in compiled]
    try:
        ref = check_image(text, allow)
    except ImageError:
        return
    canonical = str(ref)
    assert any(oracle(w, ref) for w, _ in compiled)
    assert any(ref.name.startswith(w.split("/")[0] + "/") for w, _ in compiled)
    assert canonical.isascii() and canonical.isprintable() and " " not in canonical
    assert ".." not in canonical and "://" not in canonical and "//" not in canonical
    assert ref.name == ref.name.lower()
    assert parse_reference(canonical) == ref


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_parsed_or_refused_with_image_error(text: str) -> None:
    try:
        ref = parse_reference(text)
    except ImageError as exc:
        assert str(exc)
        return
    assert text.isascii() and not any(c.isspace() for c in text)
    assert parse_reference(str(ref)) == ref
