#!/usr/bin/env python3
"""Differential check of the x12-856 plugin against pyx12, an independent X12 reader.

What is compared
----------------
The cases are plugins/x12-856/corpus/*/input.edi (real-world files, see SOURCES.md) and
plugins/x12-856/vectors/*/input.x12. Our plugin's answer to each is the expected.json beside the
input: either {"outputs": [CloudEvent, ...]}, one event per 856 transaction set, or
{"rejected": {"reason", "field", "position"}}. (`millrace plugin test
target/plugins/x12-856.wasm --vectors DIR` checks that expected.json is what the built plugin
answers.)

Each input is read again with pyx12's X12Reader (PyPI package pyx12), which takes the
separators from the fixed-width ISA, yields one segment object per segment and checks the
envelopes (SE/GE/IEA counts and control numbers, HL numbering and parents). From those segments
alone, for every ST..SE set whose ST01 is 856, this script derives:

  ST02, GS08 (of the enclosing group), BSN02, BSN03 (CCYYMMDD, or YYMMDD with Python's %y century
  rule, as YYYY-MM-DD), TD502/TD503 of the first TD5 with a TD503 in a shipment-level (HL03 = S)
  loop, and per SN1, in document order: its SN102 (as a number) and SN103, LIN01 (as a line
  number when it is a positive integer), the (qualifier, value) pairs of the LIN of the same HL
  loop, and the PRF01 nearest on the HL path (the loop itself, then its HL02 parents; an HL with
  an empty HL02 has no parent, as HL02 is the only link X12 defines).

For a file we accept, every value must agree with our events: the sets pair up in order, and the
items, grouped by purchase order in order of first appearance with document order kept inside a
group (how our events group them), must be equal, quantities compared numerically. Every PRF01 in
the set must appear as a purchase order. Any difference is a DIFFER, and so is a file pyx12 cannot
read at all.

For a file we reject, the question is whether pyx12 also reports an error. pyx12's "Segment
contains a leading space" is counted as layout, not as an error: pyx12 strips the space and reads
on, and indentation between segments is allowed by our reader by design. A file we reject that
pyx12 reads without an error is a DIFFER (a finding), shown with our reason and what pyx12's
segments contain.

How pyx12 is fed
----------------
First as shipped: X12Reader(path), which decodes the file as ASCII and only accepts ISA12 00401
and 00501 (the two HIPAA versions it has maps for). When that refuses the file, the script
retries once with these changes, each named in the output; each is a tolerance our reader has by
design or lifts a limit of pyx12 that is no X12 rule: the bytes are decoded as UTF-8 (else ISO
8859-1), a leading byte-order mark is dropped, and an ISA12 that is five digits but not
00401/00501 is shown to pyx12 as 00401 (ISA12 is not among the compared values, and pyx12's
segment reading does not depend on it). An ISA12 that is not five digits
at ISA offsets 84-88 means the ISA is not fixed-width, and that refusal stands.

Run
---
    python3 -m venv /tmp/pyx12-venv && /tmp/pyx12-venv/bin/pip install pyx12==4.0.0
    /tmp/pyx12-venv/bin/python plugins/x12-856/corpus/differential.py [CASE_DIR ...]

With no arguments every corpus and vectors case is checked. Output: one line per file (file,
our verdict, pyx12's verdict, AGREE/DIFFER with details), then a summary line with the counts.
Exit status 1 when a file differs for a reason not listed in KNOWN (explained in
DIFFERENTIAL.md) or a listed one no longer differs, 2 when pyx12 is missing or an argument is
wrong, else 0. The test command (scripts/test) runs it.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

try:
    import pyx12
    import pyx12.errors
    from pyx12.segment import Segment
    from pyx12.x12file import X12Reader
except ImportError:
    print(
        "pyx12 is not installed here: run this with the venv's python (see the docstring)"
    )
    sys.exit(2)

CORPUS = Path(__file__).resolve().parent

# Differences explained in DIFFERENTIAL.md: the case folder → why. Any other difference, or one of
# these that no longer differs, fails the check.
KNOWN = {
    "18-oopfactory-004010-pipe-component-sk-vn-bom": "HL02 empty everywhere: the plugin takes the "
    "nearest level above as the parent (README), pyx12 sees no parent",
    "04-stupidedi-004010-shipment-level-only": "the plugin refuses a ship notice without items",
    "16-oopfactory-003060-ship-item-bom": "BSN02 is mandatory; pyx12 does not check 856 elements",
    "05-bad-quantity": "SN102 '7,5' is no X12 decimal; pyx12 does not check 856 data types",
    "06-version-before-003010": "versions before 003010 are outside the plugin's range",
}
VECTORS = CORPUS.parent / "vectors"

# The ISA12 values pyx12's RawX12File accepts; ISA12 sits at offsets 84-88 of the 106-char ISA.
PYX12_ISA12 = ("00401", "00501")
ISA12_AT = slice(84, 89)

# pyx12 errors that are about layout between segments, not about the data (see the docstring).
LAYOUT_ONLY = ("Segment contains a leading space",)

# An X12 decimal (type R): optional minus, digits with an optional point, optional exponent.
X12_DECIMAL = re.compile(r"-?(\d+\.?\d*|\.\d+)(E-?\d+)?")


# --- reading with pyx12 -----------------------------------------------------------------------


@dataclass
class Reading:
    """What pyx12 made of one file."""

    segments: list[Segment] | None  # None: pyx12 refused the file
    errors: list[str]  # pyx12's exception, or the errors it collected while reading
    layout: list[str]  # pyx12's layout-only remarks
    adapted: list[str]  # the changes made before the retry, empty when read as shipped
    shipped_refusal: str = ""  # why pyx12 as shipped refused the file, when it did


def one_line(text: object, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_reader(source) -> tuple[list[Segment], list[str], list[str]]:
    """Read every segment with X12Reader; return them with its errors and layout remarks."""
    with X12Reader(source) as reader:
        segments = list(reader)
        reader.cleanup()  # reports ST/GS/ISA loops left open at the end
        found = reader.pop_errors()
    errors, layout = [], []
    for kind, code, message, _value, line in found:
        where = f" (segment {line})" if line else ""
        text = f"{kind} {code}: {message}{where}"
        (layout if message in LAYOUT_ONLY else errors).append(text)
    return segments, errors, layout


def adapt(raw: bytes) -> tuple[str, list[str]]:
    """The input as text with our reader's tolerances applied, and the list of what changed."""
    changes = []
    try:
        text = raw.decode("utf-8")
        if not raw.isascii():
            changes.append("decoded as UTF-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
        changes.append("decoded as ISO 8859-1")
    if text.startswith("\ufeff"):
        text = text[1:]
        changes.append("BOM dropped")
    isa12 = text[ISA12_AT]
    if (
        text.startswith("ISA")
        and isa12.isdigit()
        and len(isa12) == 5
        and isa12 not in PYX12_ISA12
    ):
        text = text[: ISA12_AT.start] + "00401" + text[ISA12_AT.stop :]
        changes.append(f"ISA12 {isa12} shown as 00401")
    return text, changes


def read_with_pyx12(path: Path) -> Reading:
    try:
        return Reading(*run_reader(str(path)), adapted=[])
    except (
        pyx12.errors.X12Error,
        pyx12.errors.EngineError,
        UnicodeDecodeError,
    ) as refusal:
        shipped = f"{type(refusal).__name__}: {one_line(refusal, 60)}"
    text, changes = adapt(path.read_bytes())
    if changes:
        try:
            return Reading(*run_reader(io.StringIO(text)), changes, shipped)
        except (pyx12.errors.X12Error, pyx12.errors.EngineError) as refusal:
            retry = f"{type(refusal).__name__}: {one_line(refusal, 60)}"
            return Reading(None, [retry], [], changes, shipped)
    return Reading(None, [shipped], [], [])


# --- deriving our event values from pyx12's segments ----------------------------------------


def value(segment: Segment, position: int) -> str:
    """Element `position` (1-based) of a segment, '' when absent."""
    return segment.get_value(f"{position:02d}") or ""


@dataclass(frozen=True)
class Item:
    purchase_order: str | None
    line: int | None
    quantity: float | str  # str: SN102 that is not an X12 decimal
    unit: str
    identifiers: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        pairs = ",".join(f"{q}={v}" for q, v in self.identifiers)
        return f"[PO {self.purchase_order!r} line {self.line} {self.quantity} {self.unit!r} {pairs}]"


@dataclass
class ShipNotice:
    control: str  # ST02
    version: str  # GS08
    shipment_id: str = ""  # BSN02
    ship_date: str | None = None  # BSN03 as YYYY-MM-DD
    carrier: tuple[str, str] | None = None  # (TD502, TD503)
    items: list[Item] = field(default_factory=list)
    purchase_orders: list[str] = field(
        default_factory=list
    )  # every PRF01, in document order
    problems: list[str] = field(default_factory=list)  # what is wrong in X12 terms


@dataclass
class HLLoop:
    id: str
    parent: str | None
    level: str
    segments: list[Segment] = field(default_factory=list)

    def all(self, seg_id: str) -> list[Segment]:
        return [s for s in self.segments if s.get_seg_id() == seg_id]


def iso_date(text: str) -> str | None:
    """CCYYMMDD, or YYMMDD with Python's %y rule (69-99: 19xx, 00-68: 20xx), as YYYY-MM-DD."""
    pattern = {8: "%Y%m%d", 6: "%y%m%d"}.get(len(text))
    if pattern is None or not text.isdigit():
        return None
    try:
        return datetime.strptime(text, pattern).strftime("%Y-%m-%d")
    except ValueError:
        return None


def ship_notices(segments: list[Segment]) -> list[ShipNotice]:
    """Split the segments into ST..SE sets of type 856 and derive each one's values."""
    notices, version, body, control = [], "", None, None
    for segment in segments:
        seg_id = segment.get_seg_id()
        if seg_id == "GS":
            version = value(segment, 8)
        elif seg_id == "ST":
            body, control = (
                ([], value(segment, 2)) if value(segment, 1) == "856" else (None, None)
            )
        elif seg_id == "SE":
            if body is not None:
                notices.append(derive(ShipNotice(control, version), body))
            body = None
        elif body is not None:
            body.append(segment)
    if body is not None:  # ST without SE: derive what there is
        notices.append(derive(ShipNotice(control, version), body))
    return notices


def derive(notice: ShipNotice, body: list[Segment]) -> ShipNotice:
    bsn = next((s for s in body if s.get_seg_id() == "BSN"), None)
    if bsn is None:
        notice.problems.append("no BSN")
    else:
        notice.shipment_id = value(bsn, 2)
        notice.ship_date = iso_date(value(bsn, 3))
        if not notice.shipment_id:
            notice.problems.append("BSN02 is empty")
        if notice.ship_date is None:
            notice.problems.append(f"BSN03 {value(bsn, 3)!r} is not a date")

    # HL loops: every segment after an HL belongs to it until the next HL.
    loops: dict[str, HLLoop] = {}
    current = None
    for segment in body:
        if segment.get_seg_id() == "HL":
            current = HLLoop(
                value(segment, 1), value(segment, 2) or None, value(segment, 3)
            )
            if current.id in loops:
                notice.problems.append(f"HL01 {current.id!r} repeats")
            if current.parent is not None and current.parent not in loops:
                notice.problems.append(
                    f"HL {current.id}: parent {current.parent!r} is not an earlier HL"
                )
            loops[current.id] = current
        elif current is not None:
            current.segments.append(segment)

    for loop in loops.values():
        for prf in loop.all("PRF"):
            notice.purchase_orders.append(value(prf, 1))
        if notice.carrier is None and loop.level == "S":
            td5 = next((s for s in loop.all("TD5") if value(s, 3)), None)
            if td5 is not None:
                notice.carrier = (value(td5, 2), value(td5, 3))
        lins = loop.all("LIN")
        if len(lins) > 1:
            notice.problems.append(f"HL {loop.id} has {len(lins)} LIN segments")
        for sn1 in loop.all("SN1"):
            notice.items.append(
                item(notice, loops, loop, lins[0] if lins else None, sn1)
            )
    return notice


def item(
    notice: ShipNotice,
    loops: dict[str, HLLoop],
    loop: HLLoop,
    lin: Segment | None,
    sn1: Segment,
) -> Item:
    """The item of one SN1: its quantity and unit, the loop's LIN, the nearest PRF01."""
    pairs, line = [], None
    if lin is not None:
        line_text = value(lin, 1)
        line = int(line_text) if line_text.isdigit() and int(line_text) > 0 else None
        for q in range(2, len(lin) + 1, 2):
            qualifier, product = value(lin, q), value(lin, q + 1)
            if qualifier and product:
                pairs.append((qualifier, product))
            elif qualifier or product:
                notice.problems.append(
                    f"HL {loop.id}: LIN{q:02d}/LIN{q + 1:02d} is half empty"
                )
    quantity_text = value(sn1, 2)
    if X12_DECIMAL.fullmatch(quantity_text):
        quantity = float(quantity_text)
    else:
        quantity = quantity_text
        notice.problems.append(
            f"HL {loop.id}: SN102 {quantity_text!r} is not an X12 decimal"
        )
    if not value(sn1, 3):
        notice.problems.append(f"HL {loop.id}: SN103 is empty")
    return Item(nearest_prf(loops, loop), line, quantity, value(sn1, 3), tuple(pairs))


def nearest_prf(loops: dict[str, HLLoop], loop: HLLoop | None) -> str | None:
    """PRF01 of the loop itself, else of its HL02 parent, and so on up."""
    seen = set()
    while loop is not None and loop.id not in seen:
        seen.add(loop.id)
        prfs = loop.all("PRF")
        if prfs:
            return value(prfs[0], 1)
        loop = loops.get(loop.parent) if loop.parent else None
    return None


# --- our answers and the comparison -------------------------------------------------------------


def our_groups(data: dict) -> list[tuple[str | None, list[Item]]]:
    groups = []
    for order in data["purchase_orders"]:
        po = order.get("purchase_order")
        items = [
            Item(
                po,
                it.get("line"),
                float(it["quantity"]),
                it["unit"],
                tuple((i["qualifier"], i["value"]) for i in it.get("identifiers", [])),
            )
            for it in order["items"]
        ]
        groups.append((po, items))
    return groups


def their_groups(notice: ShipNotice) -> list[tuple[str | None, list[Item]]]:
    groups: dict[str | None, list[Item]] = {}
    for it in notice.items:
        groups.setdefault(it.purchase_order, []).append(it)
    return list(groups.items())


def without_po(it: Item) -> Item:
    return replace(it, purchase_order=None)


def po_counts(items: list[Item]) -> str:
    counts = Counter(it.purchase_order for it in items)
    return ", ".join(f"{po!r} x{n}" for po, n in counts.items())


def compare(event: dict, notice: ShipNotice) -> list[str]:
    """Every way our event and the set derived from pyx12's segments disagree."""
    data = event["body"]["data"]
    attributes = data.get("attributes", {})
    where = f"set {notice.control}"
    diffs = [f"{where}: {p}" for p in notice.problems]
    for name, ours, theirs in [
        ("ST02", attributes.get("transaction_control"), notice.control),
        ("GS08", attributes.get("x12_version"), notice.version),
        ("BSN02", data.get("shipment_id"), notice.shipment_id),
        ("BSN03", data.get("ship_date"), notice.ship_date),
    ]:
        if ours != theirs:
            diffs.append(f"{where}: {name} ours {ours!r}, theirs {theirs!r}")

    our_carrier = data.get("carrier_scac") or attributes.get("carrier")
    their_carrier = notice.carrier[1] if notice.carrier else None
    if our_carrier != their_carrier:
        diffs.append(f"{where}: TD503 ours {our_carrier!r}, theirs {their_carrier!r}")
    elif notice.carrier:
        is_scac = notice.carrier[0] == "2" and re.fullmatch(
            r"[A-Z]{2,4}", notice.carrier[1]
        )
        if bool(is_scac) != ("carrier_scac" in data):
            diffs.append(f"{where}: TD5 {notice.carrier} put in the wrong field")

    ours, theirs = our_groups(data), their_groups(notice)
    if ours != theirs:
        our_items = [it for _, items in ours for it in items]
        if Counter(our_items) == Counter(notice.items):
            diffs.append(f"{where}: same items, grouped or ordered differently")
        elif Counter(map(without_po, our_items)) == Counter(
            map(without_po, notice.items)
        ):
            diffs.append(
                f"{where}: same {len(our_items)} item(s) but other purchase orders: "
                f"ours {po_counts(our_items)}, theirs {po_counts(notice.items)}"
            )
        else:
            for it in Counter(our_items) - Counter(notice.items):
                diffs.append(f"{where}: item only in ours {it}")
            for it in Counter(notice.items) - Counter(our_items):
                diffs.append(f"{where}: item only in theirs {it}")
    our_pos = {po for po, _ in ours}
    for po in dict.fromkeys(notice.purchase_orders):
        if po not in our_pos:
            diffs.append(f"{where}: PRF01 {po!r} is no purchase order of ours")
    return diffs


# --- one case ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    accepted: bool
    ours: str
    theirs: str
    agree: bool
    details: list[str]
    pyx12_errors: bool  # pyx12 reported an error (or refused the file)

    def line(self) -> str:
        status = "AGREE" if self.agree else "DIFFER"
        details = "; ".join(self.details)
        return f"{self.name} | {self.ours} | {self.theirs} | {status}" + (
            f": {details}" if details else ""
        )


def their_verdict(reading: Reading) -> str:
    if reading.segments is None:
        return f"refuses ({reading.errors[0]})"
    verdict = "reads"
    if reading.adapted:
        verdict += f" after {', '.join(reading.adapted)} [as shipped: {reading.shipped_refusal}]"
    if reading.errors:
        verdict += f", {len(reading.errors)} error(s)"
    else:
        verdict += ", no errors"
    if reading.layout:
        verdict += f", {len(reading.layout)} leading-space remark(s)"
    return verdict


def check(case: Path) -> Outcome:
    source = next(p for p in (case / "input.edi", case / "input.x12") if p.is_file())
    answer = json.loads((case / "expected.json").read_text(encoding="utf-8"))
    name = (
        source.relative_to(CORPUS.parent).as_posix()
        if source.is_relative_to(CORPUS.parent)
        else str(source)
    )
    reading = read_with_pyx12(source)
    theirs = their_verdict(reading)
    complaint = bool(reading.errors)
    notices = ship_notices(reading.segments) if reading.segments is not None else []

    if "rejected" in answer:
        rejected = answer["rejected"]
        ours = f"rejected {rejected['field']} at segment {rejected['position']}"
        if reading.segments is None:
            return Outcome(
                name, False, ours, theirs, True, ["both refuse the file"], True
            )
        if complaint:
            return Outcome(
                name,
                False,
                ours,
                theirs,
                True,
                [f"pyx12: {e}" for e in reading.errors],
                True,
            )
        seen = [f"{len(notices)} 856 set(s)"]
        for n in notices:
            seen.append(
                f"set {n.control}: GS08 {n.version!r}, BSN02 {n.shipment_id!r}, {len(n.items)} SN1"
                + "".join(f", {p}" for p in n.problems)
            )
        details = [
            f"pyx12 reads it without error; our reason: {rejected['reason']}",
            "pyx12's segments: " + "; ".join(seen),
        ]
        return Outcome(name, False, ours, theirs, False, details, False)

    events = answer["outputs"]
    ours = f"accepted, {len(events)} event(s)"
    if reading.segments is None:
        return Outcome(
            name, True, ours, theirs, False, ["pyx12 cannot read the file"], True
        )
    details = []
    if len(events) != len(notices):
        details.append(f"{len(events)} event(s) against {len(notices)} 856 set(s)")
    for event, notice in zip(events, notices):
        details += compare(event, notice)
    if details:
        return Outcome(name, True, ours, theirs, False, details, complaint)
    summary = [
        f"set {n.control}: {len(n.items)} item(s), {len(their_groups(n))} purchase order group(s)"
        for n in notices
    ]
    return Outcome(
        name,
        True,
        ours,
        theirs,
        True,
        summary + [f"pyx12: {e}" for e in reading.errors],
        complaint,
    )


def all_cases() -> list[Path]:
    return sorted(p.parent for p in CORPUS.glob("*/input.edi")) + sorted(
        p.parent for p in VECTORS.glob("*/input.x12")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "cases", nargs="*", type=Path, help="case folders (default: corpus and vectors)"
    )
    args = parser.parse_args()
    cases = [c.resolve() for c in args.cases] or all_cases()

    print(f"pyx12 {pyx12.__version__}; columns: file | ours | pyx12 | verdict")
    outcomes = [check(case) for case in cases]
    for outcome in outcomes:
        print(outcome.line())

    accepted = [o for o in outcomes if o.accepted]
    rejected = [o for o in outcomes if not o.accepted]
    accepted_differ = sum(not o.agree for o in accepted)
    print(
        f"{len(outcomes)} files: {len(accepted)} accepted by us "
        f"({len(accepted) - accepted_differ} AGREE, {accepted_differ} DIFFER; "
        f"{sum(o.pyx12_errors for o in accepted)} with pyx12 errors), "
        f"{len(rejected)} rejected by us "
        f"({sum(o.agree for o in rejected)} AGREE: pyx12 reports an error too, "
        f"{sum(not o.agree for o in rejected)} DIFFER: pyx12 reads without error)"
    )

    def folder(outcome: Outcome) -> str:
        return outcome.name.split("/")[-2]

    differing = {folder(o) for o in outcomes if not o.agree}
    checked = {folder(o) for o in outcomes}
    unexplained = sorted(differing - KNOWN.keys())
    stale = sorted(name for name in KNOWN.keys() & checked if name not in differing)
    for name in unexplained:
        print(
            f"unexplained difference: {name} (explain it in KNOWN and DIFFERENTIAL.md, or fix it)"
        )
    for name in stale:
        print(f"no longer differs: {name} (remove it from KNOWN and DIFFERENTIAL.md)")
    return 1 if unexplained or stale else 0


if __name__ == "__main__":
    sys.exit(main())
