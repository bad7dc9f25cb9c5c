"""Greedy and beam-search decoding with the preallocated key/value cache (§6.1).

Both decoders run their steps through `decoding_loop.run`: `tf.while_loop`s with static
shapes (the cache is written in place, grown between two loop segments, and a batch whose
sentences have mostly settled goes on narrower), so they trace once per (batch, source
length) and compile whole under XLA (`jit_compile=True`) and into TFLite builtins.

Outputs are token ids `[batch, max_length]` (eos then pad after the end) and a score
per sentence: the sum of token log-probabilities (greedy) or that sum divided by the
GNMT length penalty ((5 + length) / 6)^α (beam search).
"""

import tensorflow as tf

from keras_transformer import decoding_loop
from keras_transformer.decoding_options import STOPPING, DecodingOptions
from keras_transformer.tokenizer import BOS_ID, EOS_ID, PAD_ID

_NEG_INF = -1e9
# Block width of `_best_extensions`: a sentence's top-ks rank k · V / block pairs and
# 2k · block tokens, fewest at a block near sqrt(V / 2) (V 8,000, k 4: 1,256 entries at 32,
# 1,012 at 64). Timed alone (128 rows, AMX Xeon, ad hoc), 64 and 32 were within the noise
# (1.70 / 1.78 against 1.72 / 2.01 ms), so 32 stays.
TOP_K_BLOCK = 32


def length_penalty(length, alpha):
    """GNMT length penalty ((5 + length) / 6)^α (Wu et al., 2016)."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def output_limits(source_ids, max_extra_length, max_length):
    """Per-sentence output budget: source length + `max_extra_length`, at most `max_length`.

    An empty source gets a budget of one token: its output is just eos (empty text).
    """
    source_lengths = tf.reduce_sum(tf.cast(tf.not_equal(source_ids, PAD_ID), tf.int32), axis=1)
    budget = tf.where(source_lengths > 0, source_lengths + max_extra_length, 1)
    return tf.minimum(budget, max_length)


def _write(tokens, position, values):
    """`tokens[..., position] = values` via a one-hot select (static shapes, TFLite-safe)."""
    columns = tf.range(tf.shape(tokens)[-1])
    return tf.where(tf.equal(columns, position), tf.expand_dims(values, -1), tokens)


def greedy_decode(model, source_ids, max_length, max_extra_length=50, compact=True,
                  weights="float32"):
    """Pick the most likely token at each step.

    Args:
        model: a `keras_transformer.Transformer`.
        source_ids: int32 `[batch, src_len]`, pad 0.
        max_length: static size of the output (and of the cache).
        max_extra_length: a sentence stops after source length + this many tokens.
        compact: go on with a narrower batch once most sentences have finished
            (`decoding_loop`; the same output).
        weights: "int8" runs each step's dense products on int8 operands
            (`keras_transformer.quantization`).

    Returns `(ids [batch, max_length], log_prob [batch])`.
    """
    source_ids = tf.convert_to_tensor(source_ids, tf.int32)
    batch = tf.shape(source_ids)[0]
    memory, source_mask = model.encode(source_ids, training=False)
    sentences = (
        _write(tf.zeros([batch, max_length + 1], tf.int32), 0, tf.fill([batch], BOS_ID)),
        tf.zeros([batch], tf.bool),                            # finished
        tf.zeros([batch], tf.float32),                         # log-prob
        output_limits(source_ids, max_extra_length, max_length),
        source_mask,
    )
    cache = model.init_cache(memory, decoding_loop.capacities(max_length)[0])
    kernels = model.step_kernels(weights)

    def step(t, sentences, cache):
        tokens, finished, scores, limits, source_mask = sentences
        logits, cache = model.decode_step(tokens[:, t], t, cache, source_mask, kernels)
        best, best_log_prob = _greedy_pick(logits, t, limits)
        scores += tf.where(finished, 0.0, best_log_prob)
        tokens = _write(tokens, t + 1, tf.where(finished, PAD_ID, best))
        finished = tf.logical_or(finished, tf.equal(best, EOS_ID))
        return t + 1, (tokens, finished, scores, limits, source_mask), cache

    tokens, _, scores, _, _ = decoding_loop.run(
        step, lambda t, sentences: sentences[1], tf.constant(0), sentences, cache, max_length,
        compact=compact)
    return tokens[:, 1:], scores


def greedy_decode_uncached(model, source_ids, max_length, max_extra_length=50):
    """Greedy decoding that re-runs the decoder over the whole prefix at every step.

    O(n²) work per sentence instead of O(n): the reference that the cached decoder must
    match token for token, and the baseline of the decoding benchmark.
    """
    source_ids = tf.convert_to_tensor(source_ids, tf.int32)
    batch = tf.shape(source_ids)[0]
    memory, source_mask = model.encode(source_ids, training=False)
    limits = output_limits(source_ids, max_extra_length, max_length)

    def not_done(t, tokens, finished):
        return tf.logical_and(t < max_length, tf.logical_not(tf.reduce_all(finished)))

    def step(t, tokens, finished):
        logits = model.decode(tokens[:, : t + 1], memory, source_mask, training=False)[:, -1]
        best, _ = _greedy_pick(logits, t, limits)
        tokens = _write(tokens, t + 1, tf.where(finished, PAD_ID, best))
        return t + 1, tokens, tf.logical_or(finished, tf.equal(best, EOS_ID))

    start = _write(tf.zeros([batch, max_length + 1], tf.int32), 0, tf.fill([batch], BOS_ID))
    _, tokens, _ = tf.while_loop(not_done, step, (tf.constant(0), start, tf.zeros([batch], tf.bool)),
                                 shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None]),
                                                   tf.TensorShape([None])))
    return tokens[:, 1:]


def _greedy_pick(logits, t, limits):
    """The most likely token (eos where position t + 1 is the last allowed) and its
    log-probability, without materialising log-softmax over the vocabulary."""
    best = tf.argmax(logits, axis=-1, output_type=tf.int32)
    best = tf.where(t + 1 >= limits, EOS_ID, best)
    normaliser = _log_normaliser(logits, block_maxima(logits)[0])[:, 0]
    return best, tf.gather(logits, best, batch_dims=1) - normaliser


def block_maxima(logits, block=TOP_K_BLOCK):
    """The maximum of each block of `block` tokens, `[rows, blocks]`, and the logits padded
    with -inf to `blocks · block` tokens. Token `j · blocks + b` is entry j of block b.

    Taken as a max pool over `[rows, block, blocks, 1]` (XLA's reduce-window, TFLite's
    MAX_POOL_2D) rather than a `reduce_max`: XLA merged a reduce_max of the block maxima
    with the row max into one row reduction and recomputed the block maxima inside the
    fusion that adds the beam scores, the slowest way to take either. In a 128-row beam
    step (vocabulary 8,000; `python bench/step_thunks.py`, two interleaved runs each) that
    fusion took 389–413 µs and the row max 205–235, against 131–138 µs for the pool and
    39 for the fusion; the best-extension search 1.27–1.29 ms against 1.66–1.69.

    Example:
    >>> maxima, padded = block_maxima(tf.constant([[0., 5., 1., 2., 9.]]), block=2)
    >>> maxima.numpy(), padded.shape
    (array([[2., 9., 1.]], dtype=float32), TensorShape([1, 6]))
    """
    vocab = logits.shape[-1]
    blocks = -(-vocab // block)
    padded = tf.pad(logits, [[0, 0], [0, blocks * block - vocab]], constant_values=float("-inf"))
    pooled = tf.nn.max_pool2d(tf.reshape(padded, [-1, block, blocks, 1]), [block, 1],
                              [block, 1], "VALID")                       # [rows, 1, blocks, 1]
    return tf.reshape(pooled, [-1, blocks]), padded


def _best_extensions(logits, alive_scores, t, limits, k, block=TOP_K_BLOCK):
    """The 2k best one-token extensions of a sentence's k beams: `(scores, beam, token)`,
    each `[batch, 2k]`, best first; score = beam score + log p(token).

    No log-softmax over the vocabulary and no top-k per beam: a (beam, block) pair bounds
    its extensions by beam score + block max - log-normaliser, and the 2k best extensions
    lie in the 2k pairs with the best bounds (any extension outside them is beaten by
    those pairs' 2k maxima). So one top-k ranks the k · blocks pairs and one the
    2k · block tokens they hold: 1,256 entries a sentence (V 8,000, k 4) against 2,056 for
    a top-2k per beam and one over the k · 2k, and XLA's CPU top-k costs ~10 ns an entry
    (ad hoc, 128 rows). `bench/step_profile.py`'s best_extensions has the figures.
    """
    batch = tf.shape(alive_scores)[0]
    vocab = logits.shape[-1]
    block = min(block, -(-vocab // 2))  # at least two blocks, so k · blocks ≥ 2k pairs
    block_max, padded = block_maxima(logits, block)                         # [batch·k, blocks]
    blocks = block_max.shape[-1]
    offset = tf.reshape(alive_scores, [-1, 1]) - _log_normaliser(logits, block_max)
    bound = tf.reshape(block_max + offset, [batch, k * blocks])
    pair = tf.math.top_k(bound, 2 * k).indices                              # [batch, 2k]
    beam = pair // blocks
    token = (pair % blocks)[:, :, None] + blocks * tf.range(block)          # [batch, 2k, block]
    entry = tf.reshape(beam[:, :, None] * (blocks * block) + token, [batch, 2 * k * block])
    beam_offset = tf.reshape(offset, [batch, k])
    candidates = (tf.reshape(tf.gather(tf.reshape(padded, [batch, -1]), entry, batch_dims=1),
                             [batch, 2 * k, block])
                  + tf.gather(beam_offset, beam, batch_dims=1)[:, :, None])
    scores, index = tf.math.top_k(tf.reshape(candidates, [batch, 2 * k * block]), 2 * k)
    top_beam = tf.gather(beam, index // block, batch_dims=1)
    top_token = tf.gather(tf.reshape(token, [batch, -1]), index, batch_dims=1)
    # Where position t + 1 is a sentence's last allowed one, only eos may follow: its
    # extensions are the k beams' eos, best first, then nothing.
    eos_scores, eos_beam = tf.math.top_k(
        tf.reshape(logits[:, EOS_ID], [batch, k]) + beam_offset, k)
    at_limit = (t + 1 >= limits)[:, None]
    nothing = tf.fill([batch, k], _NEG_INF)
    scores = tf.where(at_limit, tf.concat([eos_scores, nothing], axis=1), scores)
    top_beam = tf.where(at_limit, tf.concat([eos_beam, tf.zeros_like(eos_beam)], 1), top_beam)
    top_token = tf.where(at_limit, EOS_ID, top_token)
    return scores, top_beam, top_token


def _log_normaliser(logits, block_max):
    """log Σ exp(logits) over the last axis, `[rows, 1]`, the row maximum taken from
    `block_max`. (A product with a column of ones sums faster under XLA, 0.57 against 0.69
    ms over 128 × 8,000 ad hoc, but an int8 TFLite export quantizes that column as a weight
    and the exps as its input: it stays a sum.)"""
    row_max = tf.reduce_max(block_max, axis=-1, keepdims=True)
    return row_max + tf.math.log(tf.reduce_sum(tf.exp(logits - row_max), axis=-1, keepdims=True))


def beam_search(model, source_ids, max_length, beam_size=4, alpha=0.6, max_extra_length=50,
                return_all=False, stopping="exact", compact=True, weights="float32"):
    """Beam search with alive and finished hypothesis sets (as in GNMT / tensor2tensor).

    At each step the 2k best extensions of the k alive beams are scored; those among
    the first k that end in eos join the finished set (scored with the length penalty),
    the best k that do not end stay alive. With `stopping="exact"` a sentence stops when
    no alive beam can still beat the finished hypotheses asked for — the best one, or
    with `return_all` all k: an alive beam can at most reach its log-prob over the
    largest length penalty. The best hypothesis is the same either way; waiting for all
    k made translating the Multi30k test set 13 % slower (13.8 vs 12.2 s, main-job
    model, batches of 32). With `stopping="first"` a sentence also stops at the first
    step whose best extension (by log-prob) ends it, once it holds the finished
    hypotheses asked for; with `stopping="full"`, once it holds k finished hypotheses.
    Both take fewer steps, and a longer hypothesis that the length penalty would still
    have preferred is never found. `compact`: go on with a narrower batch once most
    sentences have settled (`decoding_loop`; the same output). `weights="int8"` runs each
    step's dense products on int8 operands (`keras_transformer.quantization`).

    Returns `(ids [batch, max_length], score [batch])` of the best hypothesis, or with
    `return_all=True` all k: `([batch, k, max_length], [batch, k])`, best first.
    """
    if stopping not in STOPPING:
        raise ValueError(f"stopping must be one of {STOPPING}, got {stopping!r}")
    source_ids = tf.convert_to_tensor(source_ids, tf.int32)
    batch = tf.shape(source_ids)[0]
    k = beam_size
    memory, source_mask = model.encode(source_ids, training=False)
    limits = output_limits(source_ids, max_extra_length, max_length)
    sentences = (
        _write(tf.zeros([batch, k, max_length + 1], tf.int32), 0, tf.fill([batch, k], BOS_ID)),
        # Only beam 0 is live at the start, so the first step does not pick k copies.
        tf.tile(tf.constant([[0.0] + [_NEG_INF] * (k - 1)]), [batch, 1]),
        tf.zeros([batch, k, max_length + 1], tf.int32),       # finished
        tf.fill([batch, k], _NEG_INF),                         # finished_scores
        limits,
        length_penalty(tf.cast(limits, tf.float32), alpha),    # max_penalty [batch]
        source_mask,
        tf.zeros([batch, k, max_length + 1], tf.int32),       # ancestry (see step)
    )
    cache = model.init_cache(memory, decoding_loop.capacities(max_length)[0], beam_size=k)
    kernels = model.step_kernels(weights)
    needed = k if return_all else 1  # finished hypotheses that must be settled

    def settled(t, sentences):
        _, alive_scores, _, finished_scores, limits, max_penalty, _, _ = sentences
        best_possible = alive_scores[:, 0] / max_penalty
        return (finished_scores[:, needed - 1] >= best_possible) | (t >= limits)

    def step(t, sentences, cache):
        alive, alive_scores, finished, finished_scores, limits, max_penalty, source_mask, \
            ancestry = sentences
        # The cache is never reordered: `ancestry` says, per hypothesis and slot, which
        # beam's cache entries hold its history. This step's keys and values go to each
        # hypothesis' own beam; the new hypotheses take over their parents' ancestry.
        ancestry = _write(ancestry, t, tf.range(k)[None, :])
        logits, cache = model.decode_step(tf.reshape(alive[:, :, t], [-1]), t, cache,
                                          source_mask, kernels, ancestry)
        top_scores, top_beam, top_token = _best_extensions(logits, alive_scores, t, limits, k)
        top_seqs = _write(tf.gather(alive, top_beam, batch_dims=1), t + 1, top_token)
        is_eos = tf.equal(top_token, EOS_ID)
        # An eos extension is finalised only if it ranks among the k best (as fairseq
        # does), so beam size 1 with α = 0 is exactly greedy decoding.
        ends = is_eos & (tf.range(2 * k) < k)[None, :]
        real = top_scores > _NEG_INF / 2  # not an extension of a dead beam

        # Alive: the k best extensions that did not end.
        alive_candidates = tf.where(is_eos, _NEG_INF, top_scores)
        alive_scores, keep = tf.math.top_k(alive_candidates, k)
        alive = tf.gather(top_seqs, keep, batch_dims=1)
        ancestry = tf.gather(ancestry, tf.gather(top_beam, keep, batch_dims=1), batch_dims=1)

        # Finished: merge the extensions that ended (length-normalised) into the k best.
        ended_scores = tf.where(ends & real, top_scores / length_penalty(t + 1, alpha), _NEG_INF)
        merged_scores = tf.concat([finished_scores, ended_scores], axis=1)
        merged_seqs = tf.concat([finished, top_seqs], axis=1)
        finished_scores, pick = tf.math.top_k(merged_scores, k)
        finished = tf.gather(merged_seqs, pick, batch_dims=1)
        if stopping != "exact":  # a stopped sentence's alive beams die: nothing changes it
            if stopping == "first":
                stops = ends[:, 0] & real[:, 0] & (finished_scores[:, needed - 1] > _NEG_INF / 2)
            else:  # "full": k finished hypotheses held
                stops = finished_scores[:, k - 1] > _NEG_INF / 2
            alive_scores = tf.where(stops[:, None], _NEG_INF, alive_scores)
        return t + 1, (alive, alive_scores, finished, finished_scores, limits, max_penalty,
                       source_mask, ancestry), cache

    sentences = decoding_loop.run(step, settled, tf.constant(0), sentences, cache, max_length,
                                  beam_size=k, compact=compact)
    alive, alive_scores, finished, finished_scores, _, max_penalty, _, _ = sentences
    # A sentence that finished nothing (cannot happen with limits ≤ max_length, kept
    # for safety) falls back to its alive beams.
    none_finished = (finished_scores[:, 0] <= _NEG_INF / 2)[:, None]
    seqs = tf.where(none_finished[:, :, None], alive, finished)[:, :, 1:]
    scores = tf.where(none_finished, alive_scores / max_penalty[:, None], finished_scores)
    seqs = _pad_after_eos(seqs)
    if return_all:
        return seqs, scores
    return seqs[:, 0], scores[:, 0]


def _pad_after_eos(ids):
    """Replace everything after the first eos with pad."""
    seen_eos = tf.cumsum(tf.cast(tf.equal(ids, EOS_ID), tf.int32), axis=-1, exclusive=True)
    return tf.where(seen_eos > 0, PAD_ID, ids)


def decode(model, source_ids, max_length, options=None, compact=True):
    """Decode with `DecodingOptions` (default: greedy): greedy when `options.beam_size`
    is 1, else beam search; `max_length` is the static output length, `compact` as in
    `decoding_loop.run`. Returns `(ids, scores)`."""
    options = options or DecodingOptions(beam_size=1)
    if options.beam_size == 1:
        return greedy_decode(model, source_ids, max_length, options.max_extra_length, compact,
                             options.weights)
    return beam_search(model, source_ids, max_length, options.beam_size, options.alpha,
                       options.max_extra_length, stopping=options.stopping, compact=compact,
                       weights=options.weights)
