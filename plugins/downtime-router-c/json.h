/* A strict JSON reader for flat objects, with serde_json-compatible error positions
 * (line and column of the byte at fault, 1-based), and a JSON writer into a growing buffer. */
#ifndef DOWNTIME_ROUTER_JSON_H
#define DOWNTIME_ROUTER_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const uint8_t *at;
    const uint8_t *end;
    uint32_t line;
    uint32_t column; /* column of the last byte consumed */
    char error[256];
} json_reader;

typedef enum { JV_NULL, JV_BOOL, JV_NUMBER, JV_STRING, JV_OTHER } json_kind;

typedef struct {
    json_kind kind;
    bool boolean;
    char *string; /* JV_STRING: NUL-terminated UTF-8, owned */
    size_t length;
} json_value;

void json_reader_init(json_reader *r, const uint8_t *data, size_t len);
/* Skip whitespace; the next byte, or -1 at the end (without consuming it). */
int json_peek(json_reader *r);
/* Consume one byte. */
int json_next(json_reader *r);
/* Set the error "WHAT at line L column C" at the current position; returns false. */
bool json_fail(json_reader *r, const char *what);
/* Read a string (the opening quote is next). */
bool json_read_string(json_reader *r, char **out, size_t *len);
/* Read a scalar value, or skip an array/object (kind JV_OTHER). */
bool json_read_value(json_reader *r, json_value *out);
void json_value_free(json_value *v);

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} buffer;

/* The buffer functions format without libc's stdio, so the plugin links no WASI imports. */
void buf_put(buffer *b, const char *text);
void buf_putn(buffer *b, const char *text, size_t n);
/* Append every string argument up to a NULL. */
void buf_cat(buffer *b, ...);
/* A new NUL-terminated string of every argument up to a NULL. */
char *concat(const char *first, ...);
/* Append `value` in decimal, zero-padded to `width` digits. */
void buf_put_uint(buffer *b, uint64_t value, int width);
/* Append `text` as a JSON string literal. */
void buf_json_string(buffer *b, const char *text);
/* Append numerator/denominator (denominator > 0) as the JSON number of the nearest double, in
 * its shortest form that reads back as that double, with a fraction (as serde_json writes an
 * f64). */
void buf_json_ratio(buffer *b, int64_t numerator, int64_t denominator);

#endif
