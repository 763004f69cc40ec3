/*
 * A small, strict JSON reader (RFC 8259) and string writer for the static client.
 *
 * Strict: no comments, no trailing commas, no leading zeros, no NaN/Infinity, no bare control
 * characters in strings, only valid UTF-8 (no overlong forms, no surrogates, nothing above
 * U+10FFFF), \uXXXX escapes decoded to UTF-8 with surrogate pairs (a lone surrogate is an error),
 * duplicate keys in one object are an error, nesting at most JSON_MAX_DEPTH, input at most the
 * caller's limit (and JSON_MAX_INPUT). Anything else is refused with a message and an offset.
 *
 * Memory: everything of one document lives in one arena; json_free() releases it.
 */
#ifndef FUSE_SVC_JSON_H
#define FUSE_SVC_JSON_H

#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 32
#define JSON_MAX_INPUT (1u << 20)

enum json_type { JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

struct json_value {
    enum json_type type;
    /* member of an object: its key (decoded UTF-8, NUL-terminated, may hold \u0000) */
    const char *key;
    size_t key_len;
    struct json_value *next; /* next element / member */
    union {
        struct {
            const char *s; /* decoded UTF-8, NUL-terminated; s[len] == 0; may contain NUL bytes */
            size_t len;
        } str;
        struct {
            const char *text; /* the literal as written, NUL-terminated */
            size_t len;
            double d;
            int is_int; /* integer syntax (no fraction, no exponent) and fits int64 */
            int64_t i;
        } num;
        struct {
            struct json_value *first;
            size_t count;
        } list; /* array elements or object members, in document order */
    } u;
};

struct json_doc;

struct json_error {
    size_t offset; /* byte offset of the problem in the input */
    char msg[96];
};

/* Parses exactly one JSON value (surrounded by optional whitespace) from buf[0..len).
 * max_len: refuse longer input (0 = JSON_MAX_INPUT). Returns NULL and fills *err on error. */
struct json_doc *json_parse(const char *buf, size_t len, size_t max_len, struct json_error *err);
const struct json_value *json_root(const struct json_doc *doc);
void json_free(struct json_doc *doc);

/* Lookup helpers; NULL when absent or of another type. */
const struct json_value *json_get(const struct json_value *obj, const char *key);
const struct json_value *json_get_type(const struct json_value *obj, const char *key, enum json_type t);
/* The string if v is a string without NUL bytes, else NULL. */
const char *json_cstr(const struct json_value *v);
/* 0 and *out set when v is an integer literal that fits int64, else -1. */
int json_int(const struct json_value *v, int64_t *out);

/* A growable output buffer. */
struct json_buf {
    char *data;
    size_t len, cap;
    int failed; /* an allocation failed; data is then unusable */
};
void json_buf_init(struct json_buf *b);
void json_buf_free(struct json_buf *b);
void json_buf_put(struct json_buf *b, const char *s, size_t n);
void json_buf_puts(struct json_buf *b, const char *s);
/* Appends s[0..n) as a JSON string literal escaped exactly as JavaScript's JSON.stringify does:
 * \" \\ \b \f \n \r \t, other control characters as \u00xx; everything else is copied
 * (bytes >= 0x80 too: the caller checks UTF-8). */
void json_buf_put_string(struct json_buf *b, const char *s, size_t n);
/* Serializes a parsed value compactly (numbers as written, strings re-escaped). */
void json_buf_put_value(struct json_buf *b, const struct json_value *v);
/* The same, with every string and key written by put_string (a stricter escaper, say). */
typedef void (*json_put_string_fn)(struct json_buf *b, const char *s, size_t n);
void json_buf_put_value_with(struct json_buf *b, const struct json_value *v, json_put_string_fn put_string);

/* 1 when s[0..n) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF), else 0. */
int json_utf8_valid(const char *s, size_t n);

#endif
