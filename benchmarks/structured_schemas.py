"""The schemas of benchmarks/structured.py, from small to large."""
from __future__ import annotations

SHORT = {"type": "string", "maxLength": 24}

SMALL = {"type": "object", "properties": {"name": SHORT, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
         "required": ["name", "age"], "additionalProperties": False}

MEDIUM = {"type": "object", "properties": {
    "title": SHORT, "day": {"type": "string", "format": "date"},
    "attendees": {"type": "array", "maxItems": 3, "items": {"type": "string", "format": "email", "maxLength": 32}},
    "priority": {"enum": ["low", "mid", "high"]}, "score": {"type": "number", "minimum": 0, "maximum": 10},
    "online": {"type": "boolean"}},
    "required": ["title", "day", "attendees", "priority", "score", "online"], "additionalProperties": False}

_ADDRESS = {"type": "object", "properties": {"street": SHORT, "city": SHORT, "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                                             "country": {"enum": ["US", "FR", "DE", "JP", "BR"]}},
            "required": ["street", "city", "zip", "country"], "additionalProperties": False}
LARGE = {"$defs": {"address": _ADDRESS, "item": {"type": "object", "properties": {
    "sku": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{4}$"}, "name": SHORT,
    "qty": {"type": "integer", "minimum": 1, "maximum": 99}, "price": {"type": "number", "minimum": 0},
    "tags": {"type": "array", "maxItems": 2, "items": {"enum": ["new", "sale", "gift"]}}},
    "required": ["sku", "name", "qty", "price", "tags"], "additionalProperties": False}},
    "type": "object", "properties": {
        "order_id": {"type": "string", "format": "uuid"}, "placed": {"type": "string", "format": "date-time"},
        "customer": {"type": "object", "properties": {"name": SHORT, "email": {"type": "string", "format": "email",
                                                                              "maxLength": 32},
                                                      "vip": {"type": "boolean"}},
                     "required": ["name", "email", "vip"], "additionalProperties": False},
        "shipping": {"$ref": "#/$defs/address"}, "billing": {"$ref": "#/$defs/address"},
        "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"$ref": "#/$defs/item"}},
        "status": {"enum": ["pending", "paid", "shipped", "delivered", "cancelled"]},
        "notes": {"type": ["string", "null"], "maxLength": 40}},
    "required": ["order_id", "placed", "customer", "shipping", "billing", "items", "status", "notes"],
    "additionalProperties": False}

SCHEMAS = {"small": SMALL, "medium": MEDIUM, "large": LARGE}
