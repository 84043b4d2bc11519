/* {{name}}: a production report from the shop floor, one `;`-separated record
 * (`WORK_ORDER;QUANTITY;UNIT`), becomes one JSON event.
 *
 * `millrace plugin build` generates the bindings ({{snake}}.h) from wit/ with `wit-bindgen c`,
 * compiles with clang for wasm32 against wasi-libc, and links a component. Only pure libc
 * functions (memory, strings) are used: stdio (printf, FILE) would import WASI. */

#include <stdlib.h>
#include <string.h>

#include "{{snake}}.h"

#ifndef PLUGIN_VERSION /* `millrace plugin build` passes the version of millrace-plugin.toml */
#define PLUGIN_VERSION "0.1.0"
#endif

/* A growable text buffer; its data passes to the bindings, which free it. */
typedef struct {
    char *data;
    size_t len, cap;
} buffer;

static void put_n(buffer *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->data = realloc(b->data, b->cap);
        if (!b->data) __builtin_trap();
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

static void put(buffer *b, const char *s) { put_n(b, s, strlen(s)); }

/* `s` (n bytes of UTF-8) as a JSON string, escaped as JSON.stringify and serde_json do. */
static void put_json(buffer *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    put(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *short_escape = c == '"'    ? "\\\""
                                   : c == '\\' ? "\\\\"
                                   : c == '\b'  ? "\\b"
                                   : c == '\f'  ? "\\f"
                                   : c == '\n'  ? "\\n"
                                   : c == '\r'  ? "\\r"
                                   : c == '\t'  ? "\\t"
                                                : NULL;
        if (short_escape) {
            put(b, short_escape);
        } else if (c < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put_n(b, esc, 6);
        } else {
            put_n(b, (const char *)&c, 1);
        }
    }
    put(b, "\"");
}

/* The step setting `source` (which system the records come from); NULL-terminated copy. */
static char *source_setting(void) {
    {{snake}}_string_t key, value;
    {{snake}}_string_set(&key, "source");
    if (!millrace_mediation_config_get(&key, &value)) {
        char *fallback = strdup("mes");
        if (!fallback) __builtin_trap();
        return fallback;
    }
    char *out = malloc(value.len + 1);
    if (!out) __builtin_trap();
    memcpy(out, value.ptr, value.len);
    out[value.len] = 0;
    {{snake}}_string_free(&value);
    return out;
}

static bool reject(millrace_mediation_types_mediation_error_t *err, buffer *reason,
                   const char *field, uint32_t position) {
    err->tag = MILLRACE_MEDIATION_TYPES_MEDIATION_ERROR_REJECTED;
    millrace_mediation_types_rejection_t *r = &err->val.rejected;
    r->reason.ptr = (uint8_t *)reason->data;
    r->reason.len = reason->len;
    r->field.is_some = field != NULL;
    if (field) {{snake}}_string_dup(&r->field.val, field);
    r->position.is_some = position > 0;
    r->position.val = position;
    return false;
}

/* Decimal digits of `v`. */
static void put_number(buffer *b, size_t v) {
    char digits[24];
    size_t n = 0;
    do digits[n++] = (char)('0' + v % 10);
    while ((v /= 10) > 0);
    while (n > 0) put_n(b, &digits[--n], 1);
}

/* The 1-based position of the first byte of `s` that does not start valid UTF-8, or 0 when all
 * of it is valid (overlong forms, surrogates and code points past U+10FFFF are invalid). */
static size_t invalid_utf8(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t len = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
                   : c >= 0xf0 && c <= 0xf4                ? 4
                                                           : 0;
        if (len == 0 || i + len > n) return i + 1;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80) return i + 1;
        if ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] > 0x9f) ||
            (c == 0xf0 && s[i + 1] < 0x90) || (c == 0xf4 && s[i + 1] > 0x8f))
            return i + 1;
        i += len;
    }
    return 0;
}

/* One field of the record: [start, end) trimmed of spaces and tabs. */
typedef struct {
    const char *at;
    size_t len;
} field;

static field trimmed(const char *start, const char *end) {
    while (start < end && (*start == ' ' || *start == '\t')) start++;
    while (end > start && (end[-1] == ' ' || end[-1] == '\t')) end--;
    return (field){start, (size_t)(end - start)};
}

static bool mediate({{snake}}_message_t *input, {{snake}}_list_message_t *ret,
                    {{snake}}_mediation_error_t *err) {
    const char *text = (const char *)input->body.ptr;
    size_t len = input->body.len;
    buffer msg = {0};
    size_t bad = invalid_utf8(input->body.ptr, len);
    if (bad) {
        put(&msg, "body is not valid UTF-8 at byte ");
        put_number(&msg, bad);
        return reject(err, &msg, NULL, (uint32_t)bad);
    }
    if (len > 0 && text[len - 1] == '\n') len--;
    if (len > 0 && text[len - 1] == '\r') len--;
    field fields[3];
    size_t count = 0;
    const char *start = text, *end = text + len;
    for (const char *p = text;; p++) {
        if (p == end || *p == ';') {
            if (count < 3) fields[count] = trimmed(start, p);
            count++;
            start = p + 1;
            if (p == end) break;
        }
    }
    if (count != 3) {
        put(&msg, "expected 3 fields WORK_ORDER;QUANTITY;UNIT, found ");
        put_number(&msg, count);
        return reject(err, &msg, NULL, 0);
    }
    if (fields[0].len == 0) {
        put(&msg, "work_order is empty");
        return reject(err, &msg, "work_order", 0);
    }
    bool whole = fields[1].len > 0 && fields[1].len <= 9;
    for (size_t i = 0; whole && i < fields[1].len; i++)
        whole = fields[1].at[i] >= '0' && fields[1].at[i] <= '9';
    if (!whole) {
        put(&msg, "quantity ");
        put_json(&msg, fields[1].at, fields[1].len);
        put(&msg, " is not a whole number");
        return reject(err, &msg, "quantity", 0);
    }
    const char *quantity = fields[1].at;
    size_t digits = fields[1].len;
    while (digits > 1 && *quantity == '0') quantity++, digits--; /* JSON numbers: no leading 0 */

    char *source = source_setting();
    buffer body = {0};
    put(&body, "{\"event\":\"production.reported\",\"plant\":");
    put_json(&body, (const char *)input->plant.ptr, input->plant.len);
    put(&body, ",\"source\":");
    put_json(&body, source, strlen(source));
    put(&body, ",\"work_order\":");
    put_json(&body, fields[0].at, fields[0].len);
    put(&body, ",\"quantity\":");
    put_n(&body, quantity, digits);
    put(&body, ",\"unit\":");
    put_json(&body, fields[2].at, fields[2].len);
    put(&body, "}");
    free(source);

    buffer id = {0};
    put_n(&id, (const char *)input->id.ptr, input->id.len);
    put(&id, "-1");
    ret->len = 1;
    ret->ptr = calloc(1, sizeof({{snake}}_message_t));
    if (!ret->ptr) __builtin_trap();
    {{snake}}_message_t *out = &ret->ptr[0];
    out->id.ptr = (uint8_t *)id.data;
    out->id.len = id.len;
    {{snake}}_string_dup_n(&out->plant, (const char *)input->plant.ptr, input->plant.len);
    {{snake}}_string_dup_n(&out->route, (const char *)input->route.ptr, input->route.len);
    {{snake}}_string_dup(&out->content_type, "application/json");
    out->body.ptr = (uint8_t *)body.data;
    out->body.len = body.len;
    return true;
}

/* ---- exports ---- */

static void list_of_one({{snake}}_list_string_t *list, const char *item) {
    list->len = 1;
    list->ptr = calloc(1, sizeof({{snake}}_string_t));
    if (!list->ptr) __builtin_trap();
    {{snake}}_string_dup(&list->ptr[0], item);
}

void exports_{{snake}}_describe({{snake}}_plugin_info_t *ret) {
    {{snake}}_string_dup(&ret->name, "{{name}}");
    {{snake}}_string_dup(&ret->version, PLUGIN_VERSION);
    list_of_one(&ret->accepts, "text/plain");
    list_of_one(&ret->emits, "production.reported");
}

bool exports_{{snake}}_check_settings({{snake}}_string_t *err) {
    char *source = source_setting();
    bool ok = *source != 0;
    free(source);
    if (!ok) {{snake}}_string_dup(err, "the setting `source` must not be empty");
    return ok;
}

bool exports_{{snake}}_mediate({{snake}}_message_t *input, {{snake}}_list_message_t *ret,
                               {{snake}}_mediation_error_t *err) {
    bool ok = mediate(input, ret, err);
    {{snake}}_message_free(input); /* the parameters belong to the plugin */
    return ok;
}
