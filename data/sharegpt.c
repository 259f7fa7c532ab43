#include "sharegpt.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static const char *const skip_keys[SKIP_COUNT] = {
    "invalid_json", "not_object", "no_turn_list", "empty",           "malformed_turn", "unknown_role",
    "empty_turn",   "role_order", "no_reply",     "nothing_trained", "alignment",      "truncated_file",
};
static const char *const skip_texts[SKIP_COUNT] = {
    "not valid JSON",
    "not a JSON object",
    "no \"conversations\" or \"messages\" list",
    "empty conversation",
    "malformed turn (needs string from/value or role/content)",
    "unknown role",
    "empty or whitespace-only turn",
    "roles do not alternate user/assistant",
    "no assistant reply",
    "no trained token within --max-len",
    "tokens do not spell the rendered text",
    "cut off by the end of the file",
};

const char *skip_reason_key(SkipReason r) { return skip_keys[r]; }
const char *skip_reason_text(SkipReason r) { return skip_texts[r]; }

/* ShareGPT dumps name the same two speakers several ways. */
static int role_from_name(const char *name) {
    static const char *const users[] = {"human", "user"};
    static const char *const assistants[] = {"gpt", "assistant", "chatgpt", "bing", "bard", "model"};
    if (strcmp(name, "system") == 0) return ROLE_SYSTEM;
    for (size_t i = 0; i < sizeof users / sizeof *users; i++)
        if (strcmp(name, users[i]) == 0) return ROLE_USER;
    for (size_t i = 0; i < sizeof assistants / sizeof *assistants; i++)
        if (strcmp(name, assistants[i]) == 0) return ROLE_ASSISTANT;
    return -1;
}

/* Bytes of the Python-whitespace character (str.isspace) starting at s[0], or 0. */
static size_t space_at(const unsigned char *s, size_t n) {
    if (n >= 1 && ((s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x20))) return 1;
    if (n >= 2 && s[0] == 0xc2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2;
    if (n >= 3) {
        unsigned cp = ((s[0] & 0x0fu) << 12) | ((s[1] & 0x3fu) << 6) | (s[2] & 0x3fu);
        if ((s[0] & 0xf0) == 0xe0 && (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
                                      cp == 0x202f || cp == 0x205f || cp == 0x3000))
            return 3;
    }
    return 0;
}

void text_strip(const char **text, size_t *len) {
    const unsigned char *s = (const unsigned char *)*text;
    size_t b = 0, e = *len, k;
    while (b < e && (k = space_at(s + b, e - b)) > 0) b += k;
    while (e > b) {
        /* step back to the start of the last character */
        size_t c = e - 1;
        while (c > b && (s[c] & 0xc0) == 0x80) c--;
        if (space_at(s + c, e - c) != e - c) break;
        e = c;
    }
    *text += b;
    *len = e - b;
}

/* The member named key; of duplicates the last, as Python's json (the reference's reader) keeps it. */
static const cJSON *member(const cJSON *obj, const char *key) {
    const cJSON *found = NULL, *e;
    cJSON_ArrayForEach(e, obj) if (e->string && strcmp(e->string, key) == 0) found = e;
    return found;
}

static const cJSON *either(const cJSON *obj, const char *a, const char *b) {
    const cJSON *v = member(obj, a);
    return v ? v : member(obj, b);
}

int conversation_from_json(Conversation *c, void *json) {
    memset(c, 0, sizeof *c);
    c->json = json;
    const cJSON *root = json;
    if (!cJSON_IsObject(root)) return SKIP_NOT_OBJECT;
    const cJSON *id = member(root, "id");
    if (cJSON_IsString(id)) c->id = id->valuestring;
    const cJSON *list = either(root, "conversations", "messages");
    if (!cJSON_IsArray(list)) return SKIP_NO_TURN_LIST;
    int n = cJSON_GetArraySize(list);
    if (n == 0) return SKIP_EMPTY;
    c->turns = xmalloc((size_t)n * sizeof *c->turns);
    int k = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, list) {
        const cJSON *role = cJSON_IsObject(t) ? either(t, "from", "role") : NULL;
        const cJSON *text = cJSON_IsObject(t) ? either(t, "value", "content") : NULL;
        if (!cJSON_IsString(role) || !cJSON_IsString(text)) return SKIP_MALFORMED_TURN;
        int r = role_from_name(role->valuestring);
        if (r < 0) return SKIP_UNKNOWN_ROLE;
        Turn turn = {(Role)r, text->valuestring, strlen(text->valuestring)};
        const char *s = turn.text;
        size_t len = turn.len;
        text_strip(&s, &len);
        if (len == 0) return SKIP_EMPTY_TURN;
        c->turns[k++] = turn;
    }
    int first = c->turns[0].role == ROLE_SYSTEM;
    if (first < k && c->turns[first].role == ROLE_ASSISTANT) {
        memmove(c->turns + first, c->turns + first + 1, (size_t)(k - first - 1) * sizeof *c->turns);
        k--;
    }
    if (k > first && c->turns[k - 1].role == ROLE_USER) k--;
    for (int i = first; i < k; i++)
        if (c->turns[i].role != ((i - first) % 2 == 0 ? ROLE_USER : ROLE_ASSISTANT)) return SKIP_ROLE_ORDER;
    if (k - first < 2) return SKIP_NO_REPLY;
    c->n_turns = k;
    return -1;
}

void conversation_free(Conversation *c) {
    cJSON_Delete(c->json);
    free(c->turns);
    memset(c, 0, sizeof *c);
}

static int is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r'; }

/* Index just past the closing quote of the JSON string opening at s[p], or 0 when the data ends first. */
static size_t string_end(const char *s, size_t p, size_t n) {
    for (size_t from = p + 1;;) {
        const char *q = memchr(s + from, '"', n - from);
        if (!q) return 0;
        size_t k = (size_t)(q - s), b = k;
        while (s[b - 1] == '\\') b--; /* stops at the opening quote at the latest */
        if ((k - b) % 2 == 0) return k + 1;
        from = k + 1;
    }
}

/* Bytes JSON allows outside strings: structure, whitespace, and the characters of numbers, true, false and null.
 * Anything else (a letter of prose, a control character, a raw NUL) means the text is not JSON. */
static int json_outside_byte(unsigned char ch) {
    return strchr("{}[]:, \t\n\r-+.0123456789eEtruefalsn", ch) != NULL && ch != '\0';
}

/* End of the JSON value starting at s[p], found by matching brackets outside strings (cJSON validates the
 * span afterwards), or 0 when the data ends inside it. This lets a file of any size stream through a
 * small parser one conversation at a time. *not_json is set when a byte outside strings cannot be JSON: a value
 * the end of the data cuts is then not JSON rather than cut off. A scalar is at least one byte long. */
static size_t value_end(const char *s, size_t p, size_t n, int *not_json) {
    *not_json = 0;
    if (s[p] == '"') return string_end(s, p, n);
    if (s[p] != '{' && s[p] != '[') {
        size_t b = p;
        while (p < n && !is_space(s[p]) && s[p] != ',' && s[p] != ']' && s[p] != '}') p++;
        return p > b ? p : b + 1;
    }
    int depth = 0;
    for (; p < n; p++) {
        char ch = s[p];
        if (ch == '"') {
            size_t e = string_end(s, p, n);
            if (!e) return 0;
            p = e - 1;
        } else if (ch == '{' || ch == '[') {
            depth++;
        } else if ((ch == '}' || ch == ']') && --depth == 0) {
            return p + 1;
        } else if (!json_outside_byte((unsigned char)ch)) {
            *not_json = 1;
        }
    }
    return 0;
}

static void skip_space(ShareGPTReader *r) {
    while (r->pos < r->mf.size && is_space((char)r->mf.data[r->pos])) r->pos++;
}

/* A printable description of the byte at r->pos for messages. */
static const char *byte_name(const ShareGPTReader *r, char buf[8]) {
    unsigned char ch = r->mf.data[r->pos];
    if (ch >= 0x21 && ch < 0x7f) snprintf(buf, 8, "'%c'", ch);
    else snprintf(buf, 8, "0x%02x", ch);
    return buf;
}

/* Span of the next top-level element: 1 found, 0 end of data, -1 the data ends inside the element (counted as cut
 * off), -2 it ends inside an element that is not JSON (counted as invalid). Structure between elements is checked
 * as strictly as a JSON parser does: a list needs ',' between elements and its closing ']' with nothing but
 * whitespace after it; a file of objects (JSON lines without the .jsonl name) holds objects separated by whitespace
 * only. Anything else is fatal, naming the file and the byte. */
static int next_span(ShareGPTReader *r, size_t *begin, size_t *end) {
    const char *s = (const char *)r->mf.data;
    size_t n = r->mf.size;
    const char *path = r->mf.path;
    char b[8];
    if (r->done || (r->limit > 0 && r->elements >= r->limit)) return 0;
    skip_space(r);
    if (r->is_list) {
        if (r->elements > 0 && r->pos < n && s[r->pos] != ']') {
            if (s[r->pos] != ',')
                fatal("%s: malformed JSON at byte %zu: expected ',' or ']' after conversation %lld, found %s", path,
                      r->pos, (long long)r->elements, byte_name(r, b));
            r->pos++;
            skip_space(r);
            if (r->pos < n && (s[r->pos] == ']' || s[r->pos] == ','))
                fatal("%s: malformed JSON at byte %zu: expected a conversation after ',', found %s", path, r->pos,
                      byte_name(r, b));
        }
        if (r->pos >= n)
            fatal("%s: malformed JSON: the list of conversations has no closing ']' (the file ends after conversation "
                  "%lld)",
                  path, (long long)r->elements);
        if (s[r->pos] == ']') {
            r->done = 1;
            r->pos++;
            skip_space(r);
            if (r->pos < n)
                fatal("%s: malformed JSON at byte %zu: %s after the list of conversations (only one top-level value "
                      "is allowed)",
                      path, r->pos, byte_name(r, b));
            return 0;
        }
        if (s[r->pos] == ',') fatal("%s: malformed JSON at byte %zu: expected a conversation, found ','", path, r->pos);
    } else if (r->pos >= n) {
        r->done = 1;
        return 0;
    } else if (!r->is_lines && s[r->pos] != '{') {
        fatal("%s: malformed JSON at byte %zu: expected '{' (the next conversation) or the end of the file, found %s",
              path, r->pos, byte_name(r, b));
    }
    *begin = r->pos;
    int not_json = 0;
    if (r->is_lines) {
        const char *nl = memchr(s + r->pos, '\n', n - r->pos);
        *end = nl ? (size_t)(nl - s) : n;
    } else {
        *end = value_end(s, r->pos, n, &not_json);
    }
    r->elements++;
    if (*end == 0) {
        r->done = 1;
        r->pos = n;
        return not_json ? -2 : -1;
    }
    r->pos = *end;
    return 1;
}

void sharegpt_open(ShareGPTReader *r, const char *path) {
    memset(r, 0, sizeof *r);
    mapped_file_open(&r->mf, path);
    const unsigned char *s = r->mf.data;
    size_t n = r->mf.size;
    if (n >= 3 && s[0] == 0xef && s[1] == 0xbb && s[2] == 0xbf) r->pos = 3; /* UTF-8 byte order mark */
    while (r->pos < n && is_space((char)s[r->pos])) r->pos++;
    if (r->pos >= n) fatal("%s: empty file (expected ShareGPT JSON)", path);
    if (s[r->pos] != '[' && s[r->pos] != '{')
        fatal("%s: not JSON: expected '[' (a list of conversations) or '{' (JSON lines) at byte %zu, found 0x%02x",
              path, r->pos, s[r->pos]);
    size_t len = strlen(path);
    r->is_lines = len > 6 && strcmp(path + len - 6, ".jsonl") == 0;
    if (!r->is_lines && s[r->pos] == '[') {
        r->is_list = 1;
        r->pos++;
    }
}

void sharegpt_close(ShareGPTReader *r) { mapped_file_close(&r->mf); }

int sharegpt_next_text(ShareGPTReader *r, const char **text, size_t *len) {
    size_t b, e;
    int found = next_span(r, &b, &e);
    if (found == -1) r->skipped[SKIP_TRUNCATED_FILE]++;
    if (found == -2) r->skipped[SKIP_INVALID_JSON]++;
    if (found <= 0) return 0;
    *text = (const char *)r->mf.data + b;
    *len = e - b;
    return 1;
}

/* What cJSON lets through but a JSON parser (Python's json, the reference's) refuses, or that cJSON would turn into
 * a C string cut short: a control character (a raw NUL included) inside a string, a \u0000 escape (the text would
 * end there), and a \u escape without four hex digits. 1 when the text is clean. */
static int strings_clean(const char *text, size_t len) {
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (!in_string) {
            if (ch == '"') in_string = 1;
            else if (ch == '\0') return 0;
            continue;
        }
        if (ch < 0x20) return 0;
        if (ch == '"') {
            in_string = 0;
        } else if (ch == '\\') {
            if (i + 1 >= len) return 0;
            if (text[i + 1] == 'u') {
                if (i + 5 >= len) return 0;
                int zero = 1;
                for (int k = 2; k < 6; k++) {
                    unsigned char h = (unsigned char)text[i + k];
                    if (!((h >= '0' && h <= '9') || (h >= 'a' && h <= 'f') || (h >= 'A' && h <= 'F'))) return 0;
                    zero &= h == '0';
                }
                if (zero) return 0;
                i += 5;
            } else {
                i++;
            }
        }
    }
    return !in_string;
}

int conversation_parse(Conversation *c, const char *text, size_t len) {
    memset(c, 0, sizeof *c);
    if (!strings_clean(text, len)) return SKIP_INVALID_JSON;
    const char *parse_end = NULL;
    cJSON *json = cJSON_ParseWithLengthOpts(text, len, &parse_end, 0);
    if (!json) return SKIP_INVALID_JSON;
    /* nothing but whitespace may follow the value (a JSON line with trailing garbage is not JSON) */
    for (const char *q = parse_end; q && q < text + len; q++)
        if (!is_space(*q)) {
            cJSON_Delete(json);
            return SKIP_INVALID_JSON;
        }
    int why = conversation_from_json(c, json);
    c->raw = text;
    c->raw_len = len;
    if (why >= 0) conversation_free(c);
    return why;
}

void sharegpt_tally(ShareGPTReader *r, int why) {
    if (why != SKIP_INVALID_JSON) r->parsed++;
    if (why >= 0) r->skipped[why]++;
}

void sharegpt_end(const ShareGPTReader *r) {
    if (r->parsed == 0 && r->skipped[SKIP_INVALID_JSON] > 0)
        fatal("%s: not valid JSON (none of its %lld top-level elements parses)", r->mf.path, (long long)r->elements);
}

int sharegpt_next(ShareGPTReader *r, Conversation *c) {
    const char *text;
    size_t len;
    while (sharegpt_next_text(r, &text, &len)) {
        int why = conversation_parse(c, text, len);
        sharegpt_tally(r, why);
        if (why < 0) return 1;
    }
    sharegpt_end(r);
    return 0;
}

/* Drops whole pages of [from, to) of the read-only mapping from the process: they stay in the page cache
 * and fault back in from the file if read again. */
static void drop_pages(const MappedFile *mf, size_t from, size_t to) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    from = (from + page - 1) / page * page;
    to = to / page * page;
    if (mf->size > 0 && to > from) madvise((void *)(mf->data + from), to - from, MADV_DONTNEED);
}

int64_t sharegpt_count(const ShareGPTReader *r) {
    ShareGPTReader scan = *r; /* shares the read-only mapping */
    size_t b, e;
    for (size_t dropped = 0; next_span(&scan, &b, &e) > 0;)
        if (scan.pos - dropped > ((size_t)32 << 20)) {
            drop_pages(&r->mf, dropped, scan.pos);
            dropped = scan.pos;
        }
    drop_pages(&r->mf, 0, r->mf.size);
    return scan.elements;
}

void sharegpt_release(ShareGPTReader *r) { drop_pages(&r->mf, 0, r->pos); }
