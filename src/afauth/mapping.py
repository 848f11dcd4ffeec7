"""Declarative rules from claims / LDAP attributes to hub groups, managed roles, VOs and admin.

Pure: data in, data out. A rule looks at one claim of the identity and, when it matches,
contributes hub groups, roles, VOs or admin::

    {"claim": "wlcg.groups", "match": "/(?P<vo>cms|atlas)(/.*)?", "vo": "{vo}", "group": "{vo}"}
    {"claim": "cern_roles", "value": "admin", "admin": True}
    {"claim": "posix_groups", "match": "cms|dune", "vo": "{value}"}
    {"idp": "fnal", "group": "fermilab"}            # every login through IdP "fnal"

``claim`` is a dotted path into the claims; a key that itself contains dots
(``wlcg.groups``) is found as is. ``value`` (one value or a list) matches exactly; ``match``
is a regular expression that must match the *whole* value, its named groups usable as
``{name}`` in the outputs, as are ``{value}`` and ``{idp}``. Without ``value``/``match`` a
rule matches when the claim has any value; without ``claim`` it matches every login of its
``idp``\\ (s). Rendered names that are not valid group/role/VO names are dropped.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from afauth.identity import Identity
from afcore.issues import ConfigIssue, join_path
from afcore.registry import Registry
from afcore.templates import TemplateError, placeholders

GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$")
ROLE_NAME = re.compile(r"^[a-z][a-z0-9\-_~.]{1,253}[a-z0-9]$")  # JupyterHub's rule
VO_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

RULE_KEYS = frozenset(
    {"claim", "value", "match", "idp", "group", "groups", "vo", "vos", "role", "roles", "admin"}
)
OUTPUT_KEYS = {"group": "groups", "vo": "vos", "role": "roles"}
MAX_VALUES = 1000  # per claim, to bound the work a huge claim can cause
MAX_VALUE_LENGTH = 1024


@dataclass(frozen=True)
class Mapped:
    """What an identity is on this hub: groups, managed role names, VOs, admin."""

    groups: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    vos: frozenset[str] = frozenset()
    admin: bool = False

    def merge(self, other: Mapped) -> Mapped:
        return Mapped(
            self.groups | other.groups,
            self.roles | other.roles,
            self.vos | other.vos,
            self.admin or other.admin,
        )


@dataclass(frozen=True)
class Rule:
    claim: str | None = None
    values: tuple[str, ...] = ()
    pattern: re.Pattern[str] | None = None
    idps: frozenset[str] = frozenset()
    groups: tuple[str, ...] = ()
    vos: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    admin: bool = False
    placeholders: frozenset[str] = field(default=frozenset())


# ---------------------------------------------------------------------------------------------
# claim lookup


def lookup(claims: object, path: str) -> list[object]:
    """Values at a dotted ``path``; keys containing dots are tried first (longest prefix)."""
    if not isinstance(claims, Mapping) or not path:
        return []
    if path in claims:
        return [claims[path]]
    parts = path.split(".")
    found: list[object] = []
    for i in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:i])
        if head in claims:
            found.extend(lookup(claims[head], ".".join(parts[i:])))
    return found


def flatten(values: Iterable[object]) -> list[str]:
    """Scalars (and lists of scalars) as strings; mappings are skipped, booleans are
    ``true``/``false``; at most :data:`MAX_VALUES` values, over-long ones dropped."""
    out: list[str] = []

    def add(value: object, depth: int) -> None:
        if len(out) >= MAX_VALUES:
            return
        if isinstance(value, bool):
            out.append("true" if value else "false")
        elif isinstance(value, str):
            if len(value) <= MAX_VALUE_LENGTH:
                out.append(value)
        elif isinstance(value, int | float):
            out.append(str(value))
        elif isinstance(value, list | tuple) and depth < 2:
            for item in value:
                add(item, depth + 1)

    for value in values:
        add(value, 0)
    return out


def claim_values(claims: Mapping[str, object], path: str) -> list[str]:
    return flatten(lookup(claims, path))


# ---------------------------------------------------------------------------------------------
# parsing and validation


def _template_fields(template: str) -> list[str] | str:
    """Placeholder names of ``template`` or a problem description."""
    try:
        return placeholders(template)
    except TemplateError as exc:
        return str(exc)


def _strings(value: object, path: str, issues: list[ConfigIssue]) -> tuple[str, ...]:
    items = [value] if isinstance(value, str | int | bool) else value
    if not isinstance(items, list | tuple) or not items:
        issues.append(ConfigIssue(path, "expected a string or a non-empty list of strings"))
        return ()
    out: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, bool):
            out.append("true" if item else "false")
        elif isinstance(item, str | int) and str(item):
            out.append(str(item))
        else:
            issues.append(ConfigIssue(f"{path}[{i}]", "expected a non-empty string"))
    return tuple(out)


def parse_rule(raw: object, path: str, issues: list[ConfigIssue]) -> Rule | None:
    """One rule from config, appending every problem to ``issues``."""
    if not isinstance(raw, Mapping):
        issues.append(ConfigIssue(path, f"expected a mapping, got {type(raw).__name__}"))
        return None
    start = len(issues)
    for key in raw:
        if key not in RULE_KEYS:
            allowed = ", ".join(sorted(RULE_KEYS))
            issues.append(
                ConfigIssue(join_path(path, str(key)), f"unknown key; allowed: {allowed}")
            )
    rule = _parse_condition(raw, path, issues)
    admin = raw.get("admin", False)
    if not isinstance(admin, bool):
        issues.append(ConfigIssue(join_path(path, "admin"), "must be true or false"))
        admin = False
    available = {"value", "idp"} | (set(rule.pattern.groupindex) if rule.pattern else set())
    outputs, used = _parse_outputs(raw, path, available, issues)
    if not admin and not any(outputs.values()) and len(issues) == start:
        issues.append(ConfigIssue(path, "a rule needs an output: group, vo, role or admin"))
    if len(issues) > start:
        return None
    return replace(
        rule,
        groups=tuple(outputs["groups"]),
        vos=tuple(outputs["vos"]),
        roles=tuple(outputs["roles"]),
        admin=admin,
        placeholders=frozenset(used),
    )


def _parse_condition(raw: Mapping[str, Any], path: str, issues: list[ConfigIssue]) -> Rule:
    """What a rule matches on: ``claim`` with ``value`` or ``match``, and ``idp``."""
    claim = raw.get("claim")
    if claim is not None and (not isinstance(claim, str) or not claim):
        issues.append(ConfigIssue(join_path(path, "claim"), "expected a non-empty string"))
        claim = None
    values: tuple[str, ...] = ()
    if "value" in raw:
        values = _strings(raw["value"], join_path(path, "value"), issues)
    pattern: re.Pattern[str] | None = None
    if "match" in raw:
        if not isinstance(raw["match"], str) or not raw["match"]:
            issues.append(ConfigIssue(join_path(path, "match"), "expected a regular expression"))
        else:
            try:
                pattern = re.compile(raw["match"])
            except re.error as exc:
                issues.append(ConfigIssue(join_path(path, "match"), f"invalid regex: {exc}"))
    if values and "match" in raw:
        issues.append(ConfigIssue(path, "use either 'value' or 'match', not both"))
    if ("value" in raw or "match" in raw) and claim is None and "claim" not in raw:
        issues.append(ConfigIssue(join_path(path, "claim"), "required with 'value' or 'match'"))
    idps = frozenset(_strings(raw["idp"], join_path(path, "idp"), issues)) if "idp" in raw else ()
    if claim is None and not idps and "claim" not in raw:
        issues.append(ConfigIssue(path, "a rule needs a 'claim' or an 'idp' to match on"))
    return Rule(claim=claim, values=values, pattern=pattern, idps=frozenset(idps))


def _parse_outputs(
    raw: Mapping[str, Any], path: str, available: set[str], issues: list[ConfigIssue]
) -> tuple[dict[str, list[str]], set[str]]:
    """The group/VO/role templates of a rule by kind, and the placeholders they use."""
    outputs: dict[str, list[str]] = {"groups": [], "vos": [], "roles": []}
    used: set[str] = set()
    for key in ("group", "groups", "vo", "vos", "role", "roles"):
        if key not in raw:
            continue
        kind = OUTPUT_KEYS.get(key, key)
        for i, template in enumerate(_strings(raw[key], join_path(path, key), issues)):
            where = join_path(path, key) if isinstance(raw[key], str) else f"{path}.{key}[{i}]"
            names = _output_fields(template, kind, available)
            if isinstance(names, str):
                issues.append(ConfigIssue(where, names))
                continue
            used.update(names)
            outputs[kind].append(template)
    return outputs, used


def _output_fields(template: str, kind: str, available: set[str]) -> list[str] | str:
    """Placeholders of an output template of ``kind``, or why it is refused."""
    names = _template_fields(template)
    if isinstance(names, str):
        return names
    unknown = [n for n in names if n not in available]
    if unknown:
        known = ", ".join("{" + n + "}" for n in sorted(available))
        return f"unknown placeholder '{{{unknown[0]}}}'; use {known}"
    if not names and not _valid_output(kind, template):
        return f"'{template}' is not a valid {kind[:-1]} name"
    return names


def parse_rules(raw: object, path: str = "mapping") -> tuple[list[Rule], list[ConfigIssue]]:
    """Rules from a config list, and every problem found (with key paths)."""
    issues: list[ConfigIssue] = []
    if raw is None:
        return [], issues
    if not isinstance(raw, list | tuple):
        return [], [ConfigIssue(path, f"expected a list of rules, got {type(raw).__name__}")]
    rules = [parse_rule(item, f"{path}[{i}]", issues) for i, item in enumerate(raw)]
    return [r for r in rules if r is not None], issues


# ---------------------------------------------------------------------------------------------
# evaluation


def _valid_output(kind: str, name: str) -> bool:
    pattern = {"groups": GROUP_NAME, "roles": ROLE_NAME, "vos": VO_NAME}[kind]
    return bool(pattern.fullmatch(name))


def _render(templates: Sequence[str], kind: str, fields: Mapping[str, str]) -> set[str]:
    out: set[str] = set()
    for template in templates:
        try:
            name = template.format_map(fields)
        except (KeyError, ValueError, IndexError):
            continue
        if _valid_output(kind, name):
            out.add(name)
    return out


def _matches(rule: Rule, identity: Identity) -> list[dict[str, str]]:
    """Template fields of every value that matches ``rule`` (one dict per match)."""
    if rule.idps and identity.idp not in rule.idps:
        return []
    base = {"idp": identity.idp}
    if rule.claim is None:
        return [{**base, "value": ""}]
    found: list[dict[str, str]] = []
    for value in claim_values(identity.claims, rule.claim):
        if rule.pattern is not None:
            m = rule.pattern.fullmatch(value)
            if m is None:
                continue
            groups = {k: v or "" for k, v in m.groupdict().items()}
            found.append({**base, **groups, "value": value})
        elif rule.values:
            if value in rule.values:
                found.append({**base, "value": value})
        elif value not in ("", "false"):
            found.append({**base, "value": value})
    return found


def apply_rules(rules: Iterable[Rule], identity: Identity) -> Mapped:
    """Union of what every matching rule contributes."""
    groups: set[str] = set()
    roles: set[str] = set()
    vos: set[str] = set()
    admin = False
    for rule in rules:
        for fields in _matches(rule, identity):
            groups |= _render(rule.groups, "groups", fields)
            roles |= _render(rule.roles, "roles", fields)
            vos |= _render(rule.vos, "vos", fields)
            admin = admin or rule.admin
    return Mapped(frozenset(groups), frozenset(roles), frozenset(vos), admin)


# ---------------------------------------------------------------------------------------------
# mapper plugins (entry-point group ``afauth.mappers``)


class Mapper:
    """Base class of mapper plugins: options in, ``Identity → Mapped`` out.

    A site mapper (e.g. one that asks a VOMS-admin service) subclasses this, declares it under
    ``[project.entry-points."afauth.mappers"]`` and is configured as
    ``c.AFAuthenticator.mappers = [{"type": "mine", ...}]``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)

    @classmethod
    def validate(cls, options: Mapping[str, object], path: str) -> list[ConfigIssue]:
        """Every problem of ``options`` (key paths below ``path``); empty when valid."""
        return []

    def role_templates(self) -> list[str]:
        """Role names (possibly with placeholders) this mapper may produce; checked at start."""
        return []

    def map(self, identity: Identity) -> Mapped:
        raise NotImplementedError


class RulesMapper(Mapper):
    """The built-in ``rules`` mapper: ``{"type": "rules", "rules": [...]}``."""

    name = "rules"
    description = "declarative claim/attribute rules"

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        self.rules, issues = parse_rules(options.get("rules", []), "rules")
        if issues:
            raise ValueError("; ".join(str(i) for i in issues))

    @classmethod
    def validate(cls, options: Mapping[str, object], path: str) -> list[ConfigIssue]:
        issues = [
            ConfigIssue(join_path(path, k), "unknown option for the rules mapper; allowed: rules")
            for k in options
            if k not in ("type", "rules")
        ]
        return issues + parse_rules(options.get("rules", []), join_path(path, "rules"))[1]

    def role_templates(self) -> list[str]:
        return [r for rule in self.rules for r in rule.roles]

    def map(self, identity: Identity) -> Mapped:
        return apply_rules(self.rules, identity)


def map_identity(
    mappers: Iterable[Mapper],
    identity: Identity,
    *,
    vos: Collection[str],
    roles: Collection[str],
) -> tuple[Mapped, frozenset[str]]:
    """What every mapper grants ``identity``, merged; VOs kept only if listed in ``vos`` (all
    when it is empty), roles only if managed (in ``roles``). Also the roles dropped, to log."""
    mapped = Mapped()
    for mapper in mappers:
        mapped = mapped.merge(mapper.map(identity))
    known_vos = mapped.vos & frozenset(vos) if vos else mapped.vos
    known_roles = frozenset(r for r in mapped.roles if r in roles)
    return replace(mapped, vos=known_vos, roles=known_roles), mapped.roles - known_roles


MAPPER_GROUP = "afauth.mappers"  # entry-point group of mapper plugins


def _is_mapper(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, Mapper) and bool(obj.name)


@functools.cache
def mapper_types() -> Registry[type[Mapper]]:
    """Registry of installed mapper plugins (``afauth.mappers``)."""
    return Registry(MAPPER_GROUP, "mapper", _is_mapper)
