/* ShareGPT conversations, streamed from files of any size: a JSON list (classic ShareGPT) or JSON lines,
 * each conversation either {"id", "conversations": [{"from", "value"}]} or {"messages": [{"role", "content"}]}.
 * Conversations that cannot be used are skipped and counted by reason, never fatal. */
#ifndef MEDUSA_SHAREGPT_H
#define MEDUSA_SHAREGPT_H

#include <stddef.h>
#include <stdint.h>

#include "../common/common.h"

typedef enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT } Role;

typedef struct {
    Role role;
    const char *text; /* UTF-8, owned by the conversation */
    size_t len;
} Turn;

/* A conversation ready for a chat template: an optional system turn first, then user/assistant turns
 * strictly alternating, starting with a user turn and ending with an assistant turn. */
typedef struct {
    const char *id;  /* the "id" field, or NULL */
    const char *raw; /* the conversation's JSON text in the file (for a split key when there is no id) */
    size_t raw_len;
    Turn *turns;
    int n_turns;
    void *json; /* the parsed element that owns the strings */
} Conversation;

/* Why a conversation was skipped. The keys name HDF5 attributes (skipped_<key>), so keep them stable. */
typedef enum {
    SKIP_INVALID_JSON,   /* the element is not valid JSON */
    SKIP_NOT_OBJECT,     /* the element is not a JSON object */
    SKIP_NO_TURN_LIST,   /* no "conversations" or "messages" list */
    SKIP_EMPTY,          /* the list has no turns */
    SKIP_MALFORMED_TURN, /* a turn is not an object with string role and text */
    SKIP_UNKNOWN_ROLE,
    SKIP_EMPTY_TURN,      /* a turn's text is empty or only whitespace */
    SKIP_ROLE_ORDER,      /* roles do not alternate user/assistant (after an optional system turn) */
    SKIP_NO_REPLY,        /* no assistant reply to train on */
    SKIP_NOTHING_TRAINED, /* after truncation at --max-len no trained token is left */
    SKIP_ALIGNMENT,       /* the tokens do not spell the rendered text (tokenizer normalisation) */
    SKIP_TRUNCATED_FILE,  /* the file ends inside this conversation */
    SKIP_COUNT
} SkipReason;

const char *skip_reason_key(SkipReason r);  /* "invalid_json", ... */
const char *skip_reason_text(SkipReason r); /* "not valid JSON", ... */

/* Checks and normalises one parsed element (a cJSON *) into c, which borrows its strings. Returns -1 when
 * usable, else the SkipReason. Normalisation follows the reference trainer: one leading assistant turn
 * (ShareGPT's split of long conversations starts parts with the reply) is dropped, and so is a final
 * user turn with no reply (nothing in it is trained). */
int conversation_from_json(Conversation *c, void *json);

/* Strips leading and trailing whitespace exactly as Python's str.strip() (and Jinja's trim) do, Unicode
 * spaces included, by moving *text and shrinking *len. */
void text_strip(const char **text, size_t *len);
void conversation_free(Conversation *c);

typedef struct {
    MappedFile mf;
    int is_list;  /* top level is one JSON list */
    int is_lines; /* .jsonl: one conversation per line (a broken line cannot swallow the next ones) */
    size_t pos;   /* next byte to scan */
    int done;
    int64_t elements, parsed; /* elements scanned; elements that were valid JSON */
    int64_t limit;            /* stop after this many elements (0: read the whole file) */
    int64_t skipped[SKIP_COUNT];
} ShareGPTReader;

/* Opens and checks the file's first byte; a file that is not JSON is fatal, naming the file. */
void sharegpt_open(ShareGPTReader *r, const char *path);
void sharegpt_close(ShareGPTReader *r);

/* Next usable conversation (1), or 0 at the end of the file. Skipped elements are counted in r->skipped.
 * The caller frees the conversation with conversation_free. */
int sharegpt_next(ShareGPTReader *r, Conversation *c);

/* The same in two steps, so that parsing can run on many threads while one thread walks the file:
 * sharegpt_next_text gives the next top-level element's JSON text (1; it points into the mapped file), or 0
 * at the end of the file (an element cut off by the end is counted as SKIP_TRUNCATED_FILE). Thread-safe:
 * conversation_parse parses and checks that text into c (-1: usable; else the SkipReason, and c is already
 * freed). sharegpt_tally counts each parse's outcome; sharegpt_end, once every element is tallied, is fatal
 * when not one element of the file was JSON. */
int sharegpt_next_text(ShareGPTReader *r, const char **text, size_t *len);
int conversation_parse(Conversation *c, const char *text, size_t len);
void sharegpt_tally(ShareGPTReader *r, int why);
void sharegpt_end(const ShareGPTReader *r);

/* Number of elements in the file, from a quick scan without parsing (for progress and ETA). */
int64_t sharegpt_count(const ShareGPTReader *r);

/* Unmaps the pages of the file already read, so that the resident size stays bounded however large the
 * file is. The caller must hold no element text from before the current position. */
void sharegpt_release(ShareGPTReader *r);

#endif
