"""CTranslate2 as a decoding peer that runs *our* weights: convert, check equality, time.

    pip install -e ".[bench]"                   # adds ctranslate2
    python bench/ctranslate2_peer.py --check    # tiny random models: convert, compare, "OK"
    python bench/ctranslate2_peer.py --time '{"ct2_dir": ..., "compute_type": "int8", ...}'
                                                # one timing setting (see time_setting)

CTranslate2 (OpenNMT's C++ inference engine) runs any Transformer described through
`ctranslate2.specs.TransformerSpec`, so the comparison is exact: same weights, same tokens.
From bench/run.py (which puts bench/ on sys.path):

    import ctranslate2_peer as ct2
    ct2.convert(model, tokenizer, ct2_dir)             # our Transformer -> model directory
    ct2.check_equal(model, ct2_dir, source_ids)        # MismatchError unless equal
    rows = ct2.sweep(ct2_dir); ct2.best(rows, "int8")  # {float32,int8} x {1,2} threads x OMP
    hyps, seconds = ct2.ct2_translate_file(ct2_dir, run_dir + "/tokenizer.model", lines)

The mapping, verified by `check_equal` with every weight, bias and LayerNorm parameter random:
CTranslate2 linear weights are `[out, in]`; self-attention `linear[0]` is Q|K|V on the output
axis, cross-attention `linear[0]` Q and `linear[1]` K|V; one matrix serves as both embeddings
and the bias-free output projection, scaled by sqrt(d_model) on lookup; the position table is
ours, given explicitly (CTranslate2's own is the concatenated sin|cos variant); the vocabulary
is the SentencePiece pieces in id order (ids map 1:1) and the unk / bos / eos / decoder-start
tokens are the pieces at our UNK_ID, BOS_ID, EOS_ID ("<unk>", "<s>", "</s>"). The piece at
PAD_ID ("<pad>") is an ordinary token to CTranslate2, which masks padding by length.

Decoders differ in two ways. Length penalty: CTranslate2 divides by length^alpha, ours by
GNMT's ((5 + length) / 6)^alpha; timings therefore decode a fixed number of tokens (min = max
length), where no penalty can change the winner, and `ct2_translate_file` passes our alpha as
`length_penalty` anyway (the bench reports BLEU for both). Length cap: ours stops each sentence
at its source length + 50 tokens, eos included; CTranslate2 takes one cap per batch (longest
source + 50, eos not counted).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

# keras_transformer/tokenizer.py's ids, repeated so that the `--time` subprocess does not
# import TensorFlow; `vocabulary()` checks them against that module.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SETTINGS = [dict(compute_type=c, intra_threads=t, omp_wait_policy=w)
            for c in ("float32", "int8") for t in (1, 2) for w in (None, "ACTIVE")]
# Many batches (a file): also two model replicas of one thread each, decoding two batches
# at once (`inter_threads`), CTranslate2's way to use several cores on many sentences.
FILE_SETTINGS = SETTINGS + [dict(compute_type=c, intra_threads=1, inter_threads=2,
                                 omp_wait_policy=w)
                            for c in ("float32", "int8") for w in (None, "ACTIVE")]


class MismatchError(RuntimeError):
    """The CTranslate2 model does not compute what ours computes: do not time it."""


# ----------------------------------------------------------------------------- conversion

def _sentencepiece(tokenizer):
    """A SentencePieceProcessor from our SubwordTokenizer or a `tokenizer.model` path."""
    import sentencepiece

    if isinstance(tokenizer, (str, os.PathLike)):
        return sentencepiece.SentencePieceProcessor(model_file=str(tokenizer))
    return sentencepiece.SentencePieceProcessor(model_proto=tokenizer.model_proto)


def vocabulary(tokenizer):
    """Piece strings in id order: token i of CTranslate2 is our id i."""
    from keras_transformer import tokenizer as ours

    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (ours.PAD_ID, ours.UNK_ID, ours.BOS_ID,
                                                ours.EOS_ID)
    processor = _sentencepiece(tokenizer)
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    if len(set(pieces)) != len(pieces):  # CTranslate2 looks tokens up by string
        raise ValueError("the SentencePiece vocabulary has duplicate pieces")
    return pieces


def _np(variable):
    return np.asarray(variable.numpy(), dtype=np.float32)


def _rows(kernel):
    """A Keras kernel `[d_in, ...]` as CTranslate2's `[out, in]` matrix."""
    array = _np(kernel)
    return np.ascontiguousarray(array.reshape(array.shape[0], -1).T)


def _set_linear(linear, kernels, biases):
    """Fill a LinearSpec with `kernels` side by side on the output axis."""
    linear.weight = np.concatenate([_rows(k) for k in kernels], axis=0)
    linear.bias = np.concatenate([_np(b).reshape(-1) for b in biases], axis=0)


def _set_norm(spec, norm):
    spec.gamma, spec.beta = _np(norm.gamma), _np(norm.beta)


def _set_attention(spec, attention, norm, self_attention):
    q, k, v = [(getattr(attention, f"{p}_kernel"), getattr(attention, f"{p}_bias"))
               for p in ("query", "key", "value")]
    groups = [[q, k, v]] if self_attention else [[q], [k, v]]  # QKV | Q, KV
    for linear, group in zip(spec.linear, groups):
        _set_linear(linear, [kernel for kernel, _ in group], [bias for _, bias in group])
    # Output kernel [heads, head_dim, d_out]: the heads flatten in the order our attention
    # concatenates them, then transpose to [d_out, heads * head_dim].
    out = _np(attention.output_kernel)
    spec.linear[-1].weight = np.ascontiguousarray(out.reshape(-1, out.shape[-1]).T)
    spec.linear[-1].bias = _np(attention.output_bias)
    _set_norm(spec.layer_norm, norm)


def _set_ffn(spec, layer):
    inner, outer = layer.feed_forward.inner, layer.feed_forward.outer
    _set_linear(spec.linear_0, [inner.kernel], [inner.bias])
    _set_linear(spec.linear_1, [outer.kernel], [outer.bias])
    _set_norm(spec.layer_norm, layer.feed_forward_norm)


def build_spec(model, pieces, max_positions=1024):
    """A filled `ctranslate2.specs.TransformerSpec` for our `keras_transformer.Transformer`."""
    import ctranslate2
    from keras import ops

    from keras_transformer.layers.positional_encoding import sinusoids

    config = model.config
    if {config.vocab_size, config.output_vocab_size} != {len(pieces)}:
        raise ValueError(f"model vocabulary {config.vocab_size} != tokenizer's {len(pieces)}")
    spec = ctranslate2.specs.TransformerSpec.from_config(
        (config.num_encoder_layers, config.num_decoder_layers), config.num_heads,
        pre_norm=config.norm_first, activation=ctranslate2.specs.Activation.RELU)
    # The model's own function, so the table matches ours to the last bit.
    positions = np.asarray(ops.convert_to_numpy(sinusoids(max_positions, config.d_model)))
    for side in (spec.encoder, spec.decoder):
        side.scale_embeddings = True
        side.position_encodings.encodings = positions
    spec.encoder.embeddings[0].weight = _np(model.source_embedding.embeddings)
    spec.decoder.embeddings.weight = _np(model.target_embedding.embeddings)
    spec.decoder.projection.weight = (  # tied: logits = x @ E^T, no bias
        _np(model.target_embedding.embeddings) if model.output_projection is None
        else _rows(model.output_projection.kernel))
    for layer_spec, layer in zip(spec.encoder.layer, model.encoder.blocks):
        _set_attention(layer_spec.self_attention, layer.self_attention,
                       layer.self_attention_norm, True)
        _set_ffn(layer_spec.ffn, layer)
    for layer_spec, layer in zip(spec.decoder.layer, model.decoder.blocks):
        _set_attention(layer_spec.self_attention, layer.self_attention,
                       layer.self_attention_norm, True)
        _set_attention(layer_spec.attention, layer.cross_attention,
                       layer.cross_attention_norm, False)
        _set_ffn(layer_spec.ffn, layer)
    if config.norm_first:  # pre-LN stacks end with a LayerNorm
        _set_norm(spec.encoder.layer_norm, model.encoder.final_norm)
        _set_norm(spec.decoder.layer_norm, model.decoder.final_norm)
    # Special tokens by the strings at *our* ids, so CTranslate2 starts the decoder with
    # BOS_ID and stops at EOS_ID whatever the pieces are called. The source stays bare.
    spec.config.unk_token = pieces[UNK_ID]
    spec.config.bos_token = spec.config.decoder_start_token = pieces[BOS_ID]
    spec.config.eos_token = pieces[EOS_ID]
    spec.config.add_source_bos = spec.config.add_source_eos = False
    spec.config.layer_norm_epsilon = float(config.layer_norm_epsilon)
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    return spec


def convert(model, tokenizer, output_dir, quantization=None, max_positions=1024):
    """Write a CTranslate2 model directory for `model` (overwriting it); returns its path.

    `tokenizer`: our SubwordTokenizer or the path of a run's `tokenizer.model`.
    `quantization`: None (float32 weights) or "int8". A float32 directory can also run
    in int8 with `compute_type="int8"`, quantized when loaded.
    """
    import ctranslate2

    pieces = vocabulary(tokenizer)

    class _Converter(ctranslate2.converters.Converter):
        def _load(self):
            return build_spec(model, pieces, max_positions)

    return _Converter().convert(output_dir, quantization=quantization, force=True)


def load_vocabulary(ct2_dir):
    """The token strings of a converted model directory, in id order."""
    with open(os.path.join(ct2_dir, "shared_vocabulary.json"), encoding="utf-8") as f:
        return json.load(f)


# ----------------------------------------------------------------------------- equality

def _until_eos(ids, limit):
    ids = [int(i) for i in ids]
    return (ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids)[:limit]


def _common_prefix(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _ours_log_probs(model, source_ids, targets):
    """Teacher-forced log-prob of each target token and of the final eos, per sentence."""
    import tensorflow as tf

    target_in = np.zeros((len(targets), max(map(len, targets)) + 1), np.int32)
    for row, target in enumerate(targets):
        target_in[row, :len(target) + 1] = [BOS_ID] + target
    logits = model((tf.constant(source_ids, tf.int32), tf.constant(target_in)), training=False)
    log_probs = tf.nn.log_softmax(logits, axis=-1).numpy()
    return [log_probs[row, np.arange(len(t) + 1), t + [EOS_ID]] for row, t in enumerate(targets)]


def _ours_decode(model, source_ids, max_length, beam_size):
    import tensorflow as tf

    from keras_transformer import decoding

    # alpha 0: neither side penalizes length, so both beam searches rank alike.
    options = decoding.DecodingOptions(beam_size=beam_size, alpha=0.0,
                                       max_extra_length=max_length)
    run = tf.function(lambda s: decoding.decode(model, s, max_length, options)[0])
    return run(tf.constant(source_ids, tf.int32)).numpy()


def check_equal(model, ct2_dir, source_ids, target_ids=None, compute_type="float32",
                max_length=32, atol=1e-4, strict=True, seed=0):
    """Compare CTranslate2 on `ct2_dir` with our `model`; raise MismatchError if they differ.

    `source_ids`: int `[batch, src_len]`, pad 0. `target_ids`: lists of target ids without
    bos/eos (random non-special ids by default). Required: teacher-forced log-probs of every
    target token and of eos within `atol`, and identical greedy outputs (budget `max_length`
    tokens). Reported only: beam-4 agreement (alpha 0; the two beam searches stop and treat
    the budget differently). `strict=False` (for int8) raises nothing. Returns the figures.
    """
    import ctranslate2

    pieces = load_vocabulary(ct2_dir)
    ids_of = {piece: i for i, piece in enumerate(pieces)}
    sources = [[int(i) for i in row if i != PAD_ID] for row in np.asarray(source_ids)]
    if target_ids is None:
        rng = np.random.default_rng(seed)
        target_ids = [rng.integers(EOS_ID + 1, len(pieces), rng.integers(3, 13)) for _ in sources]
    targets = [[int(i) for i in t] for t in target_ids]

    def tokens(rows):
        return [[pieces[i] for i in row] for row in rows]

    translator = ctranslate2.Translator(ct2_dir, compute_type=compute_type)
    scored = translator.score_batch(tokens(sources), tokens(targets), max_input_length=0)
    ours = _ours_log_probs(model, source_ids, targets)
    diff = max(float(np.max(np.abs(np.asarray(s.log_probs) - o))) for s, o in zip(scored, ours))

    def decoded(beam_size):  # ours forces eos at token `max_length`; CT2 stops one before
        results = translator.translate_batch(
            tokens(sources), beam_size=beam_size, length_penalty=0.0, max_input_length=0,
            max_decoding_length=max_length - 1)
        theirs = [[ids_of[p] for p in r.hypotheses[0]] for r in results]
        mine = [_until_eos(r, max_length - 1)
                for r in _ours_decode(model, source_ids, max_length, beam_size)]
        return theirs, mine

    theirs, mine = decoded(1)
    same = sum(a == b for a, b in zip(theirs, mine))
    # int8 sequences rarely stay identical to the end: also the share before the first change.
    prefix = np.mean([_common_prefix(a, b) / max(len(a), len(b), 1) for a, b in zip(theirs, mine)])
    result = dict(compute_type=compute_type, max_abs_log_prob_diff=diff, sentences=len(sources),
                  greedy_identical=same, greedy_prefix_agreement=round(float(prefix), 3),
                  greedy_distinct_outputs=len({tuple(m) for m in mine}),
                  beam4_identical=sum(a == b for a, b in zip(*decoded(4))))
    if strict and (diff > atol or same != len(sources)):
        first = next((i for i, (a, b) in enumerate(zip(theirs, mine)) if a != b), None)
        raise MismatchError(
            f"CTranslate2 model {ct2_dir} does not match ours: max |log-prob diff| {diff:.3g} "
            f"(allowed {atol}), greedy identical on {same}/{len(sources)} sentences"
            + (f"; sentence {first}: ours {mine[first]}, CTranslate2 {theirs[first]}"
               if first is not None else ""))
    return result


# ----------------------------------------------------------------------------- timing

def random_source_ids(vocab_size, batch, length, seed=0):
    """`[batch, length]` random ids without specials: the same source for ours and CT2."""
    return np.random.default_rng(seed).integers(EOS_ID + 1, vocab_size, (batch, length))


def time_ct2(ct2_dir, source_tokens, beam_size, compute_type="float32", intra_threads=0,
             rounds=5, new_tokens=64, translator=None):
    """Median milliseconds of `translate_batch` generating exactly `new_tokens` tokens.

    min = max decoding length pins the output length (eos is masked before it), so every
    setting does the same work and no length penalty matters. One untimed call first.
    """
    import ctranslate2

    translator = translator or ctranslate2.Translator(
        ct2_dir, compute_type=compute_type, intra_threads=intra_threads)

    def once():
        return translator.translate_batch(
            source_tokens, beam_size=beam_size, length_penalty=1.0, max_input_length=0,
            min_decoding_length=new_tokens, max_decoding_length=new_tokens)

    lengths = {len(r.hypotheses[0]) for r in once()}
    if lengths != {new_tokens}:  # then the work would differ from ours
        raise RuntimeError(f"CTranslate2 produced lengths {lengths}, not {new_tokens}")
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        once()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _time_cells(ct2_dir, compute_type, intra_threads, batches, beams, source_length,
                new_tokens, rounds, seed):
    """The `--time` mode: every (batch, beam) cell of one setting, in this process."""
    import ctranslate2

    pieces = load_vocabulary(ct2_dir)
    translator = ctranslate2.Translator(ct2_dir, compute_type=compute_type,
                                        intra_threads=intra_threads)
    cells = []
    for batch in batches:
        ids = random_source_ids(len(pieces), batch, source_length, seed)
        for beam in beams:
            ms = time_ct2(ct2_dir, [[pieces[i] for i in row] for row in ids], beam,
                          rounds=rounds, new_tokens=new_tokens, translator=translator)
            cells.append(dict(batch=batch, beam_size=beam, ms=round(ms, 2)))
    return cells


def time_setting(ct2_dir, compute_type, intra_threads, omp_wait_policy=None, batches=(1, 32),
                 beams=(1, 4), source_length=16, new_tokens=64, rounds=5, seed=0):
    """`_time_cells` in a fresh process, since OpenMP reads OMP_WAIT_POLICY when it loads.

    Returns one row per (batch, beam): the setting, batch, beam_size and median ms.
    """
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if omp_wait_policy:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    job = dict(ct2_dir=ct2_dir, compute_type=compute_type, intra_threads=intra_threads,
               batches=list(batches), beams=list(beams), source_length=source_length,
               new_tokens=new_tokens, rounds=rounds, seed=seed)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--time", json.dumps(job)],
                         env=env, check=True, capture_output=True, text=True).stdout
    setting = dict(compute_type=compute_type, intra_threads=intra_threads,
                   omp_wait_policy=omp_wait_policy or "default")
    return [dict(setting, **cell) for cell in json.loads(out.strip().splitlines()[-1])]


def sweep(ct2_dir, settings=SETTINGS, **kwargs):
    """`time_setting` for each of {float32, int8} x {1, 2 threads} x {OMP default, ACTIVE};
    `kwargs` go to it. Returns all rows."""
    return [row for setting in settings for row in time_setting(ct2_dir, **setting, **kwargs)]


def best(rows, compute_type):
    """{(batch, beam_size): fastest row} among the rows of one compute type."""
    fastest = {}
    for row in sorted((r for r in rows if r["compute_type"] == compute_type),
                      key=lambda r: -r["ms"]):
        fastest[row["batch"], row["beam_size"]] = row  # the fastest comes last
    return fastest


# ----------------------------------------------------------------------------- real text

def ct2_translate_file(ct2_dir, spm_model_path, lines, beam_size=4, batch_size=32,
                       compute_type="float32", intra_threads=0, inter_threads=1,
                       length_penalty=0.6, max_extra_length=50, max_source_length=256):
    """Translate strings to strings with CTranslate2; returns `(hypotheses, seconds)`.

    Tokenizes with the run's SentencePiece model (no bos/eos on the source, like ours),
    decodes batches of `batch_size` sorted by length, drops special ids, detokenizes.
    `inter_threads` > 1 loads that many model replicas (`intra_threads` each) and submits
    every batch at once (`asynchronous=True`), so the replicas decode different batches
    at the same time. `seconds` runs from tokenization to detokenization; loading the
    model is not counted. `length_penalty` divides by length^alpha (ours: GNMT; see the
    module docstring).
    """
    import ctranslate2

    processor = _sentencepiece(spm_model_path)
    translator = ctranslate2.Translator(ct2_dir, compute_type=compute_type,
                                        intra_threads=intra_threads, inter_threads=inter_threads)
    start = time.perf_counter()
    pieces = [processor.encode(line, out_type=str)[:max_source_length] for line in lines]
    order = np.argsort([len(p) for p in pieces], kind="stable")
    pending = []
    for first in range(0, len(order), batch_size):
        chunk = order[first:first + batch_size]
        batch = [pieces[i] for i in chunk]
        results = translator.translate_batch(
            batch, beam_size=beam_size, length_penalty=length_penalty, max_input_length=0,
            max_decoding_length=max(map(len, batch)) + max_extra_length,
            asynchronous=inter_threads > 1)
        pending.append((chunk, results))
    hypotheses = [None] * len(lines)
    for chunk, results in pending:
        for index, result in zip(chunk, results):
            if inter_threads > 1:
                result = result.result()
            ids = [processor.piece_to_id(p) for p in result.hypotheses[0]]
            hypotheses[index] = processor.decode([i for i in ids if i > EOS_ID])
    return hypotheses, time.perf_counter() - start


# ----------------------------------------------------------------------------- --check

def _tiny_tokenizer(vocab_size=300, lines=400):
    """A small SentencePiece vocabulary from the first English and German training lines."""
    import gzip

    from keras_transformer.tokenizer import SubwordTokenizer
    from keras_transformer.training.streaming import multi30k_paths

    text = []
    for path in multi30k_paths("train", "en", "de"):  # the copy shipped with the package
        with gzip.open(path, "rt", encoding="utf-8") as f:
            text += [next(f).strip() for _ in range(lines)]
    return SubwordTokenizer.train(text, vocab_size=vocab_size), text


def _tiny_random_model(vocab_size, tied, seed=0):
    """d_model 32, 2+2 layers, every weight random and non-zero.

    Keras' initial values would hide layout errors (zero biases, unit gammas, and our
    attention's Q, K, V kernels start out identical). Untied, the random output projection
    also keeps greedy outputs from collapsing into one repeated token, as tied ones do.
    """
    import keras_transformer as kt

    model = kt.Transformer(kt.TransformerConfig.from_preset(
        "tiny", vocab_size=vocab_size, d_model=32, num_heads=4, d_ff=64,
        share_embeddings=tied, tie_embeddings=tied))
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        name, shape = variable.path.rsplit("/", 1)[-1], tuple(variable.shape)
        if name == "gamma":
            value = 1.0 + 0.3 * rng.standard_normal(shape)
        elif name in ("beta", "bias") or name.endswith("_bias"):
            value = 0.3 * rng.standard_normal(shape)
        else:  # embeddings [vocab, d], kernels [d_in, ...], output kernels [heads, depth, d]
            fan_in = {"embeddings": shape[-1], "output_kernel": shape[0] * shape[1]}.get(
                name, shape[0])
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
        variable.assign(value.astype("float32"))
    return model


def _check():
    tokenizer, text = _tiny_tokenizer()
    sentences = text[:4] + text[-4:]  # four English, four German
    source_ids = tokenizer.tokenize(sentences).to_tensor().numpy()
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, tied in (("tied", True), ("untied", False)):
            model = _tiny_random_model(tokenizer.vocab_size, tied)
            float_dir = convert(model, tokenizer, os.path.join(tmp, name))
            result = check_equal(model, float_dir, source_ids)  # raises on a mismatch
            worst = max(worst, result["max_abs_log_prob_diff"])
            int8_dir = convert(model, tokenizer, os.path.join(tmp, name + "_int8"), "int8")
            int8 = check_equal(model, int8_dir, source_ids, compute_type="int8", strict=False)
            print(name, json.dumps(result), "\n" + name, json.dumps(int8), flush=True)
        tokenizer.save(os.path.join(tmp, "tokenizer.model"))
        hypotheses, _ = ct2_translate_file(float_dir, os.path.join(tmp, "tokenizer.model"),
                                           sentences, beam_size=2, batch_size=3)
        assert len(hypotheses) == len(sentences) and all(isinstance(h, str) for h in hypotheses)
        print(json.dumps(time_setting(float_dir, "int8", 1, "ACTIVE", batches=(2,), beams=(1, 2),
                                      new_tokens=8, rounds=1)))  # the sweep's subprocess path
    print(f"OK: CTranslate2 equals ours (max |log-prob diff| {worst:.2e})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="tiny random models: convert, compare")
    mode.add_argument("--time", metavar="JSON",
                      help="time one setting: _time_cells' arguments as a JSON object")
    args = parser.parse_args(argv)
    if args.check:
        _check()
    else:
        print(json.dumps(_time_cells(**json.loads(args.time))))


if __name__ == "__main__":
    main()
