"""The JSON Schema keywords whose meaning the engine's xgrammar enforces; anything else is a 400.

TensorRT-LLM 1.2.1 constrains output with xgrammar 0.1.32, which silently ignores some keywords
and compiles others wrongly (tried with its matcher, tests/unit/test_engine_guides.py):
`multipleOf`, `uniqueItems`, `contains`, `not`, `if`/`then`/`else`, `dependent*` are ignored (it
logs a warning at most); a `format` it does not know is ignored; every bound on a `number` is
wrong (`{"type": "number", "minimum": 1.5}` accepts `1x5` and `1.4`, `maximum: 10` accepts
`10.5`, `exclusiveMinimum: 0` refuses `0.5`); `oneOf` is compiled as `anyOf` (the "exactly one"
is lost); and a node with `$ref`, `const`, `enum` or `anyOf` ignores its other keywords
(cpp/json_schema_converter.cc, SchemaParser::Parse, at v0.1.32). Output that silently violates
the schema is worse than a refusal, so `check_schema` walks the schema and

* passes what is enforced exactly: `type` (one or a list, nullable types too), `properties`,
  `required`, `additionalProperties`, `items`, `minItems`/`maxItems`, `minLength`/`maxLength`,
  `pattern`, `format` (the `FORMATS` below), `enum`, `const`, `anyOf`, `$ref` with `$defs` /
  `definitions`, and the annotations (`title`, `description`, `default`, `examples`, ...);
* rewrites integer bounds to the inclusive whole-number bounds they mean (`exclusiveMinimum: 0`
  -> `minimum: 1`, `minimum: 1.5` -> `minimum: 2`), which xgrammar enforces exactly;
* refuses every other keyword, naming it and where it is (`#/properties/n/multipleOf`).

Sizes are capped before any of this runs (MAX_SCHEMA_BYTES, in structured.py).
"""
from __future__ import annotations

import math
from typing import Any

ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment",
                         "deprecated", "readOnly", "writeOnly"})
FORMATS = frozenset({"date", "time", "date-time", "email", "uuid", "ipv4"})
TYPES = frozenset({"string", "integer", "number", "boolean", "null", "array", "object"})
# keyword -> the type it constrains (a node must say that type, or xgrammar ignores the keyword)
TYPED = {"minLength": "string", "maxLength": "string", "pattern": "string", "format": "string",
         "minimum": "integer", "maximum": "integer", "exclusiveMinimum": "integer", "exclusiveMaximum": "integer",
         "items": "array", "minItems": "array", "maxItems": "array",
         "properties": "object", "required": "object", "additionalProperties": "object"}
COMBINERS = ("$ref", "const", "enum", "anyOf")     # xgrammar reads these alone, in this order
MAX_DEPTH = 32                                     # nested schemas (each level at least one keyword)
DEFS = ("$defs", "definitions")


class UnsupportedSchema(ValueError):
    """A schema keyword the engine would not enforce; `where` is its JSON pointer."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{message} (at {where})")
        self.where = where


def check_schema(schema: Any) -> Any:
    """The schema with integer bounds rewritten; raises UnsupportedSchema for what would go unenforced."""
    return _node(schema, "#", 0)


def _types(node: dict, where: str) -> set:
    t = node.get("type")
    if t is None:
        return set()
    types = t if isinstance(t, list) else [t]
    if not types or not all(isinstance(x, str) for x in types):
        raise UnsupportedSchema(f"{where}/type", "'type' must be a type name or a list of them")
    return set(types)


def _node(node: Any, where: str, depth: int) -> Any:
    if isinstance(node, bool):
        return node
    if not isinstance(node, dict):
        raise UnsupportedSchema(where, "a schema must be an object or a boolean")
    if depth > MAX_DEPTH:
        raise UnsupportedSchema(where, f"schemas nest at most {MAX_DEPTH} levels deep")
    out = {k: v for k, v in node.items() if k in ANNOTATIONS}
    for key in DEFS:
        if key in node:
            defs = node[key]
            if not isinstance(defs, dict):
                raise UnsupportedSchema(f"{where}/{key}", f"'{key}' must be an object")
            out[key] = {name: _node(sub, f"{where}/{key}/{name}", depth + 1) for name, sub in defs.items()}
    combiner = next((k for k in COMBINERS if k in node), None)
    if combiner is not None:
        allowed = {combiner, *ANNOTATIONS, *DEFS} | ({"type"} if combiner in ("const", "enum") else set())
        for key in node:
            if key not in allowed:
                raise UnsupportedSchema(f"{where}/{key}", f"'{key}' next to '{combiner}' would be ignored by the "
                                        f"decoder's grammar engine; move it into the '{combiner}' target")
        if "type" in node:
            out["type"] = node["type"]
        if combiner == "anyOf":
            if not isinstance(node["anyOf"], list) or not node["anyOf"]:
                raise UnsupportedSchema(f"{where}/anyOf", "'anyOf' must be a non-empty array")
            out["anyOf"] = [_node(sub, f"{where}/anyOf/{i}", depth + 1) for i, sub in enumerate(node["anyOf"])]
        else:
            out[combiner] = node[combiner]
        return out
    types = _types(node, where)
    if not types <= TYPES:
        raise UnsupportedSchema(f"{where}/type", f"unknown type {sorted(types - TYPES)}")
    for key, value in node.items():
        if key in ANNOTATIONS or key in DEFS:
            continue
        if key == "type":
            out[key] = value
            continue
        if key not in TYPED:
            raise UnsupportedSchema(f"{where}/{key}", f"the keyword '{key}' is not supported: the decoder's grammar "
                                    f"engine would not enforce it")
        want = TYPED[key]
        inferred = (want == "object" and not types and ("properties" in node or "additionalProperties" in node)
                    or want == "array" and not types and "items" in node)
        if want not in types and not inferred:
            if key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") and "number" in types:
                raise UnsupportedSchema(f"{where}/{key}", f"'{key}' on a number is not supported: the decoder's "
                                        f"grammar engine does not enforce number bounds; use an integer or "
                                        f"an enum")
            raise UnsupportedSchema(f"{where}/{key}", f"'{key}' needs \"type\": \"{want}\" here, or the decoder's "
                                    f"grammar engine ignores it")
        if key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") and "number" in types:
            raise UnsupportedSchema(f"{where}/{key}", f"'{key}' on a number is not supported: the decoder's "
                                    f"grammar engine does not enforce number bounds; use an integer or an enum")
        if key == "format" and (not isinstance(value, str) or value not in FORMATS):
            raise UnsupportedSchema(f"{where}/format", f"the format {value!r} is not supported (supported: "
                                    f"{', '.join(sorted(FORMATS))})")
        if key == "properties":
            if not isinstance(value, dict):
                raise UnsupportedSchema(f"{where}/properties", "'properties' must be an object")
            out[key] = {name: _node(sub, f"{where}/properties/{name}", depth + 1) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _node(value, f"{where}/{key}", depth + 1)
        else:
            out[key] = value
    _integer_bounds(out, where)
    return out


def _integer_bounds(node: dict, where: str) -> None:
    """Whole-number inclusive bounds for an integer: what xgrammar enforces exactly."""
    low, high = [], []
    for key in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        if key not in node:
            continue
        value = node.pop(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UnsupportedSchema(f"{where}/{key}", f"'{key}' must be a finite number")
        if key == "minimum":
            low.append(math.ceil(value))
        elif key == "exclusiveMinimum":
            low.append(math.floor(value) + 1)
        elif key == "maximum":
            high.append(math.floor(value))
        else:
            high.append(math.ceil(value) - 1)
    if low:
        node["minimum"] = max(low)
    if high:
        node["maximum"] = min(high)
    if low and high and node["minimum"] > node["maximum"]:
        raise UnsupportedSchema(where, "no integer lies within these bounds")
