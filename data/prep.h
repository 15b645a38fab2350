/*
 * data/prep.h — `loom data prep`: tokenize text files into token shards.
 *
 *   loom data prep --tokenizer bytes --source NAME --in FILE [FILE ...] --out DIR
 *                  [--shard-tokens N] [--frame-tokens N]
 *
 * Each input file is one document followed by <|eos|>. Shards are DIR/NAME-00000.tok, NAME-00001.tok, ...,
 * each holding --shard-tokens tokens (default 100M) but the last. Existing shards of NAME in DIR are never
 * overwritten.
 */
#ifndef LOOM_DATA_PREP_H
#define LOOM_DATA_PREP_H

#ifdef __cplusplus
extern "C" {
#endif

/* argv[0] is "prep". Returns the exit status; bad input exits 2 from inside (loom_input_error). */
int data_prep_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif
