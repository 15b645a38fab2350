/*
 * data/tokcli.h — the tokenizer commands of `loom data`.
 *
 *   loom data tokenizer-train --in FILE [FILE ...] --vocab-size N --out PATH
 *                             [--min-frequency N] [--special TOKEN ...]
 *       byte-level BPE with the Youtu-LLM pre-tokenization rules, trained on plain text files and JSONL
 *       files (*.jsonl: each line's "text", or its "segments"[].text joined), written to PATH as a
 *       Hugging Face tokenizer.json. PATH must not exist.
 *   loom data encode --tokenizer T < text > ids
 *       one line of space-separated ids per input line (the newline itself is not encoded).
 *   loom data decode --tokenizer T < ids > text
 *       the reverse; a line holding anything but valid ids is an input error naming the line.
 */
#ifndef LOOM_DATA_TOKCLI_H
#define LOOM_DATA_TOKCLI_H

#ifdef __cplusplus
extern "C" {
#endif

/* argv[0] is the subcommand name. Each returns the exit status; bad input exits 2 from inside. */
int data_tokenizer_train_main(int argc, char **argv);
int data_encode_main(int argc, char **argv);
int data_decode_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif
#endif
