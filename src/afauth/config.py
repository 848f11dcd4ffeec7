"""Validate and build the authenticator's configuration; every problem with its key path.

Pure apart from loading plugins: the traitlets class hands the raw trait values in and gets
IdPs, mappers, managed roles and links out, or a :class:`ConfigError` listing
``idps[2].client_id: required``-style problems, at hub start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from afauth.idps import IdentityProvider, idp_types
from afauth.mapping import ROLE_NAME, VO_NAME, Mapper, RulesMapper, mapper_types
from afauth.usernames import is_safe_username
from afcore.issues import Checker, ConfigError, ConfigIssue, join_path
from afcore.registry import PluginError, Registry
from afcore.templates import TemplateError, placeholders

ROLE_KEYS = ("description", "name", "scopes")


@dataclass
class AuthConfig:
    idps: dict[str, IdentityProvider] = field(default_factory=dict)
    mappers: list[Mapper] = field(default_factory=list)
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)  # expanded managed roles
    links: dict[tuple[str, str], str] = field(default_factory=dict)  # (idp, subject) → name
    vos: frozenset[str] = frozenset()


def _plugin(registry: Registry[Any], name: object, path: str, b: Checker) -> Any:
    if not isinstance(name, str) or not name:
        b.err(path, "required: the plugin type")
        return None
    try:
        return registry.load(name)
    except PluginError as exc:
        b.err(path, str(exc))
        return None


def _plugin_entries(
    raw: Sequence[object], section: str, registry: Registry[Any], b: Checker
) -> Iterator[tuple[str, Mapping[str, Any], Any]]:
    """``(path, entry, plugin class)`` of each well-formed ``section[i]`` entry."""
    for i, entry in enumerate(raw):
        path = f"{section}[{i}]"
        if not isinstance(entry, Mapping):
            b.err(path, f"expected a mapping, got {type(entry).__name__}")
            continue
        cls = _plugin(registry, entry.get("type"), join_path(path, "type"), b)
        if cls is not None:
            yield path, entry, cls


def build_idps(
    raw: object,
    b: Checker,
    *,
    allow_insecure: bool,
    max_username_length: int,
    log: logging.Logger,
    registry: Registry[type[IdentityProvider]] | None = None,
) -> dict[str, IdentityProvider]:
    registry = registry or idp_types()
    idps: dict[str, IdentityProvider] = {}
    if not isinstance(raw, list | tuple) or not raw:
        b.err("idps", "configure at least one identity provider (a list of mappings)")
        return idps
    seen: dict[str, str] = {}  # IdP name → path of the entry that took it
    for path, entry, cls in _plugin_entries(raw, "idps", registry, b):
        problems = cls.validate(entry)
        b.extend(path, problems)
        name = entry.get("name")
        if isinstance(name, str) and name in seen:
            b.err(join_path(path, "name"), f"'{name}' is already used by {seen[name]}")
            continue
        if cls.insecure and not allow_insecure:
            b.err(
                join_path(path, "type"),
                f"the '{cls.type_name}' IdP is insecure (anyone can sign in as anyone); "
                "set c.AFAuthenticator.allow_insecure_dev_idp = True for demos only",
            )
            continue
        if problems:
            continue
        seen[str(name)] = path
        try:
            idps[str(name)] = cls(
                entry, log=log.getChild(str(name)), max_username_length=max_username_length
            )
        except (ValueError, KeyError, TypeError, OSError) as exc:
            b.err(path, f"cannot set up this IdP: {type(exc).__name__}: {exc}")
    return idps


def build_mappers(
    rules: object, mappers: object, b: Checker, registry: Registry[type[Mapper]] | None = None
) -> list[Mapper]:
    out: list[Mapper] = []
    issues = RulesMapper.validate({"rules": rules}, "")
    for issue in issues:  # report as mapping[...] rather than rules[...]
        b.err("mapping" + issue.path.removeprefix("rules"), issue.message)
    if not issues and rules:
        out.append(RulesMapper({"rules": rules}))
    if mappers is None:
        return out
    if not isinstance(mappers, list | tuple):
        b.err("mappers", "expected a list of mappings with a 'type'")
        return out
    registry = registry or mapper_types()
    for path, entry, cls in _plugin_entries(mappers, "mappers", registry, b):
        problems = cls.validate(entry, path)
        b.issues.extend(problems)
        if not problems:
            try:
                out.append(cls(entry))
            except (ValueError, KeyError, TypeError, OSError) as exc:
                b.err(path, f"cannot set up this mapper: {type(exc).__name__}: {exc}")
    return out


def _template_names(template: str) -> list[str]:
    """Placeholders of a role name or scope; ``["?"]`` when it is not a valid template."""
    try:
        return placeholders(template)
    except TemplateError:
        return ["?"]


def build_roles(raw: object, vos: Sequence[str], b: Checker) -> dict[str, dict[str, Any]]:
    """Managed roles; a name with ``{vo}`` is one role per VO in ``vos``."""
    roles: dict[str, dict[str, Any]] = {}
    if not isinstance(raw, list | tuple):
        b.err("managed_roles", "expected a list of role mappings")
        return roles
    for i, spec in enumerate(raw):
        path = f"managed_roles[{i}]"
        if not isinstance(spec, Mapping):
            b.err(path, f"expected a mapping, got {type(spec).__name__}")
            continue
        bad = [k for k in spec if k not in ROLE_KEYS]
        for key in bad:
            hint = (
                " (assignments come from the mapping rules)" if key in ("users", "groups") else ""
            )
            b.err(
                join_path(path, str(key)), f"unknown key; allowed: description, name, scopes{hint}"
            )
        name, scopes = spec.get("name"), spec.get("scopes", [])
        if not isinstance(name, str) or not name:
            b.err(join_path(path, "name"), "required")
            continue
        if not isinstance(scopes, list | tuple) or not all(isinstance(s, str) for s in scopes):
            b.err(join_path(path, "scopes"), "expected a list of scope strings")
            continue
        fields = set(_template_names(name))
        for text in scopes:
            fields |= set(_template_names(text))
        if fields - {"vo"}:
            b.err(path, f"only the {{vo}} placeholder is supported; found {sorted(fields)}")
            continue
        if bad:
            continue
        if "vo" in fields and not vos:
            b.err(join_path(path, "name"), "uses {vo}: list the VOs in c.AFAuthenticator.vos")
            continue
        for vo in vos if "vo" in fields else [""]:
            role_name = name.format(vo=vo)
            expanded = {
                "name": role_name,
                "description": str(spec.get("description", "")).replace("{vo}", vo),
                "scopes": [s.format(vo=vo) for s in scopes],
            }
            if not ROLE_NAME.fullmatch(role_name):
                b.err(join_path(path, "name"), f"'{role_name}' is not a valid role name")
                break
            if role_name in roles:
                b.err(join_path(path, "name"), f"role '{role_name}' is defined twice")
                break
            roles[role_name] = expanded
    return roles


def check_role_outputs(mappers: Sequence[Mapper], roles: Mapping[str, Any], b: Checker) -> None:
    """A literal role a rule grants must be a managed role (templated ones are filtered later)."""
    for mapper in mappers:
        for template in mapper.role_templates():
            if not _template_names(template) and template not in roles:
                known = ", ".join(sorted(roles)) or "none"
                b.err("mapping", f"role '{template}' is not in managed_roles (defined: {known})")


def warn_rule_idps(
    mapping: object, idps: Mapping[str, IdentityProvider], log: logging.Logger
) -> list[str]:
    """Warn about rules for IdPs that are not configured (a typo, or an IdP switched off)."""
    warnings: list[str] = []
    if not idps or not isinstance(mapping, list | tuple):
        return warnings
    for i, rule in enumerate(mapping):
        names = rule.get("idp") if isinstance(rule, Mapping) else None
        for name in [names] if isinstance(names, str) else names or []:
            if isinstance(name, str) and name not in idps:
                warnings.append(f"mapping[{i}].idp: '{name}' is not a configured IdP")
                log.warning("%s; the rule never matches it", warnings[-1])
    return warnings


def build_links(
    raw: object, idps: Mapping[str, IdentityProvider], b: Checker, max_length: int
) -> dict[tuple[str, str], str]:
    """``{"alice": ["cern:alice", "iam:5f0e..."]}`` → ``{(idp, subject): "alice"}``."""
    links: dict[tuple[str, str], str] = {}
    if not isinstance(raw, Mapping):
        b.err("linked_identities", "expected a mapping: user name → ['idp:subject', ...]")
        return links
    for username, identities in raw.items():
        path = f"linked_identities.{username}"
        if not isinstance(username, str) or not is_safe_username(username, max_length=max_length):
            b.err(path, "not a valid hub user name (lower-case letters, digits, '.', '_', '-')")
            continue
        if not isinstance(identities, list | tuple) or not identities:
            b.err(path, "expected a non-empty list of 'idp:subject' strings")
            continue
        for i, item in enumerate(identities):
            idp, _, subject = item.partition(":") if isinstance(item, str) else ("", "", "")
            where = f"{path}[{i}]"
            if not idp or not subject:
                b.err(where, "expected 'idp:subject', e.g. 'cern:alice'")
            elif idp not in idps:
                b.err(where, f"unknown IdP '{idp}'; configured: {', '.join(idps) or 'none'}")
            elif (idp, subject) in links and links[(idp, subject)] != username:
                b.err(where, f"'{item}' is already linked to '{links[(idp, subject)]}'")
            else:
                links[(idp, subject)] = username
    return links


def build_config(
    *,
    idps: object,
    mapping: object,
    mappers: object,
    managed_roles: object,
    vos: object,
    linked_identities: object,
    allow_insecure: bool,
    max_username_length: int,
    log: logging.Logger,
    extra_checks: Callable[[AuthConfig, list[ConfigIssue]], None] | None = None,
) -> AuthConfig:
    """Everything, or :class:`ConfigError` with every problem found."""
    b = Checker()
    vo_list: list[str] = []
    if not isinstance(vos, list | tuple | set | frozenset):
        b.err("vos", "expected a list of VO names")
    else:
        for i, vo in enumerate(vos):
            if isinstance(vo, str) and VO_NAME.fullmatch(vo):
                vo_list.append(vo)
            else:
                b.err(f"vos[{i}]", f"'{vo}' is not a valid VO name (lower-case DNS label)")
    config = AuthConfig(vos=frozenset(vo_list))
    config.idps = build_idps(
        idps, b, allow_insecure=allow_insecure, max_username_length=max_username_length, log=log
    )
    config.mappers = build_mappers(mapping, mappers, b)
    config.roles = build_roles(managed_roles, sorted(vo_list), b)
    check_role_outputs(config.mappers, config.roles, b)
    config.links = build_links(linked_identities, config.idps, b, max_username_length)
    warn_rule_idps(mapping, config.idps, log)
    if extra_checks is not None:
        extra_checks(config, b.issues)
    if b.issues:
        raise ConfigError(b.issues, "AFAuthenticator configuration")
    return config
