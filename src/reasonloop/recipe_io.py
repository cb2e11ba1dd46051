"""YAML with line numbers, dotted overrides, and validation errors a person can act on."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from reasonloop.errors import UserError
from reasonloop.stage_registry import stage_kinds

PACKAGED_RECIPES = resources.files("reasonloop") / "recipes"


def resolve_recipe_path(path: str | Path | None) -> Path:
    """`None` or a bare packaged name (`default`) means a recipe shipped with the package."""
    if path is None:
        path = "default"
    p = Path(path)
    if not p.exists() and p.suffix == "" and (PACKAGED_RECIPES / f"{p.name}.yaml").is_file():
        return Path(str(PACKAGED_RECIPES / f"{p.name}.yaml"))
    if not p.exists():
        raise UserError(f"{path}: recipe file not found")
    return p


def _node_lines(node: yaml.Node, prefix: tuple, out: dict[tuple, int]) -> None:
    out[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (key_node.value,)
            out[key] = key_node.start_mark.line + 1
            _node_lines(value_node, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, prefix + (i,), out)


# A recipe has a few hundred values; aliases that expand past this are an attack ("billion laughs"):
# walking or validating the expanded document would take minutes and gigabytes.
MAX_EXPANDED_VALUES = 100_000


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: YAML keeps the last silently, hiding the first setting."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` may be overridden by keys written beside it
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first set on line {seen[key]})", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
            except TypeError:
                continue  # unhashable key: the base constructor reports it
        return super().construct_mapping(node, deep)


class _Refused(Exception):
    def __init__(self, mark, why: str):
        self.line, self.why = mark.line + 1, why


def _check_expansion(root: yaml.Node) -> None:
    """Raise _Refused if aliases expand the document past MAX_EXPANDED_VALUES values or refer to themselves.
    Sizes are memoised per node, so the check itself costs one visit per distinct node."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in open_nodes:
            raise _Refused(n.start_mark, "an alias refers to its own anchor")
        open_nodes.add(id(n))
        children = [c for pair in n.value for c in pair] if isinstance(n, yaml.MappingNode) else \
            n.value if isinstance(n, yaml.SequenceNode) else []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_EXPANDED_VALUES:
                raise _Refused(child.start_mark, f"aliases expand the recipe past {MAX_EXPANDED_VALUES} values")
        open_nodes.discard(id(n))
        sizes[id(n)] = total
        return total

    size(root)


def _read_text(p: Path) -> str:
    if p.is_dir():
        raise UserError(f"{p}: is a folder, not a recipe file")
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise UserError(f"{p}: cannot read the recipe: {err.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(f"{p}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); save the recipe as "
                        "UTF-8") from None


def load_yaml_with_lines(path: str | Path | None) -> tuple[dict, dict[tuple, int], str]:
    """Parse a recipe; return the data, a map from field path to line, and the file's label."""
    p = resolve_recipe_path(path)
    loader = _RecipeLoader(_read_text(p))
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise UserError(f"{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    except _Refused as err:
        raise UserError(f"{p}:{err.line}: refused: {err.why} (no recipe needs that; a YAML bomb?)") from None
    except RecursionError:
        raise UserError(f"{p}: refused: the YAML is nested too deeply") from None
    finally:
        loader.dispose()
    if data is None:
        data, node = {}, None
    if not isinstance(data, dict):
        raise UserError(f"{p}: a recipe must be a mapping of settings, got {type(data).__name__}")
    lines: dict[tuple, int] = {}
    if node is not None:
        _node_lines(node, (), lines)
    return data, lines, str(p)


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """`stages.1.lr=2e-5` -> ("stages.1.lr", 2e-05); values are parsed as YAML scalars/lists."""
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. stages.1.optim.lr=2e-5")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


def apply_override(data: dict, dotted: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``a.b.c``; list indices are numbers; missing mappings are created."""
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise UserError(f"--set {dotted}: {where}: no list item {part!r} (list has {len(node)})")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise UserError(f"--set {dotted}: {'.'.join(parts[:i])} is a value, not a section")


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in stage_kinds() and out.endswith("]"):
            continue  # pydantic adds the discriminator value to the path; users never wrote it
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe(err: dict) -> str:
    kind, got = err["type"], err.get("input")
    if kind == "extra_forbidden":
        return "unknown setting (check the spelling; see `reasonloop validate --help` for the schema)"
    if kind == "missing":
        return "required setting is missing"
    expected = {
        "float_parsing": "float", "float_type": "float", "int_parsing": "integer", "int_type": "integer",
        "int_from_float": "integer", "bool_parsing": "true/false", "bool_type": "true/false",
        "string_type": "string", "list_type": "list", "dict_type": "mapping", "model_type": "mapping",
    }.get(kind)
    if expected:
        return f"expected {expected}, got {got!r}"
    if kind in ("literal_error", "union_tag_invalid"):
        return err["msg"].replace("Input should be", "expected") + f", got {got!r}"
    bound = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}.get(kind)
    if bound:
        return f"expected {bound} {next(iter(err.get('ctx', {}).values()), '?')}, got {got!r}"
    if kind in ("value_error", "assertion_error"):
        return err["msg"].split(", ", 1)[-1]
    if kind == "union_tag_not_found":
        return "each stage needs `kind:` (eval | sft | rft | rl)"
    return f"{err['msg']}, got {got!r}"


def _line_for(loc: tuple, lines: dict[tuple, int | str]) -> int | str | None:
    clean = tuple(p for p in loc if not (isinstance(p, str) and p in stage_kinds()))
    for cut in range(len(clean), -1, -1):
        if clean[:cut] in lines:
            return lines[clean[:cut]]
    return None


def validate_with_lines(model: type[BaseModel], data: dict, lines: dict[tuple, int], label: str):
    """Validate; on failure raise one UserError whose first line is the first problem, `file:line: path: why`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors():
            line = _line_for(err["loc"], lines)
            where = line if isinstance(line, str) else f"{label}:{line}" if line else label
            path = _field_path(err["loc"])
            msgs.append(f"{where}: {_describe(err)}" if not err["loc"] else f"{where}: {path}: {_describe(err)}")
        more = f" (and {len(msgs) - 1} more: " + "; ".join(msgs[1:4]) + ")" if len(msgs) > 1 else ""
        raise UserError(msgs[0] + more) from None
