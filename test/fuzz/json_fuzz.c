/*
 * libFuzzer harness for helper/native/json.c (the static client's JSON reader).
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Ihelper/native \
 *         test/fuzz/json_fuzz.c helper/native/json.c -o json_fuzz
 *   ./json_fuzz -max_total_time=20 test/fuzz/corpus/json
 *
 * Properties checked on every input (any violation aborts, which libFuzzer reports as a crash):
 * - the parser returns a document or an error with a message inside the input, never anything else;
 * - an accepted document re-serializes (json_buf_put_value) to text that parses again and
 *   serializes to exactly the same bytes (a fixed point), and that text is valid UTF-8;
 * - every accepted string is valid UTF-8 and NUL-terminated at its length;
 * - json_buf_put_string of the raw input bytes (when valid UTF-8) gives a JSON string that
 *   parses back to exactly those bytes.
 * Leaks are caught by LeakSanitizer (json_free must release everything).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static void check(int cond)
{
    if (!cond)
        abort();
}

static void walk(const struct json_value *v, int depth)
{
    check(depth <= JSON_MAX_DEPTH);
    switch (v->type) {
    case JSON_STRING:
        check(v->u.str.s[v->u.str.len] == 0);
        check(json_utf8_valid(v->u.str.s, v->u.str.len));
        break;
    case JSON_NUMBER:
        check(v->u.num.len > 0 && v->u.num.text[v->u.num.len] == 0);
        break;
    case JSON_ARRAY:
    case JSON_OBJECT: {
        size_t n = 0;
        for (const struct json_value *m = v->u.list.first; m; m = m->next) {
            if (v->type == JSON_OBJECT) {
                check(m->key != NULL && m->key[m->key_len] == 0);
                check(json_utf8_valid(m->key, m->key_len));
                check(json_get(v, "") == NULL || json_get(v, "")->key_len == 0);
            } else {
                check(m->key == NULL);
            }
            walk(m, depth + 1);
            n++;
        }
        check(n == v->u.list.count);
        break;
    }
    default:
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct json_error err;
    struct json_doc *doc = json_parse((const char *)data, size, 65536, &err);
    if (!doc) {
        check(err.msg[0] != 0);
        check(err.offset <= size);
    } else {
        const struct json_value *root = json_root(doc);
        check(root != NULL);
        walk(root, 0);

        struct json_buf a, b;
        json_buf_init(&a);
        json_buf_init(&b);
        json_buf_put_value(&a, root);
        check(!a.failed);
        check(json_utf8_valid(a.data, a.len));
        struct json_doc *again = json_parse(a.data, a.len, JSON_MAX_INPUT, &err);
        check(again != NULL);
        json_buf_put_value(&b, json_root(again));
        check(!b.failed && a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
        json_free(again);
        json_buf_free(&a);
        json_buf_free(&b);
        json_free(doc);
    }

    /* the string writer round-trips any valid UTF-8 */
    if (size <= 4096 && json_utf8_valid((const char *)data, size)) {
        struct json_buf s;
        json_buf_init(&s);
        json_buf_put_string(&s, (const char *)data, size);
        check(!s.failed);
        struct json_doc *d = json_parse(s.data, s.len, JSON_MAX_INPUT, &err);
        check(d != NULL);
        const struct json_value *v = json_root(d);
        check(v->type == JSON_STRING && v->u.str.len == size && memcmp(v->u.str.s, data, size) == 0);
        json_free(d);
        json_buf_free(&s);
    }
    return 0;
}
