/*
 * data/prep.h — `loom data prep`: tokenize text and JSONL files into token shards.
 *
 *   loom data prep --tokenizer bytes|TOKENIZER.json --source NAME --in FILE [FILE ...] --out DIR
 *                  [--shard-tokens N] [--frame-tokens N]
 *
 * A file whose name ends in `.jsonl` holds one JSON object per line (blank lines are skipped):
 *
 *   {"text": "..."}      one document; every token counts in the loss
 *   {"segments": [{"role": "system|user|assistant|tool", "text": "..."}, ...]}
 *                        one trajectory: each segment's text is tokenized on its own and the pieces are
 *                        joined in order; only the assistant's tokens count in the loss, and the closing
 *                        <|eos|> counts when the last segment is the assistant's (ending there is a target)
 *
 * Any other file is plain text, one document. Every document ends with <|eos|>. The shards carry a
 * per-token loss mask exactly when some input record has `segments`; in such shards the tokens of text
 * records and plain files all count. Shards are DIR/NAME-00000.tok, NAME-00001.tok, ..., each holding
 * --shard-tokens tokens (default 100M) but the last. Existing shards of NAME in DIR are never overwritten.
 */
#ifndef LOOM_DATA_PREP_H
#define LOOM_DATA_PREP_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* argv[0] is "prep". Returns the exit status; bad input exits 2 from inside (loom_input_error). */
int data_prep_main(int argc, char **argv);

/* Where prep may end a chunk of plain text: the last position p in 1..n-1 at which the pre-tokenizer
 * (data/pretokenize.h) splits text[0..n) whatever follows, so that text[0..p) and the rest tokenize to
 * the tokens of the whole; 0 when there is none. */
size_t data_prep_text_cut(const unsigned char *text, size_t n);

#ifdef __cplusplus
}
#endif
#endif
