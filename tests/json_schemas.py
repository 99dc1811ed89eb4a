"""Random JSON schemas and instances of them, for the tests of constrained answers that must close.

The schemas are objects with required fields of every kind the closing handles: strings (some with a
`maxLength`, which keeps a small model from looping inside one), integers, numbers, booleans,
enums, arrays and nested objects, plus optional fields. `instance` writes a valid value the way the
grammars write JSON (compact separators, properties in the schema's order).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

NAMES = ["title", "id", "count", "score", "ok", "level", "tags", "info", "note", "é_key"]
TEXT = st.text(alphabet=st.sampled_from(list('ab z"\\\né')), max_size=6)


@st.composite
def leaf_schemas(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["string", "integer", "number", "boolean", "enum"]))
    if kind == "string":
        schema: dict[str, Any] = {"type": "string"}
        if draw(st.booleans()):
            schema["maxLength"] = draw(st.integers(1, 12))
        return schema
    if kind == "enum":
        return {
            "type": "string",
            "enum": draw(st.lists(st.sampled_from(["low", "mid", "high", "x"]), min_size=1, max_size=3, unique=True)),
        }
    return {"type": kind}


def schemas(depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    """Object schemas, nested up to `depth` objects deep."""
    field = (
        leaf_schemas()
        if depth <= 1
        else st.one_of(leaf_schemas(), leaf_schemas(), schemas(depth - 1), arrays(depth - 1))
    )
    return st.builds(_object, st.lists(st.tuples(st.sampled_from(NAMES), field, st.booleans()), min_size=1, max_size=4))


def arrays(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    items = leaf_schemas() if depth <= 1 else st.one_of(leaf_schemas(), schemas(depth - 1))
    return st.builds(
        lambda item, least: {"type": "array", "items": item, **({"minItems": least} if least else {})},
        items,
        st.integers(0, 2),
    )


def _object(fields: list[tuple[str, dict[str, Any], bool]]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, schema, needed in fields:
        if name in properties:
            continue
        properties[name] = schema
        if needed or len(properties) == 1:
            required.append(name)
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


@st.composite
def instance(draw: st.DrawFn, schema: dict[str, Any]) -> Any:
    """A valid value of `schema` (dicts keep the schema's property order)."""
    if "enum" in schema:
        return draw(st.sampled_from(schema["enum"]))
    kind = schema["type"]
    if kind == "string":
        return draw(
            TEXT
            if "maxLength" not in schema
            else st.text(alphabet=st.sampled_from(list("ab zé")), max_size=schema["maxLength"])
        )
    if kind == "integer":
        return draw(st.integers(-1000, 100000))
    if kind == "number":
        return draw(st.one_of(st.integers(-50, 50), st.floats(-1e3, 1e3, allow_nan=False).map(lambda x: round(x, 3))))
    if kind == "boolean":
        return draw(st.booleans())
    if kind == "array":
        return [draw(instance(schema["items"])) for _ in range(draw(st.integers(schema.get("minItems", 0), 3)))]
    value: dict[str, Any] = {}
    for name, sub in schema["properties"].items():
        if name in schema["required"] or draw(st.booleans()):
            value[name] = draw(instance(sub))
    return value
