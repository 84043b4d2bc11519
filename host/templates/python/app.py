"""{{name}}: a production report from the shop floor, one `;`-separated record
(`WORK_ORDER;QUANTITY;UNIT`), becomes one JSON event."""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import config, types

from version import VERSION  # written by `millrace plugin build` from millrace-plugin.toml


def rejected(reason, field=None, position=None):
    return Err(types.MediationError_Rejected(types.Rejection(reason, field, position)))


def source_setting():
    """The step setting `source`: which system the records come from."""
    source = config.get("source")
    return "mes" if source is None else source


class WitWorld(wit_world.WitWorld):
    def describe(self):
        return types.PluginInfo("{{name}}", VERSION, ["text/plain"], ["production.reported"])

    def check_settings(self):
        if source_setting() == "":
            raise Err("the setting `source` must not be empty")

    def mediate(self, input):
        try:
            text = bytes(input.body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise rejected(f"body is not valid UTF-8 at byte {e.start + 1}", None, e.start + 1)
        record = text.removesuffix("\n").removesuffix("\r")
        # Fields lose the spaces and tabs around them (the same rule in every template).
        fields = [f.strip(" \t") for f in record.split(";")]
        if len(fields) != 3:
            raise rejected(f"expected 3 fields WORK_ORDER;QUANTITY;UNIT, found {len(fields)}")
        work_order, quantity, unit = fields
        if work_order == "":
            raise rejected("work_order is empty", "work_order")
        if not (0 < len(quantity) <= 9 and all(c in "0123456789" for c in quantity)):
            raise rejected(f"quantity {json.dumps(quantity, ensure_ascii=False)} is not a whole number", "quantity")
        event = {
            "event": "production.reported",
            "plant": input.plant,
            "source": source_setting(),
            "work_order": work_order,
            "quantity": int(quantity),
            "unit": unit,
        }
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return [types.Message(f"{input.id}-1", input.plant, input.route, "application/json", [], body)]
