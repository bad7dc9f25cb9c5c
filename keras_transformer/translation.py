"""Strings in, strings out: tokenization, shape buckets and compiled decoding together.

`TextTranslator.translate` is pure TensorFlow, so it runs eagerly, inside a
`tf.function`, and inside an exported SavedModel alike. Rules for awkward input:

- invalid UTF-8 bytes are replaced by U+FFFD before tokenization;
- a source longer than `max_source_length` subword tokens is cut to that many tokens;
- an empty (or all-whitespace) sentence translates to an empty string;
- a batch of zero sentences returns zero strings.

Source ids are padded to a multiple of `length_bucket` tokens and the batch to a power
of two, so the XLA-compiled decoder compiles once per bucket, not once per shape.
"""

import concurrent.futures
import threading

import keras
import numpy as np
import tensorflow as tf

from keras_transformer import decoding
from keras_transformer.decoding_options import DecodingOptions


class TextTranslator:
    """Translate batches of sentences with a trained model and its tokenizer.

    `options` (`DecodingOptions`) gives the default beam and α and the output length
    rule (source length + `max_extra_length`); beam and α can change per call.
    `compact=False` decodes without batch compaction (`decoding_loop`; the same output).

    Example:
    >>> translator = TextTranslator(model, tokenizer)       # doctest: +SKIP
    >>> translator.translate(["A dog runs."], beam_size=4)   # doctest: +SKIP
    <tf.Tensor: shape=(1,), dtype=string, numpy=array([b'Ein Hund rennt.'], dtype=object)>
    """

    def __init__(self, model, tokenizer, options=None, max_source_length=256,
                 length_bucket=16, jit_compile=True, compact=True):
        self.model = model
        self.tokenizer = tokenizer
        self.options = options or DecodingOptions()
        self.max_source_length = max_source_length
        self.length_bucket = length_bucket
        self.jit_compile = jit_compile
        self.compact = compact
        self._compiled = {}
        # Threads share one compiled decoder per options; the lock keeps two threads
        # from building (and XLA-compiling) the same one at once.
        self._lock = threading.Lock()

    def encode_text(self, sentences):
        """Strings `[batch]` → source ids `[batch, bucketed_length]` (pad 0)."""
        sentences = tf.strings.unicode_transcode(
            tf.convert_to_tensor(sentences, tf.string), "UTF-8", "UTF-8", errors="replace"
        )
        ids = self.tokenizer.source_ids(sentences, self.max_source_length)
        return _pad_to_buckets(ids, self.length_bucket)

    def decode_ids(self, source_ids, beam_size=None, alpha=None):
        """Decode padded source ids (beam and α default to the options); returns
        `(ids [batch, max_len], scores [batch])`."""
        batch = tf.shape(source_ids)[0]
        padded_batch = tf.cast(2 ** tf.math.ceil(tf.math.log(
            tf.cast(tf.maximum(batch, 1), tf.float32)) / tf.math.log(2.0)), tf.int32)
        source_ids = tf.pad(source_ids, [[0, padded_batch - batch], [0, 0]])
        ids, scores = self._decoder(beam_size, alpha)(source_ids)
        return ids[:batch], scores[:batch]

    def translate(self, sentences, beam_size=None, alpha=None):
        """Strings `[batch]` → translated strings `[batch]` (beam and α default to the
        options)."""
        source_ids = self.encode_text(sentences)
        ids, _ = self.decode_ids(source_ids, beam_size, alpha)
        return self.tokenizer.detokenize(ids)

    def _decoder(self, beam_size, alpha):
        options = self.options.replace(beam_size=beam_size, alpha=alpha)
        with self._lock:
            if options not in self._compiled:
                self._compiled[options] = self._build_decoder(options)
            return self._compiled[options]

    def _build_decoder(self, options):
        def run(source_ids):
            max_length = tf.shape(source_ids)[1] + options.max_extra_length
            return decoding.decode(self.model, source_ids, max_length, options, self.compact)

        return tf.function(run, jit_compile=self.jit_compile, reduce_retracing=True)


def _pad_to_buckets(ids, bucket):
    length = tf.shape(ids)[1]
    target = tf.maximum(bucket, (length + bucket - 1) // bucket * bucket)
    return tf.pad(ids, [[0, 0], [0, target - length]])


# Batches `translate_lines` decodes at once. One batch's decoding leaves the cores idle
# between its many small steps and around them (tokenizing, the encoder); a second batch
# fills them. On 2 cores (AMX Xeon; main-job model, Multi30k test set, beam 4, batches of
# 32, steady state; `bench/workers.py --rounds 2`, bench/results/workers.json): 1 worker
# 6.02 / 6.04 s, 2 workers 3.87 / 3.93 s, 4 workers 3.89 / 4.00 s; two workers of one
# intra-op thread each 7.02 / 6.96 s.
WORKERS = 2


def _from_both_ends(chunks):
    """Batches sorted by length, taken from both ends in turn: longest, shortest, next
    longest, ... With two workers the first two batches have different shape buckets,
    so their decoders compile at once on the two cores instead of one after the other.
    `python bench/workers.py --run RUN --rounds 2 --saved-model` (main-job SavedModel,
    Multi30k test set, 2 AMX Xeon cores): first pass 16.2 / 15.3 s in sorted order, 14.2 / 14.0 s
    from both ends; steady passes the same (3.77 / 3.53 s against 3.77 / 3.51). The
    Keras model in process gains nothing (19.7 / 20.4 s against 19.9 / 20.3; not profiled:
    its first pass also traces each shape in Python)."""
    ends = []
    low, high = 0, len(chunks) - 1
    while low <= high:
        ends.append(chunks[high])
        if low < high:
            ends.append(chunks[low])
        low, high = low + 1, high - 1
    return ends


def translate_lines(translate, lines, batch_size=64, verbose=1, workers=WORKERS):
    """Translate a list of strings with `translate(list_of_str) -> array of bytes`.

    Sentences are sorted by length so each batch pads little, and the batches are
    taken from both ends of that order (`_from_both_ends`); a Keras progress bar counts
    sentences. Output order matches input order. A short last batch is padded
    with empty sentences to `batch_size`, so it reuses the full batches' compiled
    shape instead of compiling its own (an empty sentence settles at the first step,
    and batch compaction drops it; on the Multi30k test set, 31 batches of 32 and one
    of 8, that is one XLA compile in three fewer). `workers` batches are translated at
    once, from threads (`translate` must be thread-safe; see `WORKERS`); a batch that
    raises stops the file, the batches still queued are cancelled (`Executor.map`).

    Example:
    >>> translate_lines(lambda batch: [s.upper().encode() for s in batch],
    ...                 ["b", "a c", ""], batch_size=2, verbose=0, workers=2)
    ['B', 'A C', '']
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    order = np.argsort([len(line) for line in lines], kind="stable")
    chunks = _from_both_ends(
        [order[start:start + batch_size] for start in range(0, len(lines), batch_size)])

    def run(chunk):
        batch = [lines[i] for i in chunk]
        if len(chunks) > 1:
            batch += [""] * (batch_size - len(batch))
        return translate(batch)

    outputs = [None] * len(lines)
    progress = keras.utils.Progbar(len(lines), unit_name="sentence", verbose=verbose)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = map(run, chunks) if workers == 1 else pool.map(run, chunks)
        for chunk, texts in zip(chunks, results):
            for index, text in zip(chunk, texts):
                outputs[index] = text.decode("utf-8") if isinstance(text, bytes) else str(text)
            progress.add(len(chunk))
    return outputs
