"""The `keras-transformer` command: train, evaluate, average checkpoints, export, translate."""

import argparse
import os
import sys


def _train(args):
    from keras_transformer.train_command import run_train_command

    run_train_command(args, own_process=args.own_process)


def _average(args):
    from keras_transformer.training.averaging import average_checkpoints, list_checkpoints
    from keras_transformer.training.evaluate import RunError, load_run

    if args.last < 1:
        raise RunError(f"--last {args.last}: average at least 1 checkpoint")
    paths = list_checkpoints(os.path.join(args.run, "checkpoints"))[-args.last:]
    if not paths:
        raise RunError(f"{args.run}/checkpoints has no ckpt-*.weights.h5 file to average "
                       f"(training writes one every training.checkpoint_every steps)")
    # A model skeleton of the run's config: the weights all come from the checkpoints,
    # which is also what makes this work on an interrupted run (no model.keras).
    _, model, _ = load_run(args.run, allow_untrained=True)
    average_checkpoints(model, paths)
    out = args.out or os.path.join(args.run, "model.keras")
    model.save(out)
    print(f"averaged {len(paths)} checkpoints into {out}")


def _plot(args):
    from keras_transformer.training.plot import plot_history

    print(f"wrote {plot_history(args.run, args.out)}")


def _evaluate(args):
    score(args.run, args.split, args.beam, args.lowercase, args.limit, args.model,
          args.checkpoint)


def score(run, split="test", beam=None, lowercase=None, limit=None, model=None,
          checkpoint=None):
    """Translate a split of the run's corpus, score it with sacreBLEU and print the result."""
    from keras_transformer.training.config import ConfigError
    from keras_transformer.training.evaluate import evaluate_run

    translate, name = None, None
    if model:
        if checkpoint:
            raise ConfigError("--model and --checkpoint: score one or the other")
        translate, name = _exported_translator(model, beam)
        beam = translate.beam_size  # what the exported model decodes with, for the report
    result = evaluate_run(run, split=split, beam_size=beam, lowercase=lowercase, limit=limit,
                          translate=translate, model_name=name, checkpoint=checkpoint)
    print(result["signature"])
    print(f"BLEU = {result['bleu']:.2f} (lowercased {result['bleu_lowercase']:.2f}, "
          f"chrF {result['chrf']:.2f}; beam {result['beam_size']}, {split} split)")


def _exported_translator(path, beam_size):
    """(translate, name) for a saved Translator (`.keras`), a SavedModel directory or a
    .tflite file (run in LiteRT).

    `beam_size` None decodes with the exported beam, 1 greedily; any other beam than the
    exported one is a ConfigError (the beam is compiled into the model).
    `translate.beam_size` is the beam used (None: an older export that does not say).
    """
    from keras_transformer.export.settings import BeamError

    if _is_keras_file(path):  # any beam: a Keras model decodes with what it is asked
        from keras_transformer.translator import load_translator

        translator = load_translator(path)
        beam = beam_size or translator.options.beam_size

        def translate(batch):
            return translator.translate(batch, beam)

        translate.beam_size = beam
        return translate, os.path.basename(path)[: -len(".keras")]
    if path.endswith(".tflite") and os.path.isfile(path):
        from keras_transformer.export.litert import litert_translator as load
        name = os.path.basename(path)[: -len(".tflite")]
    elif os.path.isdir(path):
        from keras_transformer.export.saved_model import saved_model_translator as load
        name = os.path.basename(os.path.normpath(path))
    else:
        raise FileNotFoundError(f"--model {path}: no such .keras translator, SavedModel "
                                f"directory or .tflite file")
    try:
        return load(path, beam_size), name
    except BeamError as e:
        raise BeamError(f"--beam {beam_size}: {e}") from None


def _is_keras_file(path):
    return path.endswith(".keras") and os.path.isfile(path)


def _export(args):
    export(args.run, args.model, args.format, args.out, args.quantize, args.max_output_length,
           args.checkpoint, args.ids_only)


def export(run=None, model=None, fmt="saved_model", out=None, quantize="none",
           max_output_length=128, checkpoint=None, ids_only=False):
    """Export a run's model (or a translator.keras file, `model`) as a SavedModel or a
    TFLite file; `out` defaults to a place inside the run (or next to `model`)."""
    from keras_transformer.training.config import ConfigError
    from keras_transformer.training.evaluate import load_run

    if ids_only and fmt != "saved_model":
        raise ConfigError("--ids-only: only with --format saved_model")
    if model:
        from keras_transformer.translator import load_translator

        if checkpoint:
            raise ConfigError("--model and --checkpoint: export one or the other")
        translator = load_translator(model)
        home = os.path.dirname(os.path.abspath(model))  # default outputs go next to it
        model, tokenizer = translator.transformer, translator.vocabulary.tokenizer
        options = translator.options.replace(max_output_length=max_output_length)
    else:
        # Refuses a run without model.keras unless --checkpoint names the weights.
        config, model, tokenizer = load_run(run, checkpoint)
        options = config.evaluation.decoding_options(max_output_length=max_output_length)
        home = run
    if fmt == "saved_model" and quantize != "none":
        if quantize != "int8":
            raise ConfigError(f"--quantize {quantize}: a SavedModel takes none or int8 "
                              "(int8 decoding steps); float16 is for --format tflite")
        options = options.replace(weights="int8")
    if fmt == "saved_model" and ids_only:
        from keras_transformer.export.saved_model import export_ids_saved_model

        out = out or os.path.join(home, "saved_model_ids")
        export_ids_saved_model(model, tokenizer, out, options)
        print(f"SavedModel (ids in/out, core TensorFlow ops only) written to {out}")
    elif fmt == "saved_model":
        from keras_transformer.export.saved_model import export_saved_model

        out = out or os.path.join(home, "saved_model")
        export_saved_model(model, tokenizer, out, options)
        print(f"SavedModel written to {out}")
    else:
        from keras_transformer.export.tflite import convert_tflite

        out = out or os.path.join(home, f"model.{quantize}.tflite")
        if not out.endswith(".tflite"):
            raise ConfigError(f"--out {out}: a TFLite file name ends in .tflite")
        for path in convert_tflite(model, tokenizer, out, quantize, options):
            print(f"TFLite model written to {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")


def _read_sentences(args):
    if args.sentences:
        return list(args.sentences)
    stream = open(args.file, encoding="utf-8") if args.file else sys.stdin
    with stream:
        return [line.rstrip("\n") for line in stream]


def _translate(args):
    # Serving only: no training code, no sacreBLEU.
    from keras_transformer.errors import UsageError
    from keras_transformer.translation import WORKERS, translate_lines

    workers = WORKERS if args.workers is None else args.workers
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    translate, _ = _exported_translator(args.model, args.beam)
    sentences = _read_sentences(args)
    verbose = 1 if len(sentences) > args.batch_size and sys.stderr.isatty() else 0
    for line in translate_lines(translate, sentences, args.batch_size, verbose, workers):
        print(line)


def _attention(args):
    import matplotlib

    matplotlib.use("Agg")
    from keras_transformer.visualization import plot_attention

    if _is_keras_file(args.model):
        weights, queries, keys, target, title = _keras_attention(args)
    elif os.path.isdir(args.model):
        weights, queries, keys, target, title = _saved_model_attention(args)
    else:
        raise FileNotFoundError(f"--model {args.model}: no such .keras translator or "
                                f"SavedModel directory")
    plot_attention(weights, queries, keys, title=title).savefig(args.out, dpi=110)
    print(f"{target}\nwrote {args.out}")


def _keras_attention(args):
    from keras_transformer.translator import load_translator
    from keras_transformer.visualization import attention_map

    translator = load_translator(args.model)
    target = args.target
    if target is None:
        target = translator.translate(args.sentence, beam_size=1)
    config = translator.transformer.config
    layers = config.num_encoder_layers if args.kind == "encoder" else config.num_decoder_layers
    layer = args.layer % layers
    weights, queries, keys = attention_map(translator.transformer, translator.vocabulary.tokenizer,
                                           args.sentence, target, args.kind, layer)
    title = f"{args.kind} attention, layer {layer + 1} of {layers}: {target}"
    return weights, queries, keys, target, title


def _saved_model_attention(args):
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

    from keras_transformer.quiet import captured_stderr
    from keras_transformer.tokenizer import SubwordTokenizer

    loaded = tf.saved_model.load(args.model)
    sentence = tf.constant([args.sentence])
    target = args.target
    if target is None:
        target = loaded.signatures["greedy"](sentence)["translations"].numpy()[0].decode()
    # Its first call logs a oneDNN fallback note (int32 ops) as an error; a real failure
    # raises and shows it.
    with captured_stderr():
        out = loaded.signatures["attention"](sources=sentence, targets=tf.constant([target]))
    tokenizer = SubwordTokenizer.load(loaded.vocabulary.asset_path.numpy().decode())
    source_tokens = tokenizer.pieces(out["source_ids"].numpy()[0])
    target_tokens = tokenizer.pieces(out["target_ids"].numpy()[0])
    stacked = out[args.kind].numpy()  # [layers, batch, heads, queries, keys]
    layer = args.layer % stacked.shape[0]
    weights = stacked[layer, 0]
    queries = source_tokens if args.kind == "encoder" else target_tokens
    title = f"{args.kind} attention, layer {layer + 1} of {stacked.shape[0]}: {target}"
    return weights, queries, source_tokens, target, title


CHECKPOINT_HELP = ("use the weights of this checkpoint of the run: 'latest' or a "
                   ".weights.h5 file (e.g. of a run stopped before model.keras was written)")


def _verbosity(value):
    if value in ("auto", "0", "1", "2"):
        return value if value == "auto" else int(value)
    raise argparse.ArgumentTypeError(f"expected auto, 0, 1 or 2, got {value!r}")


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-transformer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a translator from a YAML config")
    train.add_argument("--config", required=True, help="e.g. training/configs/multi30k_en_de.yaml")
    train.add_argument("--out", help="run directory (default: runs/<config name>)")
    train.add_argument("--verbose", default="auto", type=_verbosity,
                       help="Keras fit verbosity: auto, 0, 1, 2")
    train.add_argument("--no-evaluate", action="store_true", help="skip BLEU on the test split")
    train.add_argument("--no-export", action="store_true",
                       help="skip exporting RUN/saved_model and RUN/model.int8.tflite")
    train.add_argument("--force", action="store_true",
                       help="continue a run with another config than the one it started with")
    # Internal: the phases left after an exec (keras_transformer/train_command.py).
    train.add_argument("--phase-state", help=argparse.SUPPRESS)
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("evaluate", help="translate a split and score with sacreBLEU")
    evaluate.add_argument("--run", required=True,
                          help="a training run directory (its corpus and evaluation settings)")
    evaluate.add_argument("--model", help="score this translator.keras file, exported SavedModel "
                                          "directory or .tflite file (LiteRT) instead of the "
                                          "run's Keras model")
    evaluate.add_argument("--split", default="test", choices=("valid", "test"))
    evaluate.add_argument("--beam", type=int, help="beam size (default: the run's config, or "
                                                   "the beam --model was exported with; an "
                                                   "exported model also decodes with 1)")
    evaluate.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    evaluate.add_argument("--lowercase", action="store_true", help="case-insensitive BLEU")
    evaluate.add_argument("--limit", type=int, help="score only the first N sentences")
    evaluate.set_defaults(func=_evaluate)

    average = commands.add_parser("average-checkpoints", help="average the last K checkpoints")
    average.add_argument("--run", required=True)
    average.add_argument("--last", type=int, default=5)
    average.add_argument("--out", help="output .keras file (default: the run's model.keras)")
    average.set_defaults(func=_average)
    plot = commands.add_parser("plot", help="plot a run's learning curves to a PNG")
    plot.add_argument("--run", required=True)
    plot.add_argument("--out", help="PNG path (default: RUN/learning_curve.png)")
    plot.set_defaults(func=_plot)

    export = commands.add_parser("export", help="export a run as a SavedModel or TFLite model")
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a training run directory")
    source.add_argument("--model", help="a translator.keras file (its decoding options)")
    export.add_argument("--format", default="saved_model", choices=("saved_model", "tflite"))
    export.add_argument("--out", help="output path (default: inside the run directory, or "
                                      "next to --model); for "
                                      "tflite also writes the streaming variant *.step.tflite")
    export.add_argument("--quantize", default="none", choices=("none", "float16", "int8"),
                        help="tflite weights: float32, float16, or int8 dynamic range; "
                             "saved_model: int8 runs the decoding steps' products on int8 "
                             "(DecodingOptions.weights)")
    export.add_argument("--max-output-length", type=int, default=128,
                        help="tflite: static output length (the decoding cache size)")
    export.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    export.add_argument("--ids-only", action="store_true",
                        help="saved_model: ids in, ids out, core TensorFlow ops only (no "
                             "tensorflow-text), for stock TF Serving; default --out "
                             "RUN/saved_model_ids")
    export.set_defaults(func=_export)

    translate = commands.add_parser("translate", help="translate with an exported model")
    translate.add_argument("--model", required=True,
                           help="a translator.keras file (any beam), a SavedModel directory "
                                "or a .tflite file (run in LiteRT)")
    translate.add_argument("--beam", type=int,
                           help="1: greedy; default: the beam search the model was exported "
                                "with (another beam is an error)")
    translate.add_argument("--file", help="read sentences from this file (default: stdin)")
    translate.add_argument("--batch-size", type=int, default=32)
    translate.add_argument("--workers", type=int,
                           help="batches translated at once (default: "
                                "keras_transformer.translation.WORKERS, 2)")
    translate.add_argument("sentences", nargs="*", help="sentences to translate")
    translate.set_defaults(func=_translate)

    attention = commands.add_parser("attention", help="plot attention weights for a sentence")
    attention.add_argument("--model", required=True,
                           help="a translator.keras file or an exported SavedModel directory")
    attention.add_argument("--kind", default="cross", choices=("cross", "encoder"),
                           help="cross: target to source; encoder: source self-attention")
    attention.add_argument("--layer", type=int, default=-1, help="layer index (default: last)")
    attention.add_argument("--target", help="target sentence (default: the greedy translation)")
    attention.add_argument("--out", default="attention.png", help="PNG path")
    attention.add_argument("sentence", help="the source sentence")
    attention.set_defaults(func=_attention)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    # Only the command itself (argv from the command line) may replace its process image.
    args.own_process = argv is None
    # TensorFlow's default CPU allocator gives each large tensor (the main job's logits
    # are 130 MB a batch) to malloc, which maps and unmaps it every step: 138k page
    # faults a step, a fifth of the main job's CPU time spent in the kernel. Its BFC
    # pool keeps and reuses them (same losses; read when the first tensor is made).
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    from keras_transformer.errors import UsageError

    try:
        args.func(args)
    except (UsageError, FileNotFoundError) as e:
        # One line, as argparse reports usage errors (a YAML error spans several lines).
        print(f"keras-transformer: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
