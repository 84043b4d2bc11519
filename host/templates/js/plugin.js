// {{name}}: a production report from the shop floor, one `;`-separated record
// (`WORK_ORDER;QUANTITY;UNIT`), becomes one JSON event.
// @ts-check  (types/ holds the declarations `millrace plugin build` generates from wit/)

import { get } from 'millrace:mediation/config@0.1.0';
import { VERSION } from './version.js'; // written by `millrace plugin build` from millrace-plugin.toml

/** A rejection: the message is dead-lettered with this reason. */
function rejected(reason, field, position) {
  return { tag: 'rejected', val: { reason, field, position } };
}

/** The 1-based position of the first byte that does not start valid UTF-8, or 0. */
function invalidUtf8(bytes) {
  for (let i = 0; i < bytes.length; ) {
    const c = bytes[i];
    const len = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (len === 0 || i + len > bytes.length) return i + 1;
    for (let k = 1; k < len; k++) if ((bytes[i + k] & 0xc0) !== 0x80) return i + 1;
    const next = bytes[i + 1];
    if ((c === 0xe0 && next < 0xa0) || (c === 0xed && next > 0x9f) || (c === 0xf0 && next < 0x90) || (c === 0xf4 && next > 0x8f)) {
      return i + 1;
    }
    i += len;
  }
  return 0;
}

/** The step setting `source`: which system the records come from. */
function sourceSetting() {
  return get('source') ?? 'mes';
}

export function describe() {
  return { name: '{{name}}', version: VERSION, accepts: ['text/plain'], emits: ['production.reported'] };
}

export function checkSettings() {
  if (sourceSetting() === '') {
    throw 'the setting `source` must not be empty';
  }
}

export function mediate(input) {
  const bad = invalidUtf8(input.body);
  if (bad > 0) {
    throw rejected(`body is not valid UTF-8 at byte ${bad}`, undefined, bad);
  }
  const text = new TextDecoder('utf-8', { ignoreBOM: true }).decode(input.body);
  let record = text.endsWith('\n') ? text.slice(0, -1) : text;
  record = record.endsWith('\r') ? record.slice(0, -1) : record;
  // Fields lose the spaces and tabs around them (the same rule in every template).
  const fields = record.split(';').map((f) => f.replace(/^[ \t]+|[ \t]+$/g, ''));
  if (fields.length !== 3) {
    throw rejected(`expected 3 fields WORK_ORDER;QUANTITY;UNIT, found ${fields.length}`);
  }
  const [workOrder, quantity, unit] = fields;
  if (workOrder === '') {
    throw rejected('work_order is empty', 'work_order');
  }
  if (!/^[0-9]{1,9}$/.test(quantity)) {
    throw rejected(`quantity ${JSON.stringify(quantity)} is not a whole number`, 'quantity');
  }
  const event = {
    event: 'production.reported',
    plant: input.plant,
    source: sourceSetting(),
    work_order: workOrder,
    quantity: Number(quantity),
    unit,
  };
  const body = new TextEncoder().encode(JSON.stringify(event));
  return [{ ...input, id: `${input.id}-1`, contentType: 'application/json', headers: [], body }];
}
