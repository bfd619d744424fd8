"""The config schema: `config.schema.yaml`, whose method parts (the `compression:` and
`recovery:` entries and a joint entry's `quantize:`) are generated from the methods' settings
dataclasses (`registry.setting`). Validation uses the generated parts, so a method added as one
file is configurable at once; the shipped file shows them to readers and editors, and
`tests/test_registry.py` fails until it is rewritten:

    python -m knowledge_recovery.pipeline.schema          # rewrite the generated parts
    python -m knowledge_recovery.pipeline.schema --check  # exit 1 if they are out of date
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import re
import sys
from pathlib import Path

import yaml

from knowledge_recovery.registry import (compression_methods, default_of, field_schema,
                                         recovery_methods, setting_fields)

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
# a generated part: the node after "# generated <part> ..." down to END
BEGIN = "# generated {part} from the methods' settings: python -m knowledge_recovery.pipeline.schema"
END = "# end of generated part"
# Where each generated part sits in the schema, by the key path of its node.
PARTS = {"quantization": ("$defs", "quantization"),
         "compression": ("properties", "compression", "items"),
         "recovery": ("properties", "recovery", "items")}


def _properties(records, entry_level: bool = True) -> dict:
    """Each setting any of the records takes, once: its schema (the same for every method that
    takes it: a conflict is an error) and its help, prefixed with the methods whose help it is
    when not all of them share it."""
    schemas, helps, first = {}, {}, {}
    for record in records:
        for f in setting_fields(record.settings):
            if not entry_level and f.metadata["entry_level"]:
                continue
            schema = field_schema(record.settings, f)
            first.setdefault(f.name, record.name)
            if schemas.setdefault(f.name, schema) != schema:
                raise TypeError(f"setting {f.name!r} of method {record.name!r} has schema "
                                f"{schema}, method {first[f.name]!r}'s has {schemas[f.name]}")
            helps.setdefault(f.name, {}).setdefault(f.metadata["help"], []).append(record.name)
    out = {"method": {"enum": [r.name for r in records]}}
    for name, schema in schemas.items():
        texts = helps[name]
        everyone = len(texts) == 1 and len(next(iter(texts.values()))) == len(records)
        text = "; ".join(t if everyone else f"{', '.join(names)}: {t}"
                         for t, names in texts.items())
        out[name] = {**schema, "description": text}
    return out


def _then(record, defaults_of: list) -> dict:
    """What an entry of `record` must give and what is filled in when it leaves it out:
    `defaults_of` lists the records whose defaults apply."""
    required = [f.name for f in setting_fields(record.settings)
                if default_of(f) is dataclasses.MISSING]
    defaults = {}
    for other in defaults_of:
        for f in setting_fields(other.settings):
            value = default_of(f)
            if value is not dataclasses.MISSING and value is not None:
                defaults.setdefault(f.name, {"default": value})
    then = {}
    if required:
        then["required"] = required
    if defaults:
        then["properties"] = defaults
    return then


def _rules(records, defaults_of) -> list[dict]:
    """One `if method in [...] then ...` rule per distinct requirement, methods with the same
    one sharing it."""
    rules: list[tuple[list[str], dict]] = []
    for record in records:
        then = _then(record, defaults_of(record))
        if not then:
            continue
        same = next((names for names, t in rules if t == then), None)
        if same is None:
            rules.append(([record.name], then))
        else:
            same.append(record.name)
    return [{"if": {"properties": {"method": {"const": names[0]} if len(names) == 1
                                   else {"enum": names}}},
             "then": then} for names, then in rules]


def _family_defaults(records):
    """A compression entry is filled in with the defaults of every method of its family
    (damping for every pruning method): the keys of an entry do not depend on its method within
    a family, which results folders made before the settings were typed rely on (their specs,
    which decide re-runs, have them). The family's widest method comes first, so that the keys
    keep their order. A method ignores the family settings it does not take; check_settings
    refuses them when written."""

    def of(record):
        family = [r for r in records if r.family == record.family]
        return sorted(family, key=lambda r: -len(setting_fields(r.settings)))

    return of


def method_parts() -> dict:
    """The generated parts of the schema, by the names of PARTS."""
    # by name: a registry's order is the order its modules happened to be imported in
    compression = sorted(compression_methods().values(), key=lambda r: r.name)
    recovery = sorted(recovery_methods().values(), key=lambda r: r.name)
    quantizers = [r for r in compression if r.family == "quantization"]
    parts = {}
    sub = _properties(quantizers, entry_level=False)
    parts["quantization"] = {
        "description": "a quantization stage after pruning (a joint entry's `quantize:`)",
        "type": "object", "additionalProperties": False, "required": ["method"],
        "properties": sub,
        "allOf": [{"if": rule["if"], "then": {
            **({"required": rule["then"]["required"]} if "required" in rule["then"] else {}),
            **({"properties": {k: v for k, v in rule["then"].get("properties", {}).items()
                               if k in sub}} if rule["then"].get("properties") else {})}}
                  for rule in _rules(quantizers, _family_defaults(quantizers))]}
    parts["compression"] = {
        "type": "object", "additionalProperties": False, "required": ["method"],
        "properties": _properties(compression),
        "allOf": _rules(compression, _family_defaults(compression))}
    parts["recovery"] = {
        "type": "object", "additionalProperties": False, "required": ["method"],
        "properties": _properties(recovery),
        "allOf": _rules(recovery, lambda record: [record])}
    return parts


def schema() -> dict:
    """The schema that configs are validated against: the shipped file's hand-written parts
    and the methods' generated ones (do not change the dict: it is shared). Made once per set
    of registered methods: every validation reads it twice, and a method registered later (a
    module of one's own) gets a schema that knows it."""
    return _schema(tuple(compression_methods()), tuple(recovery_methods()))


@functools.cache
def _schema(compression: tuple, recovery: tuple) -> dict:
    out = yaml.safe_load(SCHEMA_PATH.read_text())
    for name, part in method_parts().items():
        *path, last = PARTS[name]
        node = out
        for key in path:
            node = node[key]
        node[last] = copy.deepcopy(part)
    return out


def render(text: str) -> str:
    """The schema file's text with its generated parts rewritten: each is the node between a
    BEGIN and an END comment line, at the indentation of the BEGIN line."""
    parts = method_parts()
    pattern = re.compile(rf"^( *)# generated (\w+) from [^\n]*\n(.*?)^ *{re.escape(END)}\n",
                         re.S | re.M)
    found = []

    def replace(match):
        indent, name = match.group(1), match.group(2)
        if name not in PARTS:
            raise ValueError(f"{SCHEMA_PATH}: no generated part {name!r} (parts: {list(PARTS)})")
        found.append(name)
        dumped = yaml.safe_dump({PARTS[name][-1]: parts[name]}, sort_keys=False, width=96,
                                default_flow_style=None, allow_unicode=True)
        body = "".join(indent + line if line.strip() else line
                       for line in dumped.splitlines(keepends=True))
        return f"{indent}{BEGIN.format(part=name)}\n{body}{indent}{END}\n"

    out = pattern.sub(replace, text)
    if sorted(found) != sorted(PARTS):
        raise ValueError(f"{SCHEMA_PATH}: generated parts {sorted(found)}, expected "
                         f"{sorted(PARTS)}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the shipped schema's generated parts are out of date")
    args = parser.parse_args(argv)
    text = SCHEMA_PATH.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{SCHEMA_PATH} is out of date: run python -m knowledge_recovery.pipeline.schema",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        SCHEMA_PATH.write_text(new)
        print(f"rewrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
