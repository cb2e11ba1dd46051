"""`task.fields` values that build a problem's text from several record fields: `"{Body} {Question}"`.

A value with a brace is a template; any other value names one field, as before (`Question` and
`"{Question}"` read the same). Placeholders are plain field names only, with no `.attr`, `[index]`,
`!conversion` or `:format`: a record's values are data, and a template can only paste them. `{{` and `}}`
are literal braces.
"""

from __future__ import annotations

import string

from reasonloop.errors import UserError

TEMPLATE_KEYS = ("question", "answer", "reasoning", "id")
"""The `task.fields` keys that take a template (`difficulty` must name one numeric field)."""


def is_template(value: str) -> bool:
    return "{" in value or "}" in value


def template_parts(template: str) -> list[tuple[str, str | None]]:
    """(literal text, field name or None) pairs in order; ValueError naming what is wrong with a bad template."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:  # "Single '}' encountered", "expected '}' before end of string"
        raise ValueError(f"malformed template {template!r}: {err}") from None
    parts = []
    for literal, name, spec, conversion in parsed:
        if name is not None:
            if not name.strip():
                raise ValueError(f"template {template!r} has an empty placeholder {{}}; name a field, "
                                 "e.g. {Question}")
            if spec or conversion or any(c in name for c in ".["):
                raise ValueError(f"template {template!r}: placeholders are plain field names, e.g. "
                                 f"{{Question}}; got {{{name}{'!' + conversion if conversion else ''}"
                                 f"{':' + spec if spec else ''}}}")
        parts.append((literal, name))
    return parts


def template_fields(template: str) -> list[str]:
    """The field names a template reads, in order of first use."""
    return list(dict.fromkeys(name for _, name in template_parts(template) if name is not None))


def render(template: str, record: dict, where: str, key: str) -> str:
    """The template filled from one record; a field the record lacks (or holds as null) raises a UserError
    naming `where` (file:line, or file:row N) and the `task.fields` key."""
    out = []
    for literal, name in template_parts(template):
        out.append(literal)
        if name is None:
            continue
        if name not in record:
            have = ", ".join(map(str, record)) or "none"
            raise UserError(f"{where}: task.fields.{key}: template {template!r} names field {name!r}, which "
                            f"this record lacks (its fields: {have})")
        if record[name] is None:
            raise UserError(f"{where}: task.fields.{key}: template {template!r}: field {name!r} is null here")
        out.append(str(record[name]))
    return "".join(out)


def check_fields(fields: dict) -> dict:
    """Validate a `task.fields` mapping when the recipe loads: templates only where text is built, and each
    one well formed. Raises ValueError (the recipe loader adds the field path)."""
    for key, value in fields.items():
        if isinstance(value, dict):  # YAML read an unquoted `{Question}` as a mapping
            raise ValueError(f"{key}: quote a template in YAML, e.g. {key}: \"{{Body}} {{Question}}\"")
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a field name or a template string, got {type(value).__name__}")
        if is_template(value):
            if key not in TEMPLATE_KEYS:
                raise ValueError(f"{key}: must name one field; templates are for {', '.join(TEMPLATE_KEYS)}")
            try:
                template_parts(value)
            except ValueError as err:
                raise ValueError(f"{key}: {err}") from None
    return fields
