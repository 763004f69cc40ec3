/* A small, strict JSON reader and string writer; see json.h for the rules. */
#include "json.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- arena */

struct json_chunk {
    struct json_chunk *next;
    size_t used, cap;
    max_align_t data[];
};

struct json_doc {
    struct json_chunk *chunks;
    struct json_value *root;
};

#define JSON_CHUNK_BYTES 8192

static void *arena_alloc(struct json_doc *doc, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    if (n == 0)
        n = sizeof(max_align_t);
    struct json_chunk *c = doc->chunks;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > JSON_CHUNK_BYTES / 2 ? n : JSON_CHUNK_BYTES;
        c = malloc(sizeof *c + cap);
        if (!c)
            return NULL;
        c->cap = cap;
        c->used = 0;
        if (n > JSON_CHUNK_BYTES / 2 && doc->chunks) {
            /* a big one-off block: keep the current chunk first so its space is not lost */
            c->next = doc->chunks->next;
            doc->chunks->next = c;
        } else {
            c->next = doc->chunks;
            doc->chunks = c;
        }
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    return p;
}

void json_free(struct json_doc *doc)
{
    if (!doc)
        return;
    struct json_chunk *c = doc->chunks;
    while (c) {
        struct json_chunk *n = c->next;
        free(c);
        c = n;
    }
    free(doc);
}

const struct json_value *json_root(const struct json_doc *doc)
{
    return doc ? doc->root : NULL;
}

/* ---------------------------------------------------------------- UTF-8 */

/* Length of the valid UTF-8 sequence at p (1-4), or 0 if invalid; *cp gets the code point. */
static size_t utf8_seq(const unsigned char *p, size_t avail, uint32_t *cp)
{
    unsigned char c = p[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t n;
    uint32_t v, min;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        v = c & 0x1f;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        v = c & 0x0f;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        v = c & 0x07;
        min = 0x10000;
    } else {
        return 0;
    }
    if (avail < n)
        return 0;
    for (size_t k = 1; k < n; k++) {
        if ((p[k] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (p[k] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return n;
}

int json_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t k = utf8_seq(p + i, n - i, &cp);
        if (!k)
            return 0;
        i += k;
    }
    return 1;
}

static size_t utf8_put(char *out, uint32_t cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* ---------------------------------------------------------------- parser */

struct parser {
    const unsigned char *p;
    size_t len, pos;
    struct json_doc *doc;
    struct json_error *err;
    int failed;
};

static void fail(struct parser *ps, size_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(struct parser *ps, size_t at, const char *fmt, ...)
{
    if (ps->failed)
        return;
    ps->failed = 1;
    if (ps->err) {
        va_list ap;
        ps->err->offset = at;
        va_start(ap, fmt);
        vsnprintf(ps->err->msg, sizeof ps->err->msg, fmt, ap);
        va_end(ap);
    }
}

static void skip_ws(struct parser *ps)
{
    while (ps->pos < ps->len) {
        unsigned char c = ps->p[ps->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        ps->pos++;
    }
}

static struct json_value *new_value(struct parser *ps, enum json_type t)
{
    struct json_value *v = arena_alloc(ps->doc, sizeof *v);
    if (!v) {
        fail(ps, ps->pos, "out of memory");
        return NULL;
    }
    memset(v, 0, sizeof *v);
    v->type = t;
    return v;
}

static int hex4(const unsigned char *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        unsigned char c = p[k];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Parses a string at ps->pos (which is '"'); returns the decoded bytes in the arena. */
static int parse_string(struct parser *ps, const char **out, size_t *out_len)
{
    size_t start = ps->pos;
    ps->pos++; /* opening quote */
    /* find the closing quote to size the buffer: decoding never grows the text */
    size_t end = ps->pos;
    while (end < ps->len && ps->p[end] != '"') {
        if (ps->p[end] == '\\')
            end++;
        end++;
    }
    if (end >= ps->len) {
        fail(ps, start, "unterminated string");
        return -1;
    }
    char *buf = arena_alloc(ps->doc, end - ps->pos + 1);
    if (!buf) {
        fail(ps, start, "out of memory");
        return -1;
    }
    size_t n = 0;
    while (ps->pos < end) {
        unsigned char c = ps->p[ps->pos];
        if (c < 0x20) {
            fail(ps, ps->pos, "control character in string");
            return -1;
        }
        if (c != '\\') {
            uint32_t cp;
            size_t k = utf8_seq(ps->p + ps->pos, end - ps->pos, &cp);
            if (!k) {
                fail(ps, ps->pos, "invalid UTF-8 in string");
                return -1;
            }
            memcpy(buf + n, ps->p + ps->pos, k);
            n += k;
            ps->pos += k;
            continue;
        }
        /* escape; end > pos + 1 is guaranteed by the scan above */
        unsigned char e = ps->p[ps->pos + 1];
        size_t at = ps->pos;
        ps->pos += 2;
        switch (e) {
        case '"': buf[n++] = '"'; break;
        case '\\': buf[n++] = '\\'; break;
        case '/': buf[n++] = '/'; break;
        case 'b': buf[n++] = '\b'; break;
        case 'f': buf[n++] = '\f'; break;
        case 'n': buf[n++] = '\n'; break;
        case 'r': buf[n++] = '\r'; break;
        case 't': buf[n++] = '\t'; break;
        case 'u': {
            uint32_t cp;
            if (end - ps->pos < 4 || hex4(ps->p + ps->pos, &cp) < 0) {
                fail(ps, at, "bad \\u escape");
                return -1;
            }
            ps->pos += 4;
            if (cp >= 0xdc00 && cp <= 0xdfff) {
                fail(ps, at, "lone low surrogate");
                return -1;
            }
            if (cp >= 0xd800 && cp <= 0xdbff) {
                uint32_t lo;
                if (end - ps->pos < 6 || ps->p[ps->pos] != '\\' || ps->p[ps->pos + 1] != 'u' ||
                    hex4(ps->p + ps->pos + 2, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff) {
                    fail(ps, at, "high surrogate without a low surrogate");
                    return -1;
                }
                ps->pos += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            /* \uXXXX takes 6 input bytes and yields at most 3; a pair: 12 -> 4 */
            n += utf8_put(buf + n, cp);
            break;
        }
        default:
            fail(ps, at, "bad escape");
            return -1;
        }
    }
    buf[n] = 0;
    ps->pos = end + 1;
    *out = buf;
    *out_len = n;
    return 0;
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static struct json_value *parse_number(struct parser *ps)
{
    size_t start = ps->pos, i = ps->pos;
    const unsigned char *p = ps->p;
    int integral = 1;
    if (i < ps->len && p[i] == '-')
        i++;
    if (i >= ps->len || !is_digit(p[i])) {
        fail(ps, start, "bad number");
        return NULL;
    }
    if (p[i] == '0') {
        i++;
        if (i < ps->len && is_digit(p[i])) {
            fail(ps, start, "leading zero in number");
            return NULL;
        }
    } else {
        while (i < ps->len && is_digit(p[i]))
            i++;
    }
    if (i < ps->len && p[i] == '.') {
        integral = 0;
        i++;
        if (i >= ps->len || !is_digit(p[i])) {
            fail(ps, start, "bad fraction in number");
            return NULL;
        }
        while (i < ps->len && is_digit(p[i]))
            i++;
    }
    if (i < ps->len && (p[i] == 'e' || p[i] == 'E')) {
        integral = 0;
        i++;
        if (i < ps->len && (p[i] == '+' || p[i] == '-'))
            i++;
        if (i >= ps->len || !is_digit(p[i])) {
            fail(ps, start, "bad exponent in number");
            return NULL;
        }
        while (i < ps->len && is_digit(p[i]))
            i++;
    }
    struct json_value *v = new_value(ps, JSON_NUMBER);
    if (!v)
        return NULL;
    size_t n = i - start;
    char *text = arena_alloc(ps->doc, n + 1);
    if (!text) {
        fail(ps, start, "out of memory");
        return NULL;
    }
    memcpy(text, p + start, n);
    text[n] = 0;
    v->u.num.text = text;
    v->u.num.len = n;
    v->u.num.d = strtod(text, NULL); /* grammar checked above; the C locale is in effect */
    if (integral) {
        /* exact int64 conversion with overflow check */
        const char *q = text;
        int neg = *q == '-';
        if (neg)
            q++;
        uint64_t acc = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        int ok = 1;
        for (; *q; q++) {
            uint64_t d = (uint64_t)(*q - '0');
            if (acc > (limit - d) / 10) {
                ok = 0;
                break;
            }
            acc = acc * 10 + d;
        }
        if (ok) {
            v->u.num.is_int = 1;
            v->u.num.i = neg ? (acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc) : (int64_t)acc;
        }
    }
    ps->pos = i;
    return v;
}

static int key_cmp(const void *a, const void *b)
{
    const struct json_value *x = *(const struct json_value *const *)a, *y = *(const struct json_value *const *)b;
    if (x->key_len != y->key_len)
        return x->key_len < y->key_len ? -1 : 1;
    return memcmp(x->key, y->key, x->key_len);
}

static int check_duplicates(struct parser *ps, struct json_value *obj, size_t at)
{
    size_t n = obj->u.list.count;
    if (n < 2)
        return 0;
    if (n <= 8) {
        for (struct json_value *a = obj->u.list.first; a; a = a->next)
            for (struct json_value *b = a->next; b; b = b->next)
                if (a->key_len == b->key_len && memcmp(a->key, b->key, a->key_len) == 0) {
                    fail(ps, at, "duplicate key in object");
                    return -1;
                }
        return 0;
    }
    struct json_value **arr = malloc(n * sizeof *arr);
    if (!arr) {
        fail(ps, at, "out of memory");
        return -1;
    }
    size_t k = 0;
    for (struct json_value *a = obj->u.list.first; a; a = a->next)
        arr[k++] = a;
    qsort(arr, n, sizeof *arr, key_cmp);
    int dup = 0;
    for (k = 1; k < n && !dup; k++)
        dup = key_cmp(&arr[k - 1], &arr[k]) == 0;
    free(arr);
    if (dup) {
        fail(ps, at, "duplicate key in object");
        return -1;
    }
    return 0;
}

static struct json_value *parse_value(struct parser *ps, int depth);

static struct json_value *parse_container(struct parser *ps, int depth, int is_object)
{
    size_t start = ps->pos;
    if (depth >= JSON_MAX_DEPTH) {
        fail(ps, start, "nested deeper than %d", JSON_MAX_DEPTH);
        return NULL;
    }
    struct json_value *c = new_value(ps, is_object ? JSON_OBJECT : JSON_ARRAY);
    if (!c)
        return NULL;
    struct json_value **tail = &c->u.list.first;
    char close = is_object ? '}' : ']';
    ps->pos++;
    skip_ws(ps);
    if (ps->pos < ps->len && ps->p[ps->pos] == (unsigned char)close) {
        ps->pos++;
        return c;
    }
    for (;;) {
        const char *key = NULL;
        size_t key_len = 0;
        if (is_object) {
            if (ps->pos >= ps->len || ps->p[ps->pos] != '"') {
                fail(ps, ps->pos, "expected a string key");
                return NULL;
            }
            if (parse_string(ps, &key, &key_len) < 0)
                return NULL;
            skip_ws(ps);
            if (ps->pos >= ps->len || ps->p[ps->pos] != ':') {
                fail(ps, ps->pos, "expected ':'");
                return NULL;
            }
            ps->pos++;
            skip_ws(ps);
        }
        struct json_value *v = parse_value(ps, depth + 1);
        if (!v)
            return NULL;
        v->key = key;
        v->key_len = key_len;
        *tail = v;
        tail = &v->next;
        c->u.list.count++;
        skip_ws(ps);
        if (ps->pos >= ps->len) {
            fail(ps, ps->pos, "unterminated %s", is_object ? "object" : "array");
            return NULL;
        }
        unsigned char ch = ps->p[ps->pos];
        if (ch == ',') {
            ps->pos++;
            skip_ws(ps);
            continue;
        }
        if (ch == (unsigned char)close) {
            ps->pos++;
            break;
        }
        fail(ps, ps->pos, "expected ',' or '%c'", close);
        return NULL;
    }
    if (is_object && check_duplicates(ps, c, start) < 0)
        return NULL;
    return c;
}

static int match_word(struct parser *ps, const char *w)
{
    size_t n = strlen(w);
    if (ps->len - ps->pos < n || memcmp(ps->p + ps->pos, w, n) != 0)
        return 0;
    ps->pos += n;
    return 1;
}

static struct json_value *parse_value(struct parser *ps, int depth)
{
    if (ps->pos >= ps->len) {
        fail(ps, ps->pos, "unexpected end of input");
        return NULL;
    }
    unsigned char c = ps->p[ps->pos];
    switch (c) {
    case '{':
        return parse_container(ps, depth, 1);
    case '[':
        return parse_container(ps, depth, 0);
    case '"': {
        struct json_value *v = new_value(ps, JSON_STRING);
        if (!v || parse_string(ps, &v->u.str.s, &v->u.str.len) < 0)
            return NULL;
        return v;
    }
    case 't':
        if (match_word(ps, "true"))
            return new_value(ps, JSON_TRUE);
        break;
    case 'f':
        if (match_word(ps, "false"))
            return new_value(ps, JSON_FALSE);
        break;
    case 'n':
        if (match_word(ps, "null"))
            return new_value(ps, JSON_NULL);
        break;
    default:
        if (c == '-' || is_digit(c))
            return parse_number(ps);
        break;
    }
    fail(ps, ps->pos, "unexpected character 0x%02x", c);
    return NULL;
}

struct json_doc *json_parse(const char *buf, size_t len, size_t max_len, struct json_error *err)
{
    if (err) {
        err->offset = 0;
        err->msg[0] = 0;
    }
    if (max_len == 0 || max_len > JSON_MAX_INPUT)
        max_len = JSON_MAX_INPUT;
    if (len > max_len) {
        if (err) {
            err->offset = max_len;
            snprintf(err->msg, sizeof err->msg, "input longer than %zu bytes", max_len);
        }
        return NULL;
    }
    struct json_doc *doc = calloc(1, sizeof *doc);
    if (!doc) {
        if (err)
            snprintf(err->msg, sizeof err->msg, "out of memory");
        return NULL;
    }
    struct parser ps = {.p = (const unsigned char *)buf, .len = len, .pos = 0, .doc = doc, .err = err, .failed = 0};
    if (!buf)
        ps.len = 0;
    skip_ws(&ps);
    struct json_value *root = parse_value(&ps, 0);
    if (root) {
        skip_ws(&ps);
        if (ps.pos != ps.len)
            fail(&ps, ps.pos, "trailing data after the value");
    }
    if (ps.failed || !root) {
        json_free(doc);
        return NULL;
    }
    doc->root = root;
    return doc;
}

/* ---------------------------------------------------------------- lookups */

const struct json_value *json_get(const struct json_value *obj, const char *key)
{
    if (!obj || obj->type != JSON_OBJECT)
        return NULL;
    size_t n = strlen(key);
    for (const struct json_value *m = obj->u.list.first; m; m = m->next)
        if (m->key_len == n && memcmp(m->key, key, n) == 0)
            return m;
    return NULL;
}

const struct json_value *json_get_type(const struct json_value *obj, const char *key, enum json_type t)
{
    const struct json_value *v = json_get(obj, key);
    return v && v->type == t ? v : NULL;
}

const char *json_cstr(const struct json_value *v)
{
    if (!v || v->type != JSON_STRING || memchr(v->u.str.s, 0, v->u.str.len))
        return NULL;
    return v->u.str.s;
}

int json_int(const struct json_value *v, int64_t *out)
{
    if (!v || v->type != JSON_NUMBER || !v->u.num.is_int)
        return -1;
    *out = v->u.num.i;
    return 0;
}

/* ---------------------------------------------------------------- writer */

void json_buf_init(struct json_buf *b)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->failed = 0;
}

void json_buf_free(struct json_buf *b)
{
    free(b->data);
    json_buf_init(b);
}

void json_buf_put(struct json_buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->cap - b->len < n + 1) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n + 1) {
            if (cap > SIZE_MAX / 2) {
                b->failed = 1;
                return;
            }
            cap *= 2;
        }
        char *d = realloc(b->data, cap);
        if (!d) {
            b->failed = 1;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = 0;
}

void json_buf_puts(struct json_buf *b, const char *s)
{
    json_buf_put(b, s, strlen(s));
}

void json_buf_put_string(struct json_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    json_buf_put(b, "\"", 1);
    size_t run = 0; /* start of the current run of bytes copied as they are */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[7];
        size_t elen = 0;
        switch (c) {
        case '"': memcpy(esc, "\\\"", 2); elen = 2; break;
        case '\\': memcpy(esc, "\\\\", 2); elen = 2; break;
        case '\b': memcpy(esc, "\\b", 2); elen = 2; break;
        case '\f': memcpy(esc, "\\f", 2); elen = 2; break;
        case '\n': memcpy(esc, "\\n", 2); elen = 2; break;
        case '\r': memcpy(esc, "\\r", 2); elen = 2; break;
        case '\t': memcpy(esc, "\\t", 2); elen = 2; break;
        default:
            if (c < 0x20) {
                esc[0] = '\\';
                esc[1] = 'u';
                esc[2] = '0';
                esc[3] = '0';
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                elen = 6;
            }
        }
        if (elen) {
            json_buf_put(b, s + run, i - run);
            json_buf_put(b, esc, elen);
            run = i + 1;
        }
    }
    json_buf_put(b, s + run, n - run);
    json_buf_put(b, "\"", 1);
}

void json_buf_put_value_with(struct json_buf *b, const struct json_value *v, json_put_string_fn put_string)
{
    switch (v->type) {
    case JSON_NULL: json_buf_puts(b, "null"); break;
    case JSON_FALSE: json_buf_puts(b, "false"); break;
    case JSON_TRUE: json_buf_puts(b, "true"); break;
    case JSON_NUMBER: json_buf_put(b, v->u.num.text, v->u.num.len); break;
    case JSON_STRING: put_string(b, v->u.str.s, v->u.str.len); break;
    case JSON_ARRAY:
    case JSON_OBJECT: {
        int obj = v->type == JSON_OBJECT;
        json_buf_put(b, obj ? "{" : "[", 1);
        for (const struct json_value *m = v->u.list.first; m; m = m->next) {
            if (m != v->u.list.first)
                json_buf_put(b, ",", 1);
            if (obj) {
                put_string(b, m->key, m->key_len);
                json_buf_put(b, ":", 1);
            }
            json_buf_put_value_with(b, m, put_string);
        }
        json_buf_put(b, obj ? "}" : "]", 1);
        break;
    }
    }
}

void json_buf_put_value(struct json_buf *b, const struct json_value *v)
{
    json_buf_put_value_with(b, v, json_buf_put_string);
}
