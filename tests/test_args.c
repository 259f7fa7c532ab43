/* Command-line parsing (common/args.c): every bad value is an error naming the flag; numbers must be finite. */
#include "../common/args.h"
#include "test.h"

static int i_val;
static float f_val;
static double d_val;
static const ArgSpec SPECS[] = {
    {"count", ARG_INT, &i_val, "an int"},
    {"temperature", ARG_FLOAT, &f_val, "a float"},
    {"lr", ARG_DOUBLE, &d_val, "a double"},
};

static void parse(const char *flag, const char *value) {
    char *argv[] = {"prog", (char *)flag, (char *)value, NULL};
    args_parse(3, argv, 1, SPECS, 3, "usage", NULL, 0);
}

/* flag value must fail with an error containing want and quoting the value */
static void refused(const char *flag, const char *value, const char *want) {
    EXPECT_FATAL(parse(flag, value), want, "%s '%s' is refused naming the flag", flag, value);
    CHECK(strstr(test_fatal_msg, flag) && strstr(test_fatal_msg, value), "the error quotes '%s'", value);
}

int main(void) {
    parse("--lr", "2.5e-4");
    parse("--temperature", "0.7");
    parse("--count", "-3");
    CHECK(d_val == 2.5e-4 && f_val == 0.7f && i_val == -3,
          "good values parse: --lr 2.5e-4, --temperature 0.7, --count -3");
    const char *flags[2] = {"--lr", "--temperature"};
    const char *bad[] = {"nan", "NaN", "inf", "-inf", "infinity", "1e999"};
    for (int f = 0; f < 2; f++)
        for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) refused(flags[f], bad[b], "needs a");
    refused("--temperature", "1e39", "needs a number"); /* beyond float range */
    const char *not_numbers[] = {"", "abc", "1.5x", " "};
    for (size_t b = 0; b < sizeof not_numbers / sizeof not_numbers[0]; b++) {
        refused("--lr", not_numbers[b], "needs a number");
        refused("--count", not_numbers[b], "needs an integer");
    }
    refused("--count", "1.5", "needs an integer");
    refused("--count", "99999999999", "needs an integer");
    return test_summary();
}
