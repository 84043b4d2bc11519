/* downtime-router in C: the same behaviour as plugins/downtime-router (Rust), checked by the
 * same conformance vectors.
 *
 * A machine alarm or downtime report from an IoT gateway (JSON) becomes two events -
 * millrace.machine.downtime.v1 for maintenance (CMMS) and millrace.planning.capacity-impact.v1
 * for ERP planning - in that order. Machine and alarm codes go through the plant's lookup
 * tables; an unknown code is rejected naming the table and the key. A report whose state is
 * "running" is filtered.
 *
 * Built with clang + wasi-libc against bindings that `wit-bindgen c` generates from wit/. The
 * plugin uses only pure libc functions (memory, strings, formatting), so the component needs no
 * WASI. */

#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "plugin.h"

#define DOWNTIME "millrace.machine.downtime.v1"
#define CAPACITY "millrace.planning.capacity-impact.v1"
#define VERSION "1.0.0"

/* ---- settings, read once per instance ---- */

static struct {
    bool loaded;
    char *error; /* non-NULL: what is wrong with the settings */
    char *machines_table;
    char *work_centres_table;
    char *reasons_table;
    char *source_system;
} settings;

static char *owned(const plugin_string_t *s) {
    char *out = malloc(s->len + 1);
    if (!out) __builtin_trap();
    memcpy(out, s->ptr, s->len);
    out[s->len] = 0;
    return out;
}

static char *setting(const char *key) {
    plugin_string_t k, value;
    plugin_string_set(&k, key);
    if (!millrace_mediation_config_get(&k, &value)) return NULL;
    char *out = owned(&value);
    plugin_string_free(&value);
    return out;
}

/* `NULL` if the plant has `table`. */
static char *check_table(const char *table) {
    plugin_string_t t, empty;
    plugin_string_set(&t, table);
    plugin_string_set(&empty, "");
    plugin_option_string_t found;
    millrace_mediation_lookup_lookup_error_t err;
    if (millrace_mediation_lookup_get(&t, &empty, &found, &err)) {
        plugin_option_string_free(&found);
        return NULL;
    }
    millrace_mediation_lookup_lookup_error_free(&err);
    buffer msg = {0};
    buf_put(&msg, "lookup table ");
    buf_json_string(&msg, table);
    buf_put(&msg, " is not configured for this plant");
    return msg.data;
}

static void load_settings(void) {
    if (settings.loaded) return;
    settings.loaded = true;
    static const char *known[] = {"machines_table", "work_centres_table", "reasons_table",
                                  "source_system"};
    plugin_list_string_t keys;
    millrace_mediation_config_keys(&keys);
    for (size_t i = 0; i < keys.len && !settings.error; i++) {
        char *key = owned(&keys.ptr[i]);
        bool ok = false;
        for (size_t k = 0; k < sizeof known / sizeof *known; k++) ok |= strcmp(key, known[k]) == 0;
        if (!ok)
            settings.error = concat("invalid step settings: unknown field `", key,
                                    "`, expected one of `machines_table`, `work_centres_table`, "
                                    "`reasons_table`, `source_system`",
                                    NULL);
        free(key);
    }
    plugin_list_string_free(&keys);
    if (settings.error) return;
    settings.machines_table = setting("machines_table");
    settings.work_centres_table = setting("work_centres_table");
    settings.reasons_table = setting("reasons_table");
    settings.source_system = setting("source_system");
    if (!settings.source_system) settings.source_system = strdup("iot");
    const char *missing = !settings.machines_table       ? "machines_table"
                          : !settings.work_centres_table ? "work_centres_table"
                          : !settings.reasons_table      ? "reasons_table"
                                                         : NULL;
    if (missing) {
        settings.error = concat("invalid step settings: missing field `", missing, "`", NULL);
        return;
    }
    const char *tables[] = {settings.machines_table, settings.work_centres_table,
                            settings.reasons_table};
    for (int i = 0; i < 3 && !settings.error; i++) settings.error = check_table(tables[i]);
}

/* ---- errors ---- */

static bool reject(plugin_mediation_error_t *err, char *reason, const char *field,
                   uint32_t position) {
    memset(err, 0, sizeof *err);
    err->tag = MILLRACE_MEDIATION_TYPES_MEDIATION_ERROR_REJECTED;
    err->val.rejected.reason.ptr = (uint8_t *)reason; /* ownership passes to the bindings */
    err->val.rejected.reason.len = strlen(reason);
    if (field) {
        err->val.rejected.field.is_some = true;
        plugin_string_dup(&err->val.rejected.field.val, field);
    }
    if (position) {
        err->val.rejected.position.is_some = true;
        err->val.rejected.position.val = position;
    }
    return false;
}

/* ---- the values this instance found in the plant's tables ---- */

/* A table does not change during the life of an instance (wit/: `lookup`), so a value found once
 * is that key's value for good and a repeat costs no call to the host. Only values found are kept
 * (keys the operator's tables hold, not whatever a message names), at most FOUND_ENTRIES entries
 * and FOUND_BYTES bytes of them; past either it starts over. The Rust SDK's rule. */
#define FOUND_ENTRIES 4096
#define FOUND_SLOTS 8192 /* a power of two above FOUND_ENTRIES: a probe always ends */
#define FOUND_BYTES (1 << 20)

typedef struct {
    char *table, *key, *value; /* table NULL: an empty slot */
    uint32_t hash;
} found_entry;

/* Static: 128 KiB of the instance's memory from the start, its pages zero until used. */
static struct {
    found_entry slots[FOUND_SLOTS];
    size_t entries, bytes;
} found_values;

static uint32_t found_hash(const char *table, const char *key) {
    uint32_t h = 2166136261u; /* FNV-1a over table, a 0 byte, key */
    for (const unsigned char *p = (const unsigned char *)table; *p; p++) h = (h ^ *p) * 16777619u;
    h *= 16777619u;
    for (const unsigned char *p = (const unsigned char *)key; *p; p++) h = (h ^ *p) * 16777619u;
    return h;
}

/* The slot holding (table, key), or the empty slot where it would go. */
static found_entry *found_slot(const char *table, const char *key, uint32_t hash) {
    for (size_t i = hash & (FOUND_SLOTS - 1);; i = (i + 1) & (FOUND_SLOTS - 1)) {
        found_entry *e = &found_values.slots[i];
        if (!e->table ||
            (e->hash == hash && strcmp(e->table, table) == 0 && strcmp(e->key, key) == 0))
            return e;
    }
}

static void found_forget(void) {
    for (size_t i = 0; i < FOUND_SLOTS; i++) {
        free(found_values.slots[i].table);
        free(found_values.slots[i].key);
        free(found_values.slots[i].value);
    }
    memset(&found_values, 0, sizeof found_values);
}

/* Keep `value` as (table, key)'s; a value too large to keep, or no memory to keep it in, is
 * only not kept. */
static void found_keep(const char *table, const char *key, const char *value, uint32_t hash) {
    size_t bytes = strlen(table) + strlen(key) + strlen(value);
    if (bytes > FOUND_BYTES) return;
    if (found_values.entries >= FOUND_ENTRIES || found_values.bytes + bytes > FOUND_BYTES)
        found_forget();
    found_entry *e = found_slot(table, key, hash);
    if (e->table) return;
    char *t = strdup(table), *k = strdup(key), *v = strdup(value);
    if (!t || !k || !v) {
        free(t);
        free(k);
        free(v);
        return;
    }
    *e = (found_entry){t, k, v, hash};
    found_values.entries++;
    found_values.bytes += bytes;
}

/* The value of `key` in `table`; NULL after filling `err` (the Rust SDK's `Host::code`). */
static char *code(const char *table, const char *key, const char *field,
                  plugin_mediation_error_t *err) {
    uint32_t hash = found_hash(table, key);
    const found_entry *kept = found_slot(table, key, hash);
    if (kept->table) {
        char *value = strdup(kept->value);
        if (!value) __builtin_trap();
        return value;
    }
    plugin_string_t t, k;
    plugin_string_set(&t, table);
    plugin_string_set(&k, key);
    plugin_option_string_t found;
    millrace_mediation_lookup_lookup_error_t lookup_err;
    buffer msg = {0};
    if (!millrace_mediation_lookup_get(&t, &k, &found, &lookup_err)) {
        millrace_mediation_lookup_lookup_error_free(&lookup_err);
        buf_cat(&msg, "lookup table ", table, " is missing for this plant", NULL);
        reject(err, msg.data, NULL, 0);
        return NULL;
    }
    if (!found.is_some) {
        buf_cat(&msg, field, " ", NULL);
        buf_json_string(&msg, key);
        buf_cat(&msg, " is not in lookup table ", table, NULL);
        reject(err, msg.data, field, 0);
        return NULL;
    }
    char *value = owned(&found.val);
    plugin_option_string_free(&found);
    found_keep(table, key, value, hash);
    return value;
}

/* ---- times: RFC 3339 with any offset -> seconds since the epoch (UTC) ---- */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d) {
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static bool digits(const char **p, int n, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9') return false;
        v = v * 10 + (unsigned)(c - '0');
    }
    *p += n;
    *out = v;
    return true;
}

static bool expect(const char **p, const char *one_of) {
    if (!**p || !strchr(one_of, **p)) return false;
    (*p)++;
    return true;
}

static bool parse_rfc3339(const char *text, int64_t *seconds) {
    const char *p = text;
    unsigned y, mo, d, h, mi, s, oh = 0, om = 0;
    if (!digits(&p, 4, &y) || !expect(&p, "-") || !digits(&p, 2, &mo) || !expect(&p, "-") ||
        !digits(&p, 2, &d) || !expect(&p, "Tt ") || !digits(&p, 2, &h) || !expect(&p, ":") ||
        !digits(&p, 2, &mi) || !expect(&p, ":") || !digits(&p, 2, &s))
        return false;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9') return false;
        while (*p >= '0' && *p <= '9') p++; /* fractions are dropped, as the Rust twin does */
    }
    int sign = 0;
    if (*p == 'Z' || *p == 'z') p++;
    else if (*p == '+' || *p == '-') {
        sign = *p == '-' ? -1 : 1;
        p++;
        if (!digits(&p, 2, &oh) || !expect(&p, ":") || !digits(&p, 2, &om)) return false;
    } else return false;
    if (*p) return false;
    static const unsigned month_days[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo < 1 || mo > 12 || d < 1 || d > month_days[mo - 1] || (mo == 2 && d == 29 && !leap) ||
        h > 23 || mi > 59 || s > 60 || oh > 23 || om > 59)
        return false;
    int64_t local = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + (s == 60 ? 59 : s);
    *seconds = local - sign * (int64_t)(oh * 3600 + om * 60);
    return true;
}

static void format_utc(int64_t seconds, char out[32]) {
    int64_t days = seconds / 86400, rest = seconds % 86400;
    if (rest < 0) {
        rest += 86400;
        days--;
    }
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    buffer b = {0};
    buf_put_uint(&b, (uint64_t)(y < 0 ? 0 : y), 4);
    buf_put(&b, "-");
    buf_put_uint(&b, m, 2);
    buf_put(&b, "-");
    buf_put_uint(&b, d, 2);
    buf_put(&b, "T");
    buf_put_uint(&b, (uint64_t)(rest / 3600), 2);
    buf_put(&b, ":");
    buf_put_uint(&b, (uint64_t)(rest / 60 % 60), 2);
    buf_put(&b, ":");
    buf_put_uint(&b, (uint64_t)(rest % 60), 2);
    buf_put(&b, "Z");
    size_t n = b.len < 31 ? b.len : 31;
    memcpy(out, b.data, n);
    out[n] = 0;
    free(b.data);
}

/* ---- the report ---- */

typedef struct {
    char *machine, *alarm, *started_at, *ended_at;
    bool running, planned;
} report;

static void report_free(report *r) {
    free(r->machine);
    free(r->alarm);
    free(r->started_at);
    free(r->ended_at);
}

/* Read the report; false with the reason in `r->error` (serde_json's wording and positions). */
static bool read_report(json_reader *rd, report *out) {
    static const char *fields[] = {"machine", "alarm", "state", "started_at", "ended_at", "planned"};
    bool seen[6] = {0};
    memset(out, 0, sizeof *out);
    int c = json_peek(rd);
    if (c != '{') {
        if (c < 0) return json_fail(rd, "EOF while parsing a value");
        if (c == '"' || c == '[' || c == 't' || c == 'f' || c == 'n' || c == '-' ||
            (c >= '0' && c <= '9')) {
            json_next(rd);
            return json_fail(rd, "invalid type: expected struct Report");
        }
        json_next(rd);
        return json_fail(rd, "expected value");
    }
    json_next(rd);
    bool first = true;
    for (;;) {
        c = json_peek(rd);
        if (c == '}') {
            json_next(rd);
            break;
        }
        if (!first) {
            if (c != ',') {
                json_next(rd);
                return json_fail(rd, c < 0 ? "EOF while parsing an object"
                                           : "expected `,` or `}`");
            }
            json_next(rd);
            c = json_peek(rd);
        }
        first = false;
        if (c != '"') {
            if (c >= 0) json_next(rd);
            return json_fail(rd, c < 0 ? "EOF while parsing an object" : "key must be a string");
        }
        char *key;
        size_t key_len;
        if (!json_read_string(rd, &key, &key_len)) return false;
        int index = -1;
        for (int i = 0; i < 6; i++)
            if (strcmp(key, fields[i]) == 0) index = i;
        if (index < 0) {
            char *what = concat("unknown field `", key,
                                "`, expected one of `machine`, `alarm`, `state`, `started_at`, "
                                "`ended_at`, `planned`",
                                NULL);
            free(key);
            json_fail(rd, what);
            free(what);
            return false;
        }
        free(key);
        if (seen[index]) {
            char *what = concat("duplicate field `", fields[index], "`", NULL);
            json_fail(rd, what);
            free(what);
            return false;
        }
        seen[index] = true;
        if (json_peek(rd) != ':') {
            if (json_peek(rd) >= 0) json_next(rd);
            return json_fail(rd, "expected `:`");
        }
        json_next(rd);
        json_value v;
        if (!json_read_value(rd, &v)) return false;
        bool optional = index == 1 || index == 4;
        if (index == 5) {
            if (v.kind != JV_BOOL) return json_fail(rd, "invalid type: expected a boolean");
            out->planned = v.boolean;
        } else if (optional && v.kind == JV_NULL) {
            /* absent */
        } else if (v.kind != JV_STRING) {
            json_value_free(&v);
            return json_fail(rd, "invalid type: expected a string");
        } else if (index == 2) {
            bool down = strcmp(v.string, "down") == 0, running = strcmp(v.string, "running") == 0;
            if (!down && !running) {
                char *what =
                    concat("unknown variant `", v.string, "`, expected `down` or `running`", NULL);
                json_value_free(&v);
                json_fail(rd, what);
                free(what);
                return false;
            }
            out->running = running;
            json_value_free(&v);
        } else {
            char **slot = index == 0   ? &out->machine
                          : index == 1 ? &out->alarm
                          : index == 3 ? &out->started_at
                                       : &out->ended_at;
            *slot = v.string;
            v.string = NULL;
        }
        json_value_free(&v);
    }
    if (!seen[0]) return json_fail(rd, "missing field `machine`");
    if (!seen[3]) return json_fail(rd, "missing field `started_at`");
    if (json_peek(rd) >= 0) {
        json_next(rd);
        return json_fail(rd, "trailing characters");
    }
    return true;
}

/* ---- outputs ---- */

static void event_header(buffer *b, const char *id, const char *source, const char *type,
                         const char *subject, const char *time) {
    buf_put(b, "{\"specversion\":\"1.0\",\"id\":");
    buf_json_string(b, id);
    buf_put(b, ",\"source\":");
    buf_json_string(b, source);
    buf_put(b, ",\"type\":");
    buf_json_string(b, type);
    buf_put(b, ",\"subject\":");
    buf_json_string(b, subject);
    buf_put(b, ",\"time\":");
    buf_json_string(b, time);
    buf_put(b, ",\"datacontenttype\":\"application/json\"");
}

static void output(plugin_message_t *out, const plugin_message_t *input, const char *id,
                   buffer *body) {
    memset(out, 0, sizeof *out);
    plugin_string_dup(&out->id, id);
    plugin_string_dup_n(&out->plant, (const char *)input->plant.ptr, input->plant.len);
    plugin_string_dup_n(&out->route, (const char *)input->route.ptr, input->route.len);
    plugin_string_dup(&out->content_type, "application/cloudevents+json");
    out->body.ptr = (uint8_t *)body->data; /* ownership passes to the bindings */
    out->body.len = body->len;
}

static bool mediate(plugin_message_t *input, plugin_list_message_t *ret,
                    plugin_mediation_error_t *err) {
    json_reader rd;
    json_reader_init(&rd, input->body.ptr, input->body.len);
    report r;
    if (!read_report(&rd, &r)) {
        report_free(&r);
        buffer msg = {0};
        buf_cat(&msg, "body is not the expected JSON: ", rd.error, NULL);
        return reject(err, msg.data, NULL, rd.line);
    }
    ret->ptr = NULL;
    ret->len = 0;
    if (r.running) {
        report_free(&r);
        return true;
    }
    bool ok = false;
    char *machine = NULL, *work_centre = NULL, *reason = NULL;
    char *plant = owned(&input->plant), *id = owned(&input->id);
    if (!(machine = code(settings.machines_table, r.machine, "machine", err))) goto done;
    if (!(work_centre = code(settings.work_centres_table, machine, "machine", err))) goto done;
    if (!r.alarm || !*r.alarm) {
        reject(err, strdup("a down report needs an alarm code"), "alarm", 0);
        goto done;
    }
    if (!(reason = code(settings.reasons_table, r.alarm, "alarm", err))) goto done;
    int64_t started, ended = 0;
    const char *bad_field = NULL, *bad_text = NULL;
    if (!parse_rfc3339(r.started_at, &started)) bad_field = "started_at", bad_text = r.started_at;
    else if (r.ended_at && !parse_rfc3339(r.ended_at, &ended))
        bad_field = "ended_at", bad_text = r.ended_at;
    if (bad_field) {
        buffer msg = {0};
        buf_cat(&msg, bad_field, " ", NULL);
        buf_json_string(&msg, bad_text);
        buf_put(&msg, " is not an RFC 3339 time");
        reject(err, msg.data, bad_field, 0);
        goto done;
    }
    char started_at[32], ended_at[32];
    format_utc(started, started_at);
    if (r.ended_at) format_utc(ended, ended_at);
    if (r.ended_at && ended < started) {
        buffer msg = {0};
        buf_cat(&msg, "ended_at ", ended_at, " is before started_at ", r.started_at, NULL);
        reject(err, msg.data, "ended_at", 0);
        goto done;
    }

    buffer source = {0}, downtime_id = {0}, capacity_id = {0};
    buf_cat(&source, "/plants/", plant, "/", settings.source_system, NULL);
    buf_cat(&downtime_id, id, "-downtime", NULL);
    buf_cat(&capacity_id, id, "-capacity", NULL);

    buffer downtime = {0};
    event_header(&downtime, downtime_id.data, source.data, DOWNTIME, machine, started_at);
    buf_put(&downtime, ",\"dataschema\":\"urn:millrace:schema:machine.downtime:v1\",\"data\":{");
    buf_put(&downtime, "\"machine\":");
    buf_json_string(&downtime, machine);
    buf_put(&downtime, ",\"plant\":");
    buf_json_string(&downtime, plant);
    buf_put(&downtime, ",\"work_centre\":");
    buf_json_string(&downtime, work_centre);
    buf_put(&downtime, ",\"started_at\":");
    buf_json_string(&downtime, started_at);
    if (r.ended_at) {
        buf_put(&downtime, ",\"ended_at\":");
        buf_json_string(&downtime, ended_at);
    }
    buf_put(&downtime, r.planned ? ",\"category\":\"planned\"" : ",\"category\":\"unplanned\"");
    buf_put(&downtime, ",\"reason_code\":");
    buf_json_string(&downtime, reason);
    buf_put(&downtime, ",\"alarm_code\":");
    buf_json_string(&downtime, r.alarm);
    buf_put(&downtime, "}}");

    buffer capacity = {0};
    event_header(&capacity, capacity_id.data, source.data, CAPACITY, work_centre, started_at);
    buf_put(&capacity,
            ",\"dataschema\":\"urn:millrace:schema:planning.capacity-impact:v1\",\"data\":{");
    buf_put(&capacity, "\"work_centre\":");
    buf_json_string(&capacity, work_centre);
    buf_put(&capacity, ",\"plant\":");
    buf_json_string(&capacity, plant);
    buf_put(&capacity, ",\"from\":");
    buf_json_string(&capacity, started_at);
    if (r.ended_at) {
        buf_put(&capacity, ",\"to\":");
        buf_json_string(&capacity, ended_at);
        buf_put(&capacity, ",\"lost_minutes\":");
        buf_json_ratio(&capacity, ended - started, 60);
    }
    buf_put(&capacity, ",\"cause\":{\"event_type\":\"" DOWNTIME "\",\"event_id\":");
    buf_json_string(&capacity, downtime_id.data);
    buf_put(&capacity, ",\"machine\":");
    buf_json_string(&capacity, machine);
    buf_put(&capacity, "}}}");

    ret->ptr = calloc(2, sizeof(plugin_message_t));
    if (!ret->ptr) __builtin_trap();
    ret->len = 2;
    output(&ret->ptr[0], input, downtime_id.data, &downtime);
    output(&ret->ptr[1], input, capacity_id.data, &capacity);
    free(source.data);
    free(downtime_id.data);
    free(capacity_id.data);
    ok = true;
done:
    free(machine);
    free(work_centre);
    free(reason);
    free(plant);
    free(id);
    report_free(&r);
    return ok;
}

/* ---- exports ---- */

static void list_of_one(plugin_list_string_t *list, const char *a, const char *b) {
    list->len = b ? 2 : 1;
    list->ptr = calloc(list->len, sizeof(plugin_string_t));
    if (!list->ptr) __builtin_trap();
    plugin_string_dup(&list->ptr[0], a);
    if (b) plugin_string_dup(&list->ptr[1], b);
}

void exports_plugin_describe(plugin_plugin_info_t *ret) {
    plugin_string_dup(&ret->name, "downtime-router-c");
    plugin_string_dup(&ret->version, VERSION);
    list_of_one(&ret->accepts, "application/json", NULL);
    list_of_one(&ret->emits, DOWNTIME, CAPACITY);
}

bool exports_plugin_check_settings(plugin_string_t *err) {
    load_settings();
    if (!settings.error) return true;
    plugin_string_dup(err, settings.error);
    return false;
}

bool exports_plugin_mediate(plugin_message_t *input, plugin_list_message_t *ret,
                            plugin_mediation_error_t *err) {
    load_settings();
    bool ok;
    if (settings.error) {
        buffer msg = {0};
        buf_cat(&msg, "step settings are invalid: ", settings.error, NULL);
        ok = reject(err, msg.data, NULL, 0);
    } else {
        ok = mediate(input, ret, err);
    }
    plugin_message_free(input);
    return ok;
}
