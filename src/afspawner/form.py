"""The spawn page's options form as a catalog (HTML) and its parsing back into user_options.

Pure: the facility, who is spawning and live facts (free GPUs, the ledger's usage) in, HTML
out. Flavors are grouped by experiment (VO), like the Fermilab EAF page: one fieldset with a
legend per VO the user belongs to, then the flavors open to every experiment. Each choice is a
native radio input with a ``<label for>``, so the form works without JavaScript and from the
keyboard. A choice that cannot start now is shown disabled with the reason (no GPU free while
``gpu_wait = refuse``; the quota would refuse it: the same message as the refusal). The server
decides again on submit: a forged or stale choice is refused there as before.

A choice's value is the flavor name, or ``flavor/vo`` when the user could charge the flavor to
more than one of their VOs; :func:`options_from_form` splits it into ``flavor`` and ``vo``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

from afcore.quantity import human_cpu, human_memory
from afspawner.facility import Facility, Flavor
from afspawner.imageform import STYLE as PICKER_STYLE
from afspawner.imageform import image_from_form, image_picker, is_picker_field
from afspawner.overview import Amount, amounts, quota_block
from afspawner.policy import OPTION_KEYS, UserContext, offered_flavors
from afspawner.quota import Usage

Free = Callable[[str], int | None]
UsageOf = Callable[[str, str | None], Usage]  # Ledger.usage(vo, username)
COLOURS = ("#00838f", "#b8860b", "#8b1a1a", "#e65100", "#2e7d32", "#1a3a8b")


@dataclass(frozen=True)
class Choice:
    flavor: Flavor
    vo: str | None
    value: str
    gpu_text: str  # "" for a CPU flavor
    blocked: str | None  # why it cannot start now


@dataclass(frozen=True)
class Group:
    key: str  # the VO, or "" for flavors open to every experiment
    legend: str
    allowance: tuple[Amount, ...]  # the user's own, against the VO's per-user caps
    vo_total: tuple[Amount, ...]  # the VO's, against its quota
    choices: tuple[Choice, ...]


def _gpu(fac: Facility, flavor: Flavor, free: Free, gpu_wait: str) -> tuple[str, str | None]:
    """The GPU line of a flavor, and the reason it cannot start now (refuse mode, none free)."""
    if flavor.gpu is None:
        return "", None
    gclass = fac.gpu_classes[flavor.gpu.gpu_class]
    n = free(gclass.name)
    avail = "availability unknown" if n is None else (f"{n} free now" if n > 0 else "none free now")
    if n is not None and n < flavor.gpu.count and gpu_wait == "queue":
        avail += "; you will wait in a queue"
    text = f"{flavor.gpu.count} x {gclass.display} GPU ({avail})"
    if n is not None and n < flavor.gpu.count and gpu_wait != "queue":
        return text, (
            f"no {gclass.display} GPU is free right now; try again later or pick a "
            "flavor without a GPU"
        )
    return text, None


def catalog(
    fac: Facility,
    user: UserContext,
    free: Free,
    usage: UsageOf | None = None,
    gpu_wait: str = "refuse",
) -> tuple[Group, ...]:
    """The groups of choices ``user`` sees: one per VO of theirs, then the open flavors."""
    offered = offered_flavors(fac, user)
    vos = [v for v in user.vos if v in fac.vos]

    def candidates(f: Flavor) -> list[str]:
        return [v for v in vos if not f.vos or v in f.vos]

    def choice(f: Flavor, vo: str | None) -> Choice:
        value = f"{f.name}/{vo}" if vo is not None and len(candidates(f)) > 1 else f.name
        gpu_text, blocked = _gpu(fac, f, free, gpu_wait)
        if vo is not None and usage is not None:
            quota = quota_block(fac, fac.vos[vo], f, usage(vo, user.name), usage(vo, None))
            blocked = quota or blocked  # the quota is checked first on the server too
        return Choice(f, vo, value, gpu_text, blocked)

    def allowance(vo: str) -> tuple[tuple[Amount, ...], tuple[Amount, ...]]:
        if usage is None:
            return (), ()
        v = fac.vos[vo]
        return amounts(fac, v.per_user, usage(vo, user.name)), amounts(
            fac, v.quota, usage(vo, None)
        )

    groups = []
    for vo in vos:
        mine = tuple(choice(f, vo) for f in offered if f.vos and vo in f.vos)
        if mine:
            groups.append(Group(vo, fac.vos[vo].display, *allowance(vo), mine))
    open_flavors = [f for f in offered if not f.vos]
    if open_flavors:
        charged: Sequence[str | None] = vos or [None]
        shared = tuple(choice(f, vo) for f in open_flavors for vo in charged)
        groups.append(Group("", "Open to every experiment", (), (), shared))
    return tuple(groups)


def _resources(f: Flavor) -> str:
    return f"{human_cpu(f.cpu_millis)} CPU · {human_memory(f.memory_bytes)} memory"


def _allowance_html(fac: Facility, group: Group) -> str:
    if not group.key or not (group.allowance or group.vo_total):
        return ""
    display = escape(fac.vos[group.key].display)
    limited = [a for a in group.allowance if a.limit is not None]
    if limited:
        used = " · ".join(f"{escape(a.text)} {escape(a.label)}" for a in limited)
        left = ", ".join(f"{escape(a.left_text)} {escape(a.label)}" for a in limited)
        mine = f"Your allowance in {display}: {used} used; left: {left}."
    else:
        mine = f"No per-user limit in {display}."
    total = [a for a in group.vo_total if a.limit is not None]
    whole = ""
    if total:
        whole = (
            f"<br>{display} as a whole: "
            + " · ".join(f"{escape(a.text)} {escape(a.label)}" for a in total)
            + " used."
        )
    return f'<p class="af-allowance" id="af-allow-{escape(group.key)}">{mine}{whole}</p>'


STYLE = (
    "<style>"
    ".af-catalog{display:grid;grid-template-columns:repeat(auto-fill,minmax(24rem,1fr));"
    "gap:1rem;margin-bottom:1rem}"
    ".af-group{border:1px solid #ccc;border-left:6px solid var(--af-c);border-radius:4px;"
    "padding:.5rem 1rem;min-width:0}"
    ".af-group>legend{font-size:1.1rem;font-weight:bold;color:var(--af-c);float:none;"
    "width:auto;padding:0 .3rem;margin:0}"
    ".af-allowance{font-size:.9rem;margin:.2rem 0 .5rem}"
    ".af-choice{display:flex;gap:.5rem;align-items:flex-start;padding:.3rem 0}"
    ".af-choice input{margin-top:.3rem;flex:none}"
    ".af-choice input:focus-visible{outline:3px solid var(--af-c);outline-offset:2px}"
    ".af-choice label{font-weight:normal;margin:0;cursor:pointer}"
    ".af-disabled label{cursor:not-allowed;color:#5a6268}"
    ".af-details{display:block;font-size:.85rem;color:#555}"
    ".af-reason{display:block;color:#9b1c1c;font-weight:bold}"
    ".af-flavor{margin:.3rem 0;padding:0;border:0;min-width:0}"
    ".af-flavor legend{font-size:1rem;font-weight:bold;float:none;width:auto;margin:0;padding:0}"
    ".af-flavor .af-choice{display:inline-flex;margin-right:1rem;padding:.1rem 0}"
    "</style>"
)


def _details(c: Choice) -> str:
    f = c.flavor
    details = [escape(_resources(f))]
    if c.gpu_text:
        details.append(escape(c.gpu_text))
    desc = f"<br>{escape(f.description)}" if f.description else ""
    return " · ".join(details) + desc


def _reason(c: Choice) -> str:
    if not c.blocked:
        return ""
    return f'<span class="af-reason">Cannot start now: {escape(c.blocked)}</span>'


def _radio(c: Choice, cid: str, checked: bool, title: str, details: str) -> str:
    """One choice: a native radio input, its ``<label for>``, details it is described by."""
    state = " disabled" if c.blocked else (" checked" if checked else "")
    css = "af-choice af-disabled" if c.blocked else "af-choice"
    return (
        f'<div class="{css}"><input type="radio" id="{cid}" name="flavor" '
        f'value="{escape(c.value)}"{state} aria-describedby="{cid}-d">'
        f'<label for="{cid}">{title}'
        f'<span class="af-details" id="{cid}-d">{details}{_reason(c)}</span></label></div>'
    )


def _flavor_html(
    fac: Facility, choices: Sequence[Choice], ids: list[str], checked: Choice | None
) -> str:
    """A flavor offered once: one radio; offered per VO: a fieldset of "charged to" radios."""
    if len(choices) == 1:
        c = choices[0]
        title = f"<strong>{escape(c.flavor.display)}</strong>"
        return _radio(c, ids[0], c is checked, title, _details(c))
    first = choices[0]
    sub = f"{ids[0]}-f"
    radios = "".join(
        _radio(c, cid, c is checked, f"charged to {escape(fac.vos[str(c.vo)].display)}", "")
        for c, cid in zip(choices, ids, strict=True)
    )
    return (
        f'<fieldset class="af-flavor" aria-describedby="{sub}-d">'
        f"<legend>{escape(first.flavor.display)}</legend>"
        f'<span class="af-details" id="{sub}-d">{_details(first)}</span>{radios}</fieldset>'
    )


def render_catalog(fac: Facility, groups: Sequence[Group], default: str | None) -> str:
    """The catalog's HTML; ``default`` names the flavor checked when it can start."""
    enabled = [c for g in groups for c in g.choices if not c.blocked]
    first = next((c for c in enabled if c.flavor.name == default), None)
    checked = first or (enabled[0] if enabled else None)
    parts = [STYLE, PICKER_STYLE, '<div class="af-catalog">']
    n = 0
    for i, group in enumerate(groups):
        colour = COLOURS[i % len(COLOURS)]
        gid = f"af-group-{escape(group.key) or 'open'}"
        parts.append(
            f'<fieldset class="af-group" id="{gid}" style="--af-c:{colour}">'
            f"<legend>{escape(group.legend)}</legend>{_allowance_html(fac, group)}"
        )
        by_flavor: dict[str, list[Choice]] = {}
        for c in group.choices:
            by_flavor.setdefault(c.flavor.name, []).append(c)
        for choices in by_flavor.values():
            ids = [f"af-flavor-{n + k}" for k in range(len(choices))]
            n += len(choices)
            picker = image_picker(choices[0].flavor, ids[0])  # "" unless it offers images
            parts.append(_flavor_html(fac, choices, ids, checked) + picker)
        parts.append("</fieldset>")
    parts.append("</div>")
    if checked is None:
        parts.append(
            '<p class="alert alert-warning" role="status">Nothing you may start can start right '
            "now (see the reasons above); stop a server or try again later.</p>"
        )
    return "\n".join(parts)


def options_form(
    fac: Facility,
    user: UserContext,
    free: Free,
    usage: UsageOf | None = None,
    gpu_wait: str = "refuse",
) -> str:
    """The catalog of every flavor the user may start, grouped by experiment."""
    flavors = offered_flavors(fac, user)
    if not flavors:
        return (
            '<p class="alert alert-warning">No environment is available to you '
            f"(your VOs: {escape(', '.join(user.vos) or 'none')}). "
            "Ask your facility to add you to an experiment.</p>"
        )
    default = next((f for f in flavors if f.default), flavors[0])
    return render_catalog(fac, catalog(fac, user, free, usage, gpu_wait), default.name)


def options_from_form(formdata: Mapping[str, list[str]]) -> dict[str, str]:
    """Only the keys the form can send; values are validated later by policy.parse_options.

    A ``flavor/vo`` choice becomes ``flavor`` and ``vo`` (unless ``vo`` is sent as well).
    """
    out = {}
    for key in OPTION_KEYS:
        values = formdata.get(key) or []
        if values and values[0] != "":
            out[key] = values[0]
    flavor = out.get("flavor", "")
    if "/" in flavor and "vo" not in out:
        out["flavor"], out["vo"] = flavor.split("/", 1)
    if "image" not in out and (image := image_from_form(formdata, out.get("flavor", ""))):
        out["image"] = image  # the chosen flavor's picker; the others' are ignored
    extra = sorted(
        k for k in formdata if k not in OPTION_KEYS and k != "_xsrf" and not is_picker_field(k)
    )
    for key in extra:  # keep unknown keys so that policy refuses them with a clear message
        values = formdata.get(key) or [""]
        out[key] = values[0]
    return out
