"""The spawn page's options form (HTML) and its parsing back into user_options."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from html import escape

from afcore.quantity import human_cpu, human_memory
from afspawner.facility import Facility, Flavor
from afspawner.policy import OPTION_KEYS, UserContext, offered_flavors


def _gpu_line(fac: Facility, flavor: Flavor, free: Callable[[str], int | None]) -> str:
    if flavor.gpu is None:
        return ""
    gclass = fac.gpu_classes[flavor.gpu.gpu_class]
    n = free(gclass.name)
    avail = "availability unknown" if n is None else (f"{n} free now" if n > 0 else "none free now")
    return f" · {flavor.gpu.count} x {escape(gclass.display)} GPU ({avail})"


def options_form(fac: Facility, user: UserContext, free: Callable[[str], int | None]) -> str:
    """Radio buttons for every flavor the user may start, with VO choice and GPU availability."""
    flavors = offered_flavors(fac, user)
    if not flavors:
        return (
            '<p class="alert alert-warning">No environment is available to you '
            f"(your VOs: {escape(', '.join(user.vos) or 'none')}). "
            "Ask your facility to add you to an experiment.</p>"
        )
    default = next((f for f in flavors if f.default), flavors[0])
    rows = []
    for f in flavors:
        checked = " checked" if f is default else ""
        details = (
            f"{human_cpu(f.cpu_millis)} CPU · {human_memory(f.memory_bytes)} memory"
            f"{_gpu_line(fac, f, free)}"
        )
        desc = f"<br><small>{escape(f.description)}</small>" if f.description else ""
        rows.append(
            f'<div class="radio"><label><input type="radio" name="flavor" '
            f'value="{escape(f.name)}"{checked}> <strong>{escape(f.display)}</strong> '
            f'<span class="text-muted">{details}</span>{desc}</label></div>'
        )
    html = ["<fieldset><legend>Environment</legend>", *rows, "</fieldset>"]
    if len(user.vos) > 1:
        options = "".join(
            f'<option value="{escape(v)}">{escape(fac.vos[v].display)}</option>'
            for v in user.vos
            if v in fac.vos
        )
        html.append(
            '<label for="af-vo">Charge to experiment</label>'
            f'<select id="af-vo" name="vo" class="form-control">{options}</select>'
        )
    return "\n".join(html)


def options_from_form(formdata: Mapping[str, list[str]]) -> dict[str, str]:
    """Only the keys the form can send; values are validated later by policy.parse_options."""
    out = {}
    for key in OPTION_KEYS:
        values = formdata.get(key) or []
        if values and values[0] != "":
            out[key] = values[0]
    extra = sorted(k for k in formdata if k not in OPTION_KEYS and k != "_xsrf")
    for key in extra:  # keep unknown keys so that policy refuses them with a clear message
        values = formdata.get(key) or [""]
        out[key] = values[0]
    return out
