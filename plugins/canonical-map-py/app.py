"""canonical-map in Python: the same behaviour as plugins/canonical-map (Rust), checked by the
same conformance vectors.

Replaces plant-local codes in a canonical event (work centres, materials, units, ...) with
canonical ones from the plant's lookup tables, and converts quantities to canonical units. Paths
address values in the CloudEvent: `data.work_centre`; `[]` walks every element of a list:
`data.purchase_orders[].items[].unit`. An unknown code is rejected naming the table and the key.
"""

import json
import math

import wit_world
from componentize_py_types import Err
from wit_world.imports import config, lookup, types

CLOUDEVENTS = "application/cloudevents+json"
VERSION = "1.0.0"


class Rejected(Exception):
    def __init__(self, reason, field=None):
        super().__init__(reason)
        self.reason = reason
        self.field = field


def quoted(text):
    """A string as the Rust twin quotes it in reasons ("WC99")."""
    return json.dumps(text, ensure_ascii=False)


def load_settings():
    settings = json.loads(config.document())
    allowed = {"codes", "units"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(f"invalid step settings: unknown field `{unknown[0]}`")
    codes = []
    for c in settings.get("codes", []):
        codes.append({"path": c["path"], "table": c["table"], "required": bool(c.get("required", False))})
    units = []
    for u in settings.get("units", []):
        units.append({
            "at": u.get("at", "data"),
            "quantity": u.get("quantity", "quantity"),
            "unit": u.get("unit", "unit"),
            "table": u["table"],
        })
    if not codes and not units:
        raise ValueError("nothing to map: give codes and/or units")
    for path in [c["path"] for c in codes] + [u["at"] for u in units]:
        if any(s == "" or s.removesuffix("[]") == "" for s in path.split(".")):
            raise ValueError(f"path {quoted(path)} must be names joined by dots")
    for table in [c["table"] for c in codes] + [u["table"] for u in units]:
        try:
            lookup.get(table, "")
        except Err:
            raise ValueError(f"lookup table {quoted(table)} is not configured for this plant")
    return codes, units


def segments(path):
    out = []
    for s in path.split("."):
        if s.endswith("[]"):
            out += [s[:-2], "[]"]
        else:
            out.append(s)
    return out


def for_each(value, path, at, f):
    """Call f(at, container, key) for every value at `path`; absent values are skipped."""
    head, rest = path[0], path[1:]
    if head == "[]":
        if isinstance(value, list):
            for i in range(len(value)):
                visit(value, i, rest, f"{at}[{i}]", f)
    elif isinstance(value, dict) and head in value:
        visit(value, head, rest, head if at == "" else f"{at}.{head}", f)


def visit(container, key, rest, at, f):
    if rest:
        for_each(container[key], rest, at, f)
    else:
        f(at, container, key)


def code(table, key, field):
    try:
        value = lookup.get(table, key)
    except Err:
        raise Rejected(f"lookup table {table} is missing for this plant")
    if value is None:
        raise Rejected(f"{field} {quoted(key)} is not in lookup table {table}", field)
    return value


def round_half_away(x):
    return math.copysign(math.floor(abs(x) + 0.5), x)


def convert(conversion, at, obj):
    if not isinstance(obj, dict):
        return
    unit = obj.get(conversion["unit"])
    if not isinstance(unit, str):
        return
    unit_at = f"{at}.{conversion['unit']}"
    target = code(conversion["table"], unit, unit_at)
    canonical, factor = target, 1.0
    if " " in target:
        canonical, _, text = target.partition(" ")
        try:
            factor = float(text.strip())
        except ValueError:
            factor = float("nan")
        if not (math.isfinite(factor) and factor > 0.0):
            raise Rejected(
                f"lookup table {conversion['table']} maps {quoted(unit)} to {quoted(target)}; "
                'expected "UNIT" or "UNIT FACTOR"'
            )
    if factor != 1.0:
        quantity_at = f"{at}.{conversion['quantity']}"
        quantity = obj.get(conversion["quantity"])
        if isinstance(quantity, bool) or not isinstance(quantity, (int, float)):
            raise Rejected(f"{quantity_at} is not a number", quantity_at)
        obj[conversion["quantity"]] = round_half_away(quantity * factor * 1e9) / 1e9
    obj[conversion["unit"]] = canonical


def mediate(codes, units, message):
    try:
        event = json.loads(bytes(message.body).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Rejected(f"body is not the expected JSON: {e}")
    if not isinstance(event, dict):
        raise Rejected("the body is not a CloudEvent object")
    for c in codes:
        found = 0

        def map_code(at, container, key):
            nonlocal found
            found += 1
            local = container[key]
            if not isinstance(local, str):
                raise Rejected(f"{at} is not a text code", at)
            container[key] = code(c["table"], local, at)

        for_each(event, segments(c["path"]), "", map_code)
        if found == 0 and c["required"]:
            raise Rejected(f"{c['path']} is required but missing", c["path"])
    for u in units:
        for_each(event, segments(u["at"]), "", lambda at, container, key: convert(u, at, container[key]))
    body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return types.Message(message.id, message.plant, message.route, CLOUDEVENTS, [], body)


_SETTINGS = None


def settings_or_error():
    """The step's settings, read once per instance; a string says what is wrong with them."""
    global _SETTINGS
    if _SETTINGS is None:
        try:
            _SETTINGS = load_settings()
        except (ValueError, KeyError, TypeError) as e:
            _SETTINGS = str(e)
    return _SETTINGS


class WitWorld(wit_world.WitWorld):
    def _settings(self):
        return settings_or_error()

    def describe(self):
        return types.PluginInfo("canonical-map-py", VERSION, [CLOUDEVENTS], [])

    def check_settings(self):
        settings = self._settings()
        if isinstance(settings, str):
            raise Err(settings)

    def mediate(self, input):
        settings = self._settings()
        if isinstance(settings, str):
            raise Err(types.MediationError_Rejected(
                types.Rejection(f"step settings are invalid: {settings}", None, None)))
        try:
            return [mediate(settings[0], settings[1], input)]
        except Rejected as r:
            raise Err(types.MediationError_Rejected(types.Rejection(r.reason, r.field, None)))
