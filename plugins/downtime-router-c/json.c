#include "json.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void json_reader_init(json_reader *r, const uint8_t *data, size_t len) {
    r->at = data;
    r->end = data + len;
    r->line = 1;
    r->column = 0;
    r->error[0] = 0;
}

int json_next(json_reader *r) {
    if (r->at >= r->end) return -1;
    uint8_t c = *r->at++;
    if (c == '\n') {
        r->line++;
        r->column = 0;
    } else {
        r->column++;
    }
    return c;
}

int json_peek(json_reader *r) {
    while (r->at < r->end && (*r->at == ' ' || *r->at == '\t' || *r->at == '\n' || *r->at == '\r'))
        json_next(r);
    return r->at < r->end ? *r->at : -1;
}

bool json_fail(json_reader *r, const char *what) {
    buffer b = {0};
    buf_put(&b, what);
    buf_put(&b, " at line ");
    buf_put_uint(&b, r->line, 1);
    buf_put(&b, " column ");
    buf_put_uint(&b, r->column, 1);
    size_t n = b.len < sizeof r->error - 1 ? b.len : sizeof r->error - 1;
    memcpy(r->error, b.data, n);
    r->error[n] = 0;
    free(b.data);
    return false;
}

/* Fail at the byte that is next (serde reports the position of the offending byte). */
static bool fail_at_next(json_reader *r, const char *what) {
    if (r->at < r->end) json_next(r);
    return json_fail(r, what);
}

static void put_utf8(buffer *b, uint32_t cp) {
    char out[4];
    size_t n;
    if (cp < 0x80) {
        out[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        out[0] = (char)(0xF0 | (cp >> 18));
        out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    buf_putn(b, out, n);
}

static bool read_hex4(json_reader *r, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int c = json_next(r);
        if (c < 0) return json_fail(r, "EOF while parsing a string");
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return json_fail(r, "invalid escape");
    }
    *out = v;
    return true;
}

bool json_read_string(json_reader *r, char **out, size_t *len) {
    buffer b = {0};
    json_next(r); /* opening quote */
    for (;;) {
        int c = json_next(r);
        if (c < 0) {
            free(b.data);
            return json_fail(r, "EOF while parsing a string");
        }
        if (c == '"') break;
        if (c < 0x20) {
            free(b.data);
            return json_fail(r, "control character (\\u0000-\\u001F) found while parsing a string");
        }
        if (c != '\\') {
            char ch = (char)c;
            buf_putn(&b, &ch, 1);
            continue;
        }
        int e = json_next(r);
        switch (e) {
        case '"': buf_put(&b, "\""); break;
        case '\\': buf_put(&b, "\\"); break;
        case '/': buf_put(&b, "/"); break;
        case 'b': buf_put(&b, "\b"); break;
        case 'f': buf_put(&b, "\f"); break;
        case 'n': buf_put(&b, "\n"); break;
        case 'r': buf_put(&b, "\r"); break;
        case 't': buf_put(&b, "\t"); break;
        case 'u': {
            uint32_t cp;
            if (!read_hex4(r, &cp)) {
                free(b.data);
                return false;
            }
            if (cp >= 0xD800 && cp < 0xDC00) {
                uint32_t low;
                if (json_next(r) != '\\' || json_next(r) != 'u' || !read_hex4(r, &low) ||
                    low < 0xDC00 || low > 0xDFFF) {
                    free(b.data);
                    return json_fail(r, "lone leading surrogate in hex escape");
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else if (cp >= 0xDC00 && cp < 0xE000) {
                free(b.data);
                return json_fail(r, "lone leading surrogate in hex escape");
            }
            put_utf8(&b, cp);
            break;
        }
        default:
            free(b.data);
            return json_fail(r, "invalid escape");
        }
    }
    buf_putn(&b, "", 0);
    if (!b.data) buf_put(&b, "");
    *out = b.data;
    *len = b.len;
    return true;
}

static bool expect_word(json_reader *r, const char *word) {
    for (const char *w = word; *w; w++) {
        int c = json_next(r);
        if (c != *w) return json_fail(r, c < 0 ? "EOF while parsing a value" : "expected ident");
    }
    return true;
}

static bool skip_nested(json_reader *r) {
    int depth = 0;
    for (;;) {
        int c = json_peek(r);
        if (c < 0) return json_fail(r, "EOF while parsing a value");
        if (c == '"') {
            char *s;
            size_t n;
            if (!json_read_string(r, &s, &n)) return false;
            free(s);
            continue;
        }
        json_next(r);
        if (c == '[' || c == '{') depth++;
        else if (c == ']' || c == '}') {
            if (--depth == 0) return true;
        }
    }
}

bool json_read_value(json_reader *r, json_value *out) {
    memset(out, 0, sizeof *out);
    int c = json_peek(r);
    switch (c) {
    case -1:
        return json_fail(r, "EOF while parsing a value");
    case '"':
        out->kind = JV_STRING;
        return json_read_string(r, &out->string, &out->length);
    case 'n':
        out->kind = JV_NULL;
        return expect_word(r, "null");
    case 't':
        out->kind = JV_BOOL;
        out->boolean = true;
        return expect_word(r, "true");
    case 'f':
        out->kind = JV_BOOL;
        return expect_word(r, "false");
    case '[':
    case '{':
        out->kind = JV_OTHER;
        return skip_nested(r);
    default:
        if (c == '-' || (c >= '0' && c <= '9')) {
            out->kind = JV_NUMBER;
            while (r->at < r->end && strchr("+-0123456789.eE", *r->at)) json_next(r);
            return true;
        }
        return fail_at_next(r, "expected value");
    }
}

void json_value_free(json_value *v) {
    free(v->string);
    v->string = NULL;
}

static void reserve(buffer *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data) __builtin_trap(); /* out of memory: the host's memory cap was reached */
    b->data = data;
    b->cap = cap;
}

void buf_putn(buffer *b, const char *text, size_t n) {
    reserve(b, n);
    memcpy(b->data + b->len, text, n);
    b->len += n;
    b->data[b->len] = 0;
}

void buf_put(buffer *b, const char *text) { buf_putn(b, text, strlen(text)); }

void buf_cat(buffer *b, ...) {
    va_list args;
    va_start(args, b);
    for (const char *s = va_arg(args, const char *); s; s = va_arg(args, const char *)) buf_put(b, s);
    va_end(args);
}

char *concat(const char *first, ...) {
    buffer b = {0};
    buf_put(&b, first);
    va_list args;
    va_start(args, first);
    for (const char *s = va_arg(args, const char *); s; s = va_arg(args, const char *)) buf_put(&b, s);
    va_end(args);
    return b.data;
}

void buf_put_uint(buffer *b, uint64_t value, int width) {
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n < width && n < (int)sizeof digits) digits[n++] = '0';
    reserve(b, (size_t)n);
    while (n) b->data[b->len++] = digits[--n];
    b->data[b->len] = 0;
}

void buf_json_string(buffer *b, const char *text) {
    buf_put(b, "\"");
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        switch (*p) {
        case '"': buf_put(b, "\\\""); break;
        case '\\': buf_put(b, "\\\\"); break;
        case '\n': buf_put(b, "\\n"); break;
        case '\r': buf_put(b, "\\r"); break;
        case '\t': buf_put(b, "\\t"); break;
        default:
            if (*p < 0x20) {
                static const char hex[] = "0123456789abcdef";
                char esc[7] = {'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15], 0};
                buf_put(b, esc);
            }
            else buf_putn(b, (const char *)p, 1);
        }
    }
    buf_put(b, "\"");
}

void buf_json_ratio(buffer *b, int64_t numerator, int64_t denominator) {
    bool negative = numerator < 0;
    uint64_t n = negative ? (uint64_t)(-numerator) : (uint64_t)numerator;
    uint64_t d = (uint64_t)denominator;
    double value = (double)numerator / (double)denominator;
    /* Exact decimal digits of n/d by long division: the integer part, then 24 fraction digits. */
    char integer[24];
    int int_len = 0;
    uint64_t whole = n / d, rest = n % d;
    do {
        integer[int_len++] = (char)('0' + whole % 10);
        whole /= 10;
    } while (whole);
    char digits[64];
    int len = 0;
    while (int_len) digits[len++] = integer[--int_len];
    int point = len;
    for (int i = 0; i < 24; i++) {
        rest *= 10;
        digits[len++] = (char)('0' + rest / d);
        rest %= d;
    }
    /* The fewest fraction digits (rounded half up) that read back as the same double. */
    char text[80];
    for (int frac = 1; frac <= 24; frac++) {
        char rounded[64];
        int used = point + frac;
        memcpy(rounded, digits, (size_t)used);
        bool up = used < len && digits[used] >= '5';
        for (int i = used - 1; up && i >= 0; i--) {
            if (rounded[i] == '9') rounded[i] = '0';
            else {
                rounded[i]++;
                up = false;
            }
        }
        int t = 0;
        if (negative) text[t++] = '-';
        if (up) text[t++] = '1';
        memcpy(text + t, rounded, (size_t)point);
        t += point;
        text[t++] = '.';
        memcpy(text + t, rounded + point, (size_t)frac);
        t += frac;
        text[t] = 0;
        if (strtod(text, NULL) == value) break;
    }
    buf_put(b, text);
}
