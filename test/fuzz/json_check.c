/*
 * Test-only: runs helper/native/json.c over files and prints one line per file:
 *   OK <compact re-serialization>      or      ERR <offset> <message>
 * Used by test/fuzz.test.ts to pin down what the reader accepts and refuses.
 */
#include <stdio.h>
#include <stdlib.h>

#include "json.h"

int main(int argc, char **argv)
{
    static char buf[JSON_MAX_INPUT + 2];
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            perror(argv[i]);
            return 2;
        }
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        struct json_error e;
        struct json_doc *d = json_parse(buf, n, 0, &e);
        if (!d) {
            printf("ERR %zu %s\n", e.offset, e.msg);
            continue;
        }
        struct json_buf b;
        json_buf_init(&b);
        json_buf_put_value(&b, json_root(d));
        printf("OK %s\n", b.failed ? "(out of memory)" : b.data);
        json_buf_free(&b);
        json_free(d);
    }
    return 0;
}
