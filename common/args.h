/* Command-line flags: a table of --name value options with defaults and help text, so every binary has
 * the same parsing, the same errors and a generated --help. */
#ifndef MEDUSA_ARGS_H
#define MEDUSA_ARGS_H

typedef enum { ARG_STR, ARG_INT, ARG_FLOAT, ARG_FLAG, ARG_DOUBLE } ArgType;

typedef struct {
    const char *name; /* without the leading dashes */
    ArgType type;
    void *value; /* const char **, int *, float *, int *, double * */
    const char *help;
} ArgSpec;

/* Parses argv[first..]; prints help and exits 0 on --help; fatal on an unknown flag or a bad value.
 * Positional arguments are collected into positional (up to max_positional). Returns their count. */
int args_parse(int argc, char **argv, int first, const ArgSpec *specs, int n_specs, const char *usage,
               const char **positional, int max_positional);
void args_print_help(const char *usage, const ArgSpec *specs, int n_specs);

#endif
