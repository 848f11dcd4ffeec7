"""The spawn form's image picker: a flavor's preset images and "Other..." (pure HTML).

Works without JavaScript: native radio inputs named ``image@<flavor>`` (one group per flavor,
so every flavor keeps its own pick while the user chooses the flavor), the "Other..." radio
with the value :data:`~afspawner.images.OTHER`, and a labelled text input
``image_other@<flavor>``. :func:`image_from_form` reads back the pick of the chosen flavor
only; the server decides whether it is allowed (:meth:`ImageChoice.check` via the policy).
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from afspawner.facility import Flavor
from afspawner.images import OTHER

PICK = "image@"
TYPED = "image_other@"
STYLE = (  # emitted once by form.render_catalog
    "<style>.af-images{margin:.2rem 0 .5rem 1.6rem}"
    ".af-images .af-choice{display:flex;margin:0}"
    ".af-other-ref{display:block;margin:.1rem 0 .3rem 1.6rem}"
    ".af-other-ref input{width:100%;max-width:32rem;font-family:monospace}</style>"
)


def image_picker(flavor: Flavor, fid: str) -> str:
    """The picker of ``flavor`` (``""`` when it offers one image only); ``fid`` is unique."""
    choice = flavor.image_choice
    if choice is None or (len(choice.presets) < 2 and not choice.allow):
        return ""
    name = escape(PICK + flavor.name)
    rows = []
    for k, preset in enumerate(choice.presets):
        rid = f"{fid}-img-{k}"
        checked = " checked" if k == 0 else ""
        shown = "" if preset.display == preset.image else f" <code>{escape(preset.image)}</code>"
        rows.append(
            f'<div class="af-choice"><input type="radio" id="{rid}" name="{name}" '
            f'value="{escape(preset.image)}"{checked}>'
            f'<label for="{rid}">{escape(preset.display)}{shown}</label></div>'
        )
    if choice.allow:
        oid = f"{fid}-img-other"
        rules = "Allowed: " + ", ".join(p.text for p in choice.allow)
        if choice.tags:
            rules += "; tags: " + ", ".join(t.text for t in choice.tags)
        if choice.require_digest:
            rules += "; pinned by digest (name@sha256:...)"
        rows.append(
            f'<div class="af-choice"><input type="radio" id="{oid}" name="{name}" '
            f'value="{escape(OTHER)}"><label for="{oid}">Other...</label></div>'
            f'<span class="af-other-ref"><label for="{oid}-ref">Image reference (with '
            f'"Other..."):</label> <input type="text" id="{oid}-ref" '
            f'name="{escape(TYPED + flavor.name)}" maxlength="512" autocomplete="off" '
            f'spellcheck="false" placeholder="registry/organization/image:tag" '
            f'aria-describedby="{oid}-d"><span class="af-details" id="{oid}-d">'
            f"{escape(rules)}</span></span>"
        )
    return (
        f'<fieldset class="af-flavor af-images" id="{fid}-img">'
        f"<legend>Image for {escape(flavor.display)}</legend>{''.join(rows)}</fieldset>"
    )


def is_picker_field(key: str) -> bool:
    """A field of some flavor's picker (only the chosen flavor's is read)."""
    return key.startswith((PICK, TYPED))


def image_from_form(formdata: Mapping[str, list[str]], flavor: str) -> str | None:
    """The image picked for ``flavor``: a preset's reference, the typed reference (surrounding
    spaces removed: a pasted line), :data:`OTHER` when "Other..." has an empty box, or
    ``None`` when the form has no picker for it."""
    picked = (formdata.get(PICK + flavor) or [""])[0]
    if picked != OTHER:
        return picked or None
    typed = [v.strip() for v in formdata.get(TYPED + flavor) or [] if v.strip()]
    return typed[0] if typed else OTHER
