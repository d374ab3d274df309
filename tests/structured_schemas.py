"""JSON schemas for the structured-output tests: each a (name, schema) pair that the model
must satisfy. Strings are bounded (maxLength, enum, format or pattern) where a small model
could otherwise ramble past the token budget."""
from __future__ import annotations

NAME = {"type": "string", "minLength": 1, "maxLength": 20}

SCHEMAS: list[tuple[str, dict]] = [
    ("person", {"type": "object", "properties": {"name": NAME, "age": {"type": "integer"}},
                "required": ["name", "age"]}),
    ("enum_colour", {"type": "string", "enum": ["red", "green", "blue"]}),
    ("integer_range", {"type": "integer", "minimum": 10, "maximum": 99}),
    # Numbers sit in objects: a bare top-level number gives a small model no reason to stop
    # adding digits (valid, but it runs out of tokens).
    ("number_exclusive", {"type": "object", "properties": {"price": {"type": "number", "exclusiveMinimum": 0,
                                                                     "exclusiveMaximum": 5}}, "required": ["price"]}),
    ("unit_interval", {"type": "object", "properties": {"p": {"type": "number", "minimum": 0, "maximum": 1}},
                       "required": ["p"], "additionalProperties": False}),
    ("boolean", {"type": "boolean"}),
    ("null", {"type": "null"}),
    ("int_array_bounds", {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9},
                          "minItems": 1, "maxItems": 3}),
    ("string_array", {"type": "array", "items": {"type": "string", "maxLength": 10},
                      "minItems": 2, "maxItems": 2}),
    ("nested_address", {"type": "object", "properties": {
        "name": NAME,
        "address": {"type": "object", "properties": {"city": NAME, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"], "additionalProperties": False}},
        "required": ["name", "address"], "additionalProperties": False}),
    ("ref_defs", {"$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                                      "required": ["x", "y"], "additionalProperties": False}},
                  "type": "object", "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
                  "required": ["start", "end"], "additionalProperties": False}),
    ("ref_definitions", {"definitions": {"tag": {"type": "string", "enum": ["a", "b", "c"]}},
                         "type": "array", "items": {"$ref": "#/definitions/tag"}, "maxItems": 4}),
    ("optional_fields", {"type": "object", "properties": {"id": {"type": "integer"}, "note": NAME, "flag": {"type": "boolean"}},
                         "required": ["id"], "additionalProperties": False}),
    ("format_date", {"type": "object", "properties": {"born": {"type": "string", "format": "date"}}, "required": ["born"]}),
    ("format_email", {"type": "string", "format": "email", "maxLength": 40}),
    ("format_date_time", {"type": "string", "format": "date-time"}),
    ("format_time", {"type": "string", "format": "time"}),
    ("format_uuid", {"type": "string", "format": "uuid"}),
    ("format_ipv4", {"type": "string", "format": "ipv4"}),
    ("pattern_code", {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}),
    ("const", {"type": "object", "properties": {"version": {"const": 2}, "kind": {"const": "report"}},
               "required": ["version", "kind"]}),
    ("any_of", {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "maxLength": 8}]}),
    ("type_list_nullable", {"type": "object", "properties": {"middle": {"type": ["string", "null"], "maxLength": 12}},
                            "required": ["middle"], "additionalProperties": False}),
    ("array_of_objects", {"type": "array", "minItems": 1, "maxItems": 3, "items": {
        "type": "object", "properties": {"sku": {"type": "string", "pattern": "^[a-z]{2}[0-9]{3}$"},
                                         "qty": {"type": "integer", "minimum": 1, "maximum": 100}},
        "required": ["sku", "qty"], "additionalProperties": False}}),
    ("matrix", {"type": "array", "minItems": 2, "maxItems": 2,
                "items": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "number"}}}),
    ("enum_numbers", {"enum": [1, 2, 3.5, "four", None]}),
    ("string_lengths", {"type": "string", "minLength": 3, "maxLength": 6}),
    ("prefix_items", {"type": "array", "prefixItems": [{"type": "string", "maxLength": 10}, {"type": "integer"},
                                                       {"type": "boolean"}], "items": False}),
    ("all_of", {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                          {"type": "object", "properties": {"b": {"type": "boolean"}}, "required": ["b"]}]}),
    ("deep_nesting", {"type": "object", "properties": {"l1": {"type": "object", "properties": {
        "l2": {"type": "object", "properties": {"l3": {"type": "array", "maxItems": 2, "items": {"type": "integer"}}},
               "required": ["l3"], "additionalProperties": False}}, "required": ["l2"], "additionalProperties": False}},
        "required": ["l1"], "additionalProperties": False}),
    ("recursive_tree", {"$defs": {"node": {"type": "object", "properties": {
        "v": {"type": "integer", "minimum": 0, "maximum": 9},
        "kids": {"type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/node"}}},
        "required": ["v", "kids"], "additionalProperties": False}}, "$ref": "#/$defs/node"}),
    ("integer_negative", {"type": "integer", "minimum": -50, "maximum": -10}),
    ("one_of_disjoint", {"oneOf": [{"type": "boolean"}, {"type": "null"}]}),
    ("multiple_of", {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 100}),
    ("pattern_properties", {"type": "object", "patternProperties": {"^n_[a-z]$": {"type": "integer"}},
                            "additionalProperties": False, "maxProperties": 2}),
    ("event", {"type": "object", "properties": {
        "title": NAME, "day": {"type": "string", "format": "date"},
        "attendees": {"type": "array", "maxItems": 3, "items": {"type": "string", "format": "email", "maxLength": 30}},
        "priority": {"enum": ["low", "mid", "high"]}, "score": {"type": "number", "minimum": 0, "maximum": 10}},
        "required": ["title", "day", "priority"], "additionalProperties": False}),
    ("single_key", {"type": "object", "properties": {"k": {"type": "integer"}}, "required": ["k"],
                                 "additionalProperties": False}),
]

#: Schemas llguidance cannot enforce: compile_grammar must refuse them.
UNSUPPORTED: list[tuple[str, dict]] = [
    ("not", {"not": {"type": "string"}}),
    ("unknown_format", {"type": "string", "format": "no-such-format"}),
    ("bad_type", {"type": "strng"}),
    ("dangling_ref", {"$ref": "#/$defs/missing"}),
    ("unique_items", {"type": "array", "uniqueItems": True}),
    ("contains", {"type": "array", "contains": {"type": "integer"}}),
    ("optional_max_properties", {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"},
                                                                  "z": {"type": "integer"}},
                                 "additionalProperties": False, "minProperties": 1, "maxProperties": 2}),
    ("property_names", {"type": "object", "propertyNames": {"maxLength": 3}}),
]
