#!/usr/bin/python3
"""An independent Sparkplug B encoder: Google's protobuf runtime with the Eclipse Tahu schema
(sparkplug_b.proto, compiled by protoc at run time), nothing shared with the plugin.

    encode.py SPEC.json OUT.bin         one payload from a JSON description
    encode.py --vectors DIR             every DIR/CASE/payload.json -> DIR/CASE/input.bin
    encode.py --check DIR               the same, failing if an input.bin differs

A description: {"timestamp": MS, "seq": N, "uuid": S, "metrics": [METRIC, ...]} where METRIC is
{"name", "alias", "timestamp", "datatype" (a name such as "Int8" or a number), "value",
"is_null", "is_historical", "properties": {KEY: STRING}, "omit_datatype" (a DATA message's
metric, typed by its BIRTH), "value_as" (a datatype whose field carries the value)}. Values are placed the way Tahu's
Python client places them: Int8/16/32 in int_value (negatives as two's complement of their
width), Int64/UInt64/DateTime in long_value, arrays packed little-endian in bytes_value,
Bytes/File from base64, DataSet as {"columns", "types", "rows"}, Template as
{"template_ref", "metrics": [METRIC, ...]}. Needs protoc and the protobuf package (Debian:
protobuf-compiler, python3-protobuf).
"""
import base64
import importlib
import json
import pathlib
import struct
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent


def load_schema():
    out = tempfile.mkdtemp(prefix="sparkplug-pb2-")
    subprocess.run(
        ["protoc", f"--proto_path={HERE}", f"--python_out={out}", str(HERE / "sparkplug_b.proto")],
        check=True,
    )
    sys.path.insert(0, out)
    return importlib.import_module("sparkplug_b_pb2")


pb = load_schema()


def datatype(value):
    return value if isinstance(value, int) else pb.DataType.Value(value)


WIDTH = {"Int8": 8, "Int16": 16, "Int32": 32, "Int64": 64}
PACK = {
    "Int8Array": "b", "Int16Array": "h", "Int32Array": "i", "Int64Array": "q",
    "UInt8Array": "B", "UInt16Array": "H", "UInt32Array": "I", "UInt64Array": "Q",
    "FloatArray": "f", "DoubleArray": "d", "DateTimeArray": "q",
}


def set_value(target, kind, value):
    """Place `value` of datatype `kind` (a name) in a Metric or DataSetValue."""
    if kind in WIDTH:
        bits = WIDTH[kind]
        if value < 0:
            value += 1 << bits
        if bits == 64:
            target.long_value = value
        else:
            target.int_value = value
    elif kind in ("UInt8", "UInt16", "UInt32"):
        target.int_value = value
    elif kind in ("UInt64", "DateTime"):
        target.long_value = value
    elif kind == "Float":
        target.float_value = value
    elif kind == "Double":
        target.double_value = value
    elif kind == "Boolean":
        target.boolean_value = value
    elif kind in ("String", "Text", "UUID"):
        target.string_value = value
    elif kind in ("Bytes", "File"):
        target.bytes_value = base64.b64decode(value)
    elif kind in PACK:
        target.bytes_value = struct.pack("<%d%s" % (len(value), PACK[kind]), *value)
    elif kind == "BooleanArray":
        bits = bytearray((len(value) + 7) // 8)
        for i, b in enumerate(value):
            if b:
                bits[i // 8] |= 0x80 >> (i % 8)
        target.bytes_value = struct.pack("<I", len(value)) + bytes(bits)
    elif kind == "StringArray":
        target.bytes_value = b"".join(s.encode() + b"\0" for s in value)
    elif kind == "DataSet":
        ds = target.dataset_value
        ds.num_of_columns = len(value["columns"])
        ds.columns.extend(value["columns"])
        ds.types.extend(datatype(t) for t in value["types"])
        for row in value["rows"]:
            r = ds.rows.add()
            for t, cell in zip(value["types"], row):
                element = r.elements.add()
                if cell is not None:
                    set_value(element, t, cell)
    elif kind == "Template":
        t = target.template_value
        if "template_ref" in value:
            t.template_ref = value["template_ref"]
        if value.get("is_definition"):
            t.is_definition = True
        for m in value.get("metrics", []):
            fill_metric(t.metrics.add(), m)
    else:
        raise ValueError(f"no encoding for {kind}")


def copy_fields(message, spec, names):
    for name in names:
        if name in spec:
            setattr(message, name, spec[name])


def fill_metric(metric, spec):
    copy_fields(metric, spec, ("name", "alias", "timestamp"))
    kind = spec.get("datatype")
    if kind is not None and not spec.get("omit_datatype"):
        metric.datatype = datatype(kind)
    if spec.get("is_historical"):
        metric.is_historical = True
    if spec.get("is_null"):
        metric.is_null = True
    for key, text in spec.get("properties", {}).items():
        metric.properties.keys.append(key)
        pv = metric.properties.values.add()
        pv.type = pb.DataType.Value("String")
        pv.string_value = text
    if "value" in spec:
        # value_as: the field of another datatype (a writer's mistake, for tests).
        name = spec.get("value_as") or (kind if isinstance(kind, str) else pb.DataType.Name(kind))
        set_value(metric, name, spec["value"])


def encode(spec):
    payload = pb.Payload()
    copy_fields(payload, spec, ("timestamp", "seq", "uuid"))
    for m in spec.get("metrics", []):
        fill_metric(payload.metrics.add(), m)
    return payload.SerializeToString()


def vectors(root, check):
    differ = []
    for spec in sorted(pathlib.Path(root).glob("*/payload.json")):
        data = encode(json.loads(spec.read_text()))
        out = spec.parent / "input.bin"
        if check:
            if not out.exists() or out.read_bytes() != data:
                differ.append(str(out))
        else:
            out.write_bytes(data)
    if differ:
        sys.exit("encode.py: not what the independent encoder writes: " + ", ".join(differ))


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 2 and args[0] in ("--vectors", "--check"):
        vectors(args[1], args[0] == "--check")
    elif len(args) == 2:
        pathlib.Path(args[1]).write_bytes(encode(json.loads(pathlib.Path(args[0]).read_text())))
    else:
        sys.exit(__doc__)
