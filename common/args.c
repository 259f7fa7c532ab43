#include "args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

void args_print_help(const char *usage, const ArgSpec *specs, int n_specs) {
    printf("%s\n\noptions:\n", usage);
    for (int i = 0; i < n_specs; i++) {
        const ArgSpec *s = &specs[i];
        char def[64] = "";
        switch (s->type) {
        case ARG_STR:
            if (*(const char **)s->value) snprintf(def, sizeof def, " (default: %s)", *(const char **)s->value);
            break;
        case ARG_INT:
            snprintf(def, sizeof def, " (default: %d)", *(int *)s->value);
            break;
        case ARG_FLOAT:
            snprintf(def, sizeof def, " (default: %g)", (double)*(float *)s->value);
            break;
        case ARG_DOUBLE:
            snprintf(def, sizeof def, " (default: %g)", *(double *)s->value);
            break;
        case ARG_FLAG:
            break;
        }
        const char *meta = s->type == ARG_FLAG ? "" : s->type == ARG_STR ? " TEXT" : " N";
        char flag[64];
        snprintf(flag, sizeof flag, "--%s%s", s->name, meta);
        printf("  %-26s %s%s\n", flag, s->help, def);
    }
    printf("  %-26s %s\n", "--help", "show this help");
}

int args_parse(int argc, char **argv, int first, const ArgSpec *specs, int n_specs, const char *usage,
               const char **positional, int max_positional) {
    int n_pos = 0;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            args_print_help(usage, specs, n_specs);
            exit(0);
        }
        if (strncmp(a, "--", 2) != 0) {
            if (n_pos >= max_positional) fatal("unexpected argument '%s' (see --help)", a);
            positional[n_pos++] = a;
            continue;
        }
        const char *name = a + 2, *inline_value = strchr(name, '=');
        size_t name_len = inline_value ? (size_t)(inline_value - name) : strlen(name);
        const ArgSpec *s = NULL;
        for (int j = 0; j < n_specs; j++)
            if (strlen(specs[j].name) == name_len && strncmp(specs[j].name, name, name_len) == 0) s = &specs[j];
        if (!s) fatal("unknown option '%s' (see --help)", a);
        if (s->type == ARG_FLAG) {
            *(int *)s->value = 1;
            continue;
        }
        const char *v = inline_value ? inline_value + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) fatal("option --%s needs a value", s->name);
        char *end;
        errno = 0;
        switch (s->type) {
        case ARG_STR:
            *(const char **)s->value = v;
            break;
        case ARG_INT: {
            long x = strtol(v, &end, 10);
            if (end == v || *end || errno || x < -2147483647L || x > 2147483647L)
                fatal("option --%s needs an integer, got '%s'", s->name, v);
            *(int *)s->value = (int)x;
            break;
        }
        case ARG_FLOAT: {
            float x = strtof(v, &end);
            if (end == v || *end || errno) fatal("option --%s needs a number, got '%s'", s->name, v);
            if (!isfinite(x)) fatal("option --%s needs a finite number, got '%s'", s->name, v);
            *(float *)s->value = x;
            break;
        }
        case ARG_DOUBLE: {
            double x = strtod(v, &end);
            if (end == v || *end || errno) fatal("option --%s needs a number, got '%s'", s->name, v);
            if (!isfinite(x)) fatal("option --%s needs a finite number, got '%s'", s->name, v);
            *(double *)s->value = x;
            break;
        }
        case ARG_FLAG:
            break;
        }
    }
    return n_pos;
}
