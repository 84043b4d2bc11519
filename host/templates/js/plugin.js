// {{name}}: a production report from the shop floor, one `;`-separated record
// (`WORK_ORDER;QUANTITY;UNIT`), becomes one JSON event.
// @ts-check  (types/ holds the declarations `millrace plugin build` generates from wit/)

import { get } from 'millrace:mediation/config@0.1.0';
import { VERSION } from './version.js'; // written by `millrace plugin build` from millrace-plugin.toml

/** A rejection: the message is dead-lettered with this reason. */
function rejected(reason, field) {
  return { tag: 'rejected', val: { reason, field, position: undefined } };
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
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(input.body);
  } catch {
    throw rejected('body is not valid UTF-8');
  }
  let record = text.endsWith('\n') ? text.slice(0, -1) : text;
  record = record.endsWith('\r') ? record.slice(0, -1) : record;
  const fields = record.split(';').map((f) => f.trim());
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
