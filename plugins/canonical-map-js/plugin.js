// canonical-map in JavaScript: the same behaviour as plugins/canonical-map (Rust), checked by the
// same conformance vectors.
//
// Replaces plant-local codes in a canonical event (work centres, materials, units, ...) with
// canonical ones from the plant's lookup tables, and converts quantities to canonical units.
// Paths address values in the CloudEvent: `data.work_centre`; `[]` walks every element of a list:
// `data.purchase_orders[].items[].unit`. An unknown code is rejected naming the table and the key.
// @ts-check

import * as config from 'millrace:mediation/config@0.1.0';
import * as lookup from 'millrace:mediation/lookup@0.1.0';
import { VERSION } from './version.js'; // written by the build from millrace-plugin.toml

const CLOUDEVENTS = 'application/cloudevents+json';

class Rejected extends Error {
  constructor(reason, field) {
    super(reason);
    this.reason = reason;
    this.field = field;
  }
}

const quoted = (text) => JSON.stringify(text);
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

/** A lookup; `undefined` when the key is absent, Rejected when the table is missing. */
function get(table, key) {
  try {
    return lookup.get(table, key);
  } catch {
    throw new Rejected(`lookup table ${table} is missing for this plant`);
  }
}

function loadSettings() {
  const settings = JSON.parse(config.document());
  const unknown = Object.keys(settings).filter((k) => k !== 'codes' && k !== 'units').sort();
  if (unknown.length > 0) {
    throw new Error(`invalid step settings: unknown field \`${unknown[0]}\``);
  }
  const list = (value, what) => {
    if (value === undefined) return [];
    if (!Array.isArray(value)) throw new Error(`invalid step settings: ${what}: expected a sequence`);
    return value;
  };
  // Each entry: only its own fields (a misspelt `required` is an error, not a default), typed.
  const entry = (value, what, fields) => {
    if (!isObject(value)) throw new Error(`invalid step settings: ${what}: expected a table`);
    const unknown = Object.keys(value).filter((k) => !(k in fields));
    if (unknown.length > 0) {
      throw new Error(`invalid step settings: unknown field \`${unknown[0]}\`, expected one of ${Object.keys(fields).map((f) => `\`${f}\``).join(', ')}`);
    }
    const out = {};
    for (const [field, [type, fallback]] of Object.entries(fields)) {
      const v = value[field];
      if (v === undefined && fallback === undefined) throw new Error(`invalid step settings: missing field \`${field}\``);
      if (v !== undefined && typeof v !== type) throw new Error(`invalid step settings: ${field}: expected a ${type}`);
      out[field] = v === undefined ? fallback : v;
    }
    return out;
  };
  const codes = list(settings.codes, 'codes').map((c) =>
    entry(c, 'codes', { path: ['string'], table: ['string'], required: ['boolean', false] }),
  );
  const units = list(settings.units, 'units').map((u) =>
    entry(u, 'units', {
      at: ['string', 'data'],
      quantity: ['string', 'quantity'],
      unit: ['string', 'unit'],
      table: ['string'],
    }),
  );
  if (codes.length === 0 && units.length === 0) {
    throw new Error('nothing to map: give codes and/or units');
  }
  for (const path of [...codes.map((c) => c.path), ...units.map((u) => u.at)]) {
    if (path.split('.').some((s) => s.replace(/(\[\])+$/, '') === '')) {
      throw new Error(`path ${quoted(path)} must be names joined by dots`);
    }
  }
  for (const table of [...codes.map((c) => c.table), ...units.map((u) => u.table)]) {
    try {
      lookup.get(table, '');
    } catch {
      throw new Error(`lookup table ${quoted(table)} is not configured for this plant`);
    }
  }
  return { codes, units };
}

function segments(path) {
  const out = [];
  for (const s of path.split('.')) {
    if (s.endsWith('[]')) out.push(s.slice(0, -2), '[]');
    else out.push(s);
  }
  return out;
}

/** Call f(at, container, key) for every value at `path`; absent values are skipped. */
function forEach(value, path, at, f) {
  const [head, ...rest] = path;
  if (head === '[]') {
    if (Array.isArray(value)) {
      for (let i = 0; i < value.length; i++) visit(value, i, rest, `${at}[${i}]`, f);
    }
  } else if (isObject(value) && Object.hasOwn(value, head)) {
    visit(value, head, rest, at === '' ? head : `${at}.${head}`, f);
  }
}

function visit(container, key, rest, at, f) {
  if (rest.length > 0) forEach(container[key], rest, at, f);
  else f(at, container, key);
}

function code(table, key, field) {
  const value = get(table, key);
  if (value === undefined) {
    throw new Rejected(`${field} ${quoted(key)} is not in lookup table ${table}`, field);
  }
  return value;
}

// Half away from zero, as Rust's f64::round.
const roundHalfAway = (x) => Math.sign(x) * Math.round(Math.abs(x));

function convert(conversion, at, obj) {
  if (!isObject(obj)) return;
  const unit = obj[conversion.unit];
  if (typeof unit !== 'string') return;
  const target = code(conversion.table, unit, `${at}.${conversion.unit}`);
  let canonical = target;
  let factor = 1.0;
  const space = target.indexOf(' ');
  if (space >= 0) {
    canonical = target.slice(0, space);
    const text = target.slice(space + 1).trim();
    factor = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(text) ? Number(text) : NaN;
    if (!(Number.isFinite(factor) && factor > 0)) {
      throw new Rejected(
        `lookup table ${conversion.table} maps ${quoted(unit)} to ${quoted(target)}; expected "UNIT" or "UNIT FACTOR"`,
      );
    }
  }
  if (factor !== 1.0) {
    const quantityAt = `${at}.${conversion.quantity}`;
    const quantity = obj[conversion.quantity];
    if (typeof quantity !== 'number') {
      throw new Rejected(`${quantityAt} is not a number`, quantityAt);
    }
    obj[conversion.quantity] = roundHalfAway(quantity * factor * 1e9) / 1e9;
  }
  obj[conversion.unit] = canonical;
}

function mediateEvent({ codes, units }, message) {
  let event;
  try {
    // A byte-order mark stays (JSON does not allow one), as in the Rust plugin.
    event = JSON.parse(new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(message.body));
  } catch (e) {
    throw new Rejected(`body is not the expected JSON: ${e instanceof Error ? e.message : e}`);
  }
  if (!isObject(event)) throw new Rejected('the body is not a CloudEvent object');
  for (const c of codes) {
    let found = 0;
    forEach(event, segments(c.path), '', (at, container, key) => {
      found += 1;
      const local = container[key];
      if (typeof local !== 'string') throw new Rejected(`${at} is not a text code`, at);
      container[key] = code(c.table, local, at);
    });
    if (found === 0 && c.required) {
      throw new Rejected(`${c.path} is required but missing`, c.path);
    }
  }
  for (const u of units) {
    forEach(event, segments(u.at), '', (at, container, key) => convert(u, at, container[key]));
  }
  const body = new TextEncoder().encode(JSON.stringify(event));
  return { ...message, contentType: CLOUDEVENTS, headers: [], body };
}

/** The step's settings, read once per instance; a string says what is wrong with them. */
let settings;
function settingsOrError() {
  if (settings === undefined) {
    try {
      settings = loadSettings();
    } catch (e) {
      settings = e instanceof Error ? e.message : String(e);
    }
  }
  return settings;
}

export function describe() {
  return { name: 'canonical-map-js', version: VERSION, accepts: [CLOUDEVENTS], emits: [] };
}

export function checkSettings() {
  const s = settingsOrError();
  if (typeof s === 'string') throw s;
}

export function mediate(input) {
  const s = settingsOrError();
  if (typeof s === 'string') {
    throw { tag: 'rejected', val: { reason: `step settings are invalid: ${s}` } };
  }
  try {
    return [mediateEvent(s, input)];
  } catch (e) {
    if (e instanceof Rejected) {
      throw { tag: 'rejected', val: { reason: e.reason, field: e.field } };
    }
    throw e;
  }
}
