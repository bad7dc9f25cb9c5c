"""Decoders on a model trained by the CLI: cache vs no cache, beam vs greedy, penalty."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_transformer import decoding, decoding_loop
from keras_transformer.decoding_options import DecodingOptions
from keras_transformer.tokenizer import BOS_ID, EOS_ID, SubwordTokenizer
from keras_transformer.training import streaming


@pytest.fixture(scope="module")
def trained(tiny_run):
    model = keras.models.load_model(os.path.join(tiny_run, "model.keras"))
    tokenizer = SubwordTokenizer.load(os.path.join(tiny_run, "tokenizer.model"))
    sources, _ = streaming.read_parallel(*streaming.multi30k_paths("test_2016_flickr", "en", "de"))
    source_ids = tokenizer.tokenize(sources[:12]).to_tensor()
    return model, source_ids


def test_length_penalty_formula():
    for length in (1, 7, 30):
        for alpha in (0.0, 0.6, 1.0):
            expected = ((5 + length) / 6) ** alpha
            assert abs(float(decoding.length_penalty(length, alpha)) - expected) < 1e-5


def _reference_extensions(logits, alive_scores, k):
    """The 2k best of all k · V extensions, from a log-softmax over the vocabulary."""
    batch, vocab = alive_scores.shape[0], logits.shape[-1]
    log_probs = tf.nn.log_softmax(tf.constant(logits, tf.float64), axis=-1).numpy()
    scores = (alive_scores.reshape(-1, 1) + log_probs).reshape(batch, k * vocab)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :2 * k]
    return np.take_along_axis(scores, order, axis=1), order // vocab, order % vocab


@settings(max_examples=80, deadline=None)
@given(batch=st.integers(1, 3), vocab=st.integers(4, 300), k=st.integers(1, 4),
       levels=st.sampled_from([3, 50, None]), dead=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_best_extensions_equal_a_full_log_softmax(batch, vocab, k, levels, dead, seed):
    """The 2k best extensions found through (beam, block) bounds are the 2k best of all
    k · V, for any vocabulary (padded last block, as few as two blocks), ties (few logit levels)
    and dead beams (-1e9, as at the first step) included."""
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(batch * k, vocab)) * 4 if levels is None
              else rng.integers(0, levels, (batch * k, vocab))).astype(np.float32)
    alive = rng.normal(size=(batch, k)).astype(np.float32) - 3
    if dead:
        alive[:, 1:] = decoding._NEG_INF
    limits = tf.fill([batch], 100)
    scores, beam, token = (x.numpy() for x in decoding._best_extensions(
        tf.constant(logits), tf.constant(alive), tf.constant(0), limits, k, block=16))
    expected, expected_beam, expected_token = _reference_extensions(logits, alive, k)
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-4)
    # Each returned extension is scored as its beam and token say, each appears once.
    log_probs = tf.nn.log_softmax(logits, axis=-1).numpy().reshape(batch, k, vocab)
    rows = np.arange(batch)[:, None]
    np.testing.assert_allclose(scores, alive[rows, beam] + log_probs[rows, beam, token],
                               rtol=1e-6, atol=1e-4)
    assert all(len(set(zip(b, t))) == 2 * k for b, t in zip(beam, token))
    if levels is None:  # no ties (but among a dead beam's: -1e9 + log p rounds to -1e9)
        real = expected > decoding._NEG_INF / 2
        np.testing.assert_array_equal(beam[real], expected_beam[real])
        np.testing.assert_array_equal(token[real], expected_token[real])


def test_best_extensions_under_xla_and_at_the_limit():
    """The main-job shape compiled (128 rows of 8,000 logits) equals the reference; a
    sentence at its last allowed position gets its k beams' eos, best first, then
    nothing."""
    batch, k = 32, 4
    logits = tf.random.stateless_normal([batch * k, 8000], (3, 4)) * 3
    alive = tf.random.stateless_normal([batch, k], (5, 6)) - 3
    limits = tf.concat([tf.fill([batch - 1], 100), [1]], axis=0)  # the last one: at t + 1
    run = tf.function(lambda l, a: decoding._best_extensions(l, a, tf.constant(0), limits, k),
                      jit_compile=True)
    scores, beam, token = (x.numpy() for x in run(logits, alive))
    expected, expected_beam, expected_token = _reference_extensions(logits.numpy(),
                                                                    alive.numpy(), k)
    np.testing.assert_allclose(scores[:-1], expected[:-1], rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(beam[:-1], expected_beam[:-1])
    np.testing.assert_array_equal(token[:-1], expected_token[:-1])
    log_probs = tf.nn.log_softmax(logits[-k:], axis=-1).numpy()[:, EOS_ID] + alive.numpy()[-1]
    np.testing.assert_array_equal(token[-1], EOS_ID)
    np.testing.assert_array_equal(beam[-1, :k], np.argsort(-log_probs, kind="stable"))
    np.testing.assert_allclose(scores[-1, :k], np.sort(log_probs)[::-1], rtol=1e-6)
    assert np.all(scores[-1, k:] <= decoding._NEG_INF)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_cached_greedy_equals_recomputing_the_prefix(trained, jit_compile):
    model, source_ids = trained
    max_length = int(source_ids.shape[1]) + 10
    cached = tf.function(lambda s: decoding.greedy_decode(model, s, max_length, 10)[0],
                         jit_compile=jit_compile)
    uncached = tf.function(lambda s: decoding.greedy_decode_uncached(model, s, max_length, 10))
    ids = cached(source_ids).numpy()
    np.testing.assert_array_equal(ids, uncached(source_ids).numpy())
    assert np.all(ids[:, 0] > 3)  # real tokens were produced


def test_beam_size_one_is_greedy(trained):
    model, source_ids = trained
    greedy_ids, greedy_scores = decoding.greedy_decode(model, source_ids, 40)
    beam_ids, beam_scores = decoding.beam_search(model, source_ids, 40, beam_size=1, alpha=0.0)
    np.testing.assert_array_equal(beam_ids, greedy_ids)
    np.testing.assert_allclose(beam_scores, greedy_scores, rtol=1e-5)


def test_beam_scores_at_least_greedy(reverse_model):
    model, (source_ids, _), _ = reverse_model
    source_ids = source_ids[:64]
    alpha = 0.6
    greedy_ids, greedy_log_prob = decoding.greedy_decode(model, source_ids, 40)
    greedy_length = np.sum(greedy_ids.numpy() != 0, axis=1)  # tokens including eos
    greedy_score = greedy_log_prob.numpy() / decoding.length_penalty(greedy_length, alpha)
    ids, scores = decoding.beam_search(model, source_ids, 40, beam_size=4, alpha=alpha,
                                       return_all=True)
    assert np.all(scores.numpy()[:, 0] >= greedy_score.numpy() - 1e-4)
    assert np.all(np.diff(scores.numpy(), axis=1) <= 1e-6)  # hypotheses sorted best first
    # The model has learnt the task: the best beam is mostly the reversed source.
    lengths = np.sum(source_ids != 0, axis=1)
    exact = [np.array_equal(ids[row, 0, :n], source_ids[row, :n][::-1])
             for row, n in enumerate(lengths)]
    assert np.mean(exact) >= 0.9


@pytest.mark.parametrize("alpha,stopping", [(0.6, "exact"), (1.0, "exact"), (1.0, "first"),
                                            (1.0, "full")])
def test_beam_scores_equal_teacher_forced_log_probs(trained, alpha, stopping):
    """Each of the k hypotheses beam search returns is scored as the whole model scores
    its tokens at once: the cache rows each hypothesis read (reordered with its beam at
    every step) held exactly its own prefix."""
    model, source_ids = trained
    ids, scores = tf.function(lambda s: decoding.beam_search(
        model, s, 40, 4, alpha, return_all=True, stopping=stopping), jit_compile=True)(source_ids)
    batch, k, length = ids.shape
    ids, scores = np.reshape(ids, [batch * k, length]), np.reshape(scores, [-1])
    memory, source_mask = model.encode(np.repeat(source_ids, k, axis=0))
    inputs = np.concatenate([np.full([batch * k, 1], BOS_ID), ids[:, :-1]], axis=1)
    log_probs = tf.nn.log_softmax(model.decode(inputs, memory, source_mask), axis=-1)
    token_log_probs = np.take_along_axis(log_probs.numpy(), ids[:, :, None], axis=-1)[..., 0]
    lengths = np.argmax(ids == EOS_ID, axis=1) + 1                    # tokens including eos
    inside = np.arange(length)[None, :] < lengths[:, None]
    expected = np.sum(np.where(inside, token_log_probs, 0.0), axis=1)
    expected /= decoding.length_penalty(lengths, alpha).numpy()
    real = scores > -1e8  # a sentence may have finished fewer than k hypotheses
    assert np.all(np.any(ids == EOS_ID, axis=1)[real]) and real.mean() > 0.9
    np.testing.assert_allclose(scores[real], expected[real], atol=2e-4)


def test_first_stopping_is_the_same_alone_or_in_a_batch(trained):
    """A sentence that `stopping="first"` stops is frozen: beside sentences that run
    longer it gets the translation and score it gets alone."""
    model, source_ids = trained
    source_ids = tf.concat([source_ids, source_ids[:, ::-1]], axis=0)  # odd inputs run long
    run = tf.function(lambda s: decoding.beam_search(model, s, 40, 4, 1.0, stopping="first"))
    batch_ids, batch_scores = run(source_ids)
    for row in range(0, len(source_ids), 4):
        ids, scores = run(source_ids[row:row + 1])
        np.testing.assert_array_equal(ids[0], batch_ids[row])
        np.testing.assert_allclose(scores[0], batch_scores[row], atol=1e-4)
    # Until it stops, it runs as the exact search does; the exact search may go on to a
    # longer hypothesis, never to a shorter one, and with a strong length penalty
    # (α 2) it does for some sentences.
    lengths = lambda ids: np.sum(np.asarray(ids) != 0, axis=1)  # noqa: E731
    first_ids, _ = decoding.beam_search(model, source_ids, 40, 4, 2.0, stopping="first")
    exact_ids, _ = decoding.beam_search(model, source_ids, 40, 4, 2.0)
    assert np.all(lengths(first_ids) <= lengths(exact_ids))
    assert np.sum(lengths(first_ids)) < np.sum(lengths(exact_ids))


def test_full_stopping_holds_k_finished_and_is_the_same_alone(trained):
    """`stopping="full"` stops a sentence once it holds k finished hypotheses: at α 2
    (where the exact rule runs on for longer hypotheses) the search ends sooner, each
    sentence then has exactly k, and a sentence decoded alone gets the same result."""
    model, source_ids = trained
    source_ids = tf.concat([source_ids, source_ids[:, ::-1]], axis=0)
    run = lambda s, stopping: decoding.beam_search(  # noqa: E731
        model, s, 40, 4, 2.0, return_all=True, stopping=stopping)
    ids, scores = run(source_ids, "full")
    assert np.all(scores.numpy() > -1e8)  # k real hypotheses a sentence
    for row in range(0, len(source_ids), 4):
        alone_ids, alone_scores = run(source_ids[row:row + 1], "full")
        np.testing.assert_array_equal(alone_ids[0], ids[row])
        np.testing.assert_allclose(alone_scores[0], scores[row], atol=1e-4)
    exact_ids, _ = run(source_ids, "exact")
    lengths = lambda ids: np.sum(np.asarray(ids)[:, 0] != 0, axis=-1)  # noqa: E731
    assert np.sum(lengths(ids)) < np.sum(lengths(exact_ids))


def test_beam_search_graph_equals_xla(trained):
    model, source_ids = trained
    run = lambda jit: tf.function(  # noqa: E731
        lambda s: decoding.beam_search(model, s, 40, 4, 0.6), jit_compile=jit)(source_ids)
    (graph_ids, graph_scores), (xla_ids, xla_scores) = run(False), run(True)
    np.testing.assert_array_equal(graph_ids, xla_ids)
    np.testing.assert_allclose(graph_scores, xla_scores, atol=1e-4)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_growing_cache_segments_change_nothing(trained, monkeypatch, beam_size):
    """The loop runs in two segments, the cache growing from FIRST_SEGMENT slots to
    max_length; one loop over a full-size cache must give the same tokens and scores."""
    model, source_ids = trained
    source_ids = tf.concat([source_ids, source_ids[:, ::-1]], axis=0)  # odd inputs run long

    def run(first_segment):
        monkeypatch.setattr(decoding_loop, "FIRST_SEGMENT", first_segment)
        assert len(decoding_loop.capacities(40)) == (2 if first_segment < 40 else 1)
        options = DecodingOptions(beam_size=beam_size, alpha=0.6, max_extra_length=40)
        return tf.function(lambda s: decoding.decode(model, s, 40, options),
                           jit_compile=True)(source_ids)

    segmented_ids, segmented_scores = run(12)
    whole_ids, whole_scores = run(40)
    np.testing.assert_array_equal(segmented_ids, whole_ids)
    np.testing.assert_allclose(segmented_scores, whole_scores, atol=1e-4)
    assert np.max(np.sum(segmented_ids.numpy() != 0, axis=1)) > 12  # crossed the boundary


def test_best_hypothesis_does_not_wait_for_all_beams(trained):
    """Without `return_all` a sentence stops once its best finished hypothesis is
    settled; that best hypothesis must be the one the full search ranks first."""
    model, source_ids = trained
    all_ids, all_scores = decoding.beam_search(model, source_ids, 40, 4, 0.6, return_all=True)
    best_ids, best_scores = decoding.beam_search(model, source_ids, 40, 4, 0.6)
    np.testing.assert_array_equal(best_ids, all_ids[:, 0])
    np.testing.assert_allclose(best_scores, all_scores[:, 0], rtol=1e-5)


def test_batch_compaction_changes_nothing(trained):
    """A batch whose sentences have mostly settled goes on narrower (decoding_loop);
    beam search's tokens and scores must be those of the full-width loop (greedy runs
    the same loop: tests/test_decoding_loop.py)."""
    model, source_ids = trained
    source_ids = tf.concat([source_ids, source_ids[:, ::-1]], axis=0)  # 24 sentences
    options = DecodingOptions(beam_size=4, alpha=0.6, max_extra_length=40)

    def run(compact):
        return tf.function(lambda s: decoding.decode(model, s, 40, options, compact=compact),
                           jit_compile=True)(source_ids)

    (ids, scores), (full_ids, full_scores) = run(True), run(False)
    np.testing.assert_array_equal(ids, full_ids)
    np.testing.assert_allclose(scores, full_scores, atol=1e-4)
