"""Decoding vs CTranslate2 on real text: part 2 of `bench/vs_ctranslate2.py` (--run RUN).

The run's model translates the 1,000 test_2016_flickr sentences from strings to strings
(beam 4, batches of 32 sorted by length), ours and CTranslate2's on the same weights, then
the first 100 one at a time (batch 1). What each row measures is in vs_ctranslate2.py's
docstring. CTranslate2 runs in a fresh process per setting: this file run as a script with
--e2e (CTranslate2 only, no TensorFlow).
"""

import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ctranslate2_peer as ct2  # noqa: E402  (no TensorFlow: safe in the --e2e process)
from vs_ctranslate2 import (LITERT_THREADS, _ms, convert_and_check,  # noqa: E402
                            setting_label, threads_label)


def _e2e(job):
    """The --e2e subprocess (CTranslate2 only, no TensorFlow): one task of one setting."""
    with open(job["source"], encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    kwargs = dict(compute_type=job["compute_type"], intra_threads=job["intra_threads"])
    if job["kind"] == "file":
        kwargs.update(inter_threads=job["inter_threads"])
        passes = []
        for _ in range(2):  # untimed first pass, like ours
            start = time.perf_counter()
            hypotheses, seconds = ct2.ct2_translate_file(
                job["ct2_dir"], job["spm"], lines, beam_size=job["beam"], batch_size=32,
                length_penalty=job["alpha"], max_extra_length=job["max_extra_length"], **kwargs)
            passes.append((time.perf_counter() - start - seconds, seconds))
        return dict(hypotheses=hypotheses, load_seconds=round(passes[0][0], 2),
                    first_pass_seconds=round(passes[0][1], 2), seconds=passes[1][1])
    import ctranslate2
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=job["spm"])
    translator = ctranslate2.Translator(job["ct2_dir"], **kwargs)

    def once(line):  # strings to a string, as the .tflite signatures do
        pieces = processor.encode(line, out_type=str)[:256]
        result = translator.translate_batch(
            [pieces], beam_size=job["beam"], length_penalty=job["alpha"], max_input_length=0,
            max_decoding_length=len(pieces) + job["max_extra_length"])[0]
        ids = [processor.piece_to_id(p) for p in result.hypotheses[0]]
        return processor.decode([i for i in ids if i > ct2.EOS_ID])

    once(lines[0])
    times = []
    for line in lines:
        start = time.perf_counter()
        once(line)
        times.append(1000 * (time.perf_counter() - start))
    return dict(ms=round(statistics.median(times), 2))


def e2e_job(setting, **job):
    """`_e2e` in a fresh process with the setting's threads and OMP_WAIT_POLICY."""
    job.update(compute_type=setting["compute_type"], intra_threads=setting["intra_threads"],
               inter_threads=setting.get("inter_threads", 1))
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if setting["omp_wait_policy"] != "default":
        env["OMP_WAIT_POLICY"] = setting["omp_wait_policy"]
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--e2e", json.dumps(job)],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"--e2e {job['kind']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ct2_fastest(compute_type, measure, **job):
    """`(setting, output, {setting label: measure})`: `e2e_job` in every CTranslate2 setting
    of `compute_type` (threads x OMP_WAIT_POLICY; for a file also two replicas), the one
    with the smallest `measure` first. Swept on real text itself: the best setting of the
    synthetic cells is not its best here (float32, batch 32, beam 4: in one run 2 threads
    won that cell by a hair, 1,155 against 1,157 ms, and took 9.4 s on the test set, where
    1 thread takes 3.2 s)."""
    outs = {}
    settings = ct2.FILE_SETTINGS if job["kind"] == "file" else ct2.SETTINGS
    for setting in (s for s in settings if s["compute_type"] == compute_type):
        setting = dict(setting, omp_wait_policy=setting["omp_wait_policy"] or "default")
        outs[setting_label(setting)] = (setting, e2e_job(setting, **job))
    label = min(outs, key=lambda name: outs[name][1][measure])
    setting, out = outs[label]
    return setting, out, {name: o[measure] for name, (_, o) in outs.items()}


def stale_exports(run_dir):
    """The run's exports older than the model / decoding / export code: they run the
    decoder as it was when exported."""
    root = os.path.dirname(HERE)
    code = max(os.path.getmtime(p) for pattern in ("keras_transformer/**/*.py", "export/*.py")
               for p in glob.glob(os.path.join(root, pattern), recursive=True))
    exports = [os.path.join(run_dir, "saved_model", "saved_model.pb"),
               os.path.join(run_dir, "model.int8.tflite")]
    return [p for p in exports if os.path.exists(p) and os.path.getmtime(p) < code]


def steady_state(translate, sources, workers=None):
    """`(hypotheses, seconds, first_pass_seconds)` of `translate` over `sources` in
    batches of 32, `workers` at once (default `translation.WORKERS`): a first pass (it
    compiles every bucket), then the timed one."""
    from keras_transformer.translation import WORKERS, translate_lines

    workers = workers or WORKERS

    start = time.perf_counter()
    translate_lines(translate, sources, 32, verbose=0, workers=workers)
    first = time.perf_counter() - start
    start = time.perf_counter()
    hypotheses = translate_lines(translate, sources, 32, verbose=0, workers=workers)
    return hypotheses, time.perf_counter() - start, round(first, 2)


def ours_end_to_end(run_dir, source_file, sources):
    """{name: (hypotheses, seconds, extra)}: the CLI as a subprocess, then in process."""
    from keras_transformer.export.saved_model import saved_model_translator

    saved_model = os.path.join(run_dir, "saved_model")
    # The venv running this script first: it may not be on PATH (`/venv/bin/python bench/...`).
    cli = shutil.which("keras-transformer", path=os.pathsep.join(
        [os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    if not cli:
        raise RuntimeError("keras-transformer is not on PATH: pip install -e .")
    start = time.perf_counter()
    done = subprocess.run([cli, "translate", "--model", saved_model, "--file", source_file,
                           "--batch-size", "32"], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    hypotheses = done.stdout.split("\n")[:len(sources)]
    if done.returncode or len(hypotheses) != len(sources):
        raise RuntimeError(f"keras-transformer translate failed:\n{done.stderr[-3000:]}")
    rows = {"ours, CLI (process start, load, compiles)": (hypotheses, seconds, {})}
    start = time.perf_counter()
    translate = saved_model_translator(saved_model)
    load = time.perf_counter() - start
    hypotheses, seconds, first = steady_state(translate, sources)
    rows["ours, SavedModel in process (steady state)"] = (
        hypotheses, seconds, dict(load_seconds=round(load, 2), first_pass_seconds=first))
    hypotheses, seconds, first = steady_state(translate, sources, workers=1)
    rows["ours, SavedModel in process, one batch at a time (steady state)"] = (
        hypotheses, seconds, dict(first_pass_seconds=first))
    return rows


def ours_int8_saved_model(model, tokenizer, options, sources, tmp):
    """(hypotheses, seconds, extra) of the model exported as `export --quantize int8`
    would (`weights="int8"`), loaded in process, steady state."""
    from keras_transformer.export.saved_model import export_saved_model, saved_model_translator

    path = os.path.join(tmp, "saved_model_int8")
    export_saved_model(model, tokenizer, path, options.replace(weights="int8"))
    start = time.perf_counter()
    translate = saved_model_translator(path)
    load = time.perf_counter() - start
    hypotheses, seconds, first = steady_state(translate, sources)
    return hypotheses, seconds, dict(load_seconds=round(load, 2), first_pass_seconds=first)


def ours_other_options(config, model, tokenizer, sources, **changes):
    """(hypotheses, seconds, extra) of the run's model in process, steady state, with
    other decoding options: `stopping` "first" stops a sentence at the first step whose
    best extension ends it (CTranslate2's early exit, which it takes only without a length
    penalty), "full" once it holds beam_size finished hypotheses (CTranslate2's rule with
    a length penalty); `weights="int8"` runs the steps' dense products on int8 operands."""
    from keras_transformer.translation import TextTranslator

    translator = TextTranslator(model, tokenizer,
                                config.evaluation.decoding_options(**changes))
    hypotheses, seconds, first = steady_state(
        lambda batch: translator.translate(batch).numpy(), sources)
    return hypotheses, seconds, dict(first_pass_seconds=first)


def end_to_end(run_dir, preset, tmp):
    """The real-text rows and the batch-1 rows for the JSON's "end_to_end"."""
    import sentencepiece

    import edge
    from keras_transformer.training import corpus
    from keras_transformer.training.evaluate import bleu, load_run

    config, model, tokenizer = load_run(run_dir)
    evaluation, spm = config.evaluation, os.path.join(run_dir, "tokenizer.model")
    sources, references = corpus.split_lines(config.data, "test")
    sources, references = sources[:preset["sentences"]], references[:preset["sentences"]]
    stale = stale_exports(run_dir)
    if stale:
        print(f"WARNING: exported before the last code change, re-export: {stale}", flush=True)
    dirs, checks = convert_and_check(model, spm, tmp, "run",
                                     tokenizer.tokenize(sources[:8]).to_tensor().numpy())
    source_file = os.path.join(tmp, "test.src")
    with open(source_file, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in sources)
    runs = ours_end_to_end(run_dir, source_file, sources)
    for stopping in ("first", "full"):
        if evaluation.beam_size > 1 and evaluation.stopping != stopping:
            runs[f"ours, Keras model in process (steady state), stopping {stopping}"] = \
                ours_other_options(config, model, tokenizer, sources, stopping=stopping)
    if evaluation.weights != "int8":
        runs["ours, int8 SavedModel in process (steady state)"] = ours_int8_saved_model(
            model, tokenizer, evaluation.decoding_options(), sources, tmp)
    common = dict(spm=spm, source=source_file, alpha=evaluation.alpha,
                  max_extra_length=evaluation.max_extra_length)
    for q, ct2_dir in dirs.items():
        setting, out, swept = ct2_fastest(q, "seconds", kind="file", ct2_dir=ct2_dir,
                                          beam=evaluation.beam_size, **common)
        runs[f"CTranslate2 {q} ({setting_label(setting)})"] = (
            out.pop("hypotheses"), out.pop("seconds"), dict(out, seconds_by_setting=swept))
    processor = sentencepiece.SentencePieceProcessor(model_file=spm)
    result = dict(run=run_dir, split_files=list(corpus.split_shards(config.data, "test")[0]),
                  sentences=len(sources), beam_size=evaluation.beam_size,
                  alpha=evaluation.alpha, stale_exports=stale, check_equal=checks, rows={})
    for name, (hypotheses, seconds, extra) in runs.items():
        tokens = sum(len(processor.encode(h)) for h in hypotheses)
        result["rows"][name] = dict(
            seconds=round(seconds, 2), sentences_per_s=round(len(hypotheses) / seconds, 1),
            target_tokens=tokens, tokens_per_s=round(tokens / seconds),
            bleu=round(bleu(hypotheses, references)[0].score, 2), **extra)
        print(name, json.dumps(result["rows"][name]), flush=True)
    # Batch 1, strings to strings.
    first = sources[:preset["batch1_sentences"]]
    with open(source_file, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in first)
    tflite = os.path.join(run_dir, "model.int8.tflite")
    batch1 = dict(sentences=len(first), litert_threads=list(LITERT_THREADS), rows={})
    if os.path.exists(tflite):
        row = batch1["rows"].setdefault("ours int8 .tflite, LiteRT", {})
        for signature, key in (("greedy", "greedy_ms"), ("translate", "beam4_ms")):
            by_threads = {t: edge.latency_ms(tflite, first, signature, t) for t in LITERT_THREADS}
            best = min(by_threads, key=by_threads.get)
            row.update({key: by_threads[best], key + "_setting": threads_label(best),
                        key + "_by_threads": by_threads})
    else:
        print(f"{tflite} missing: keras-transformer export --run {run_dir} --format tflite "
              "--quantize int8 --out RUN/model.int8.tflite", flush=True)
    for q, ct2_dir in dirs.items():
        row = batch1["rows"].setdefault(f"CTranslate2 {q}", {})
        for beam, key in ((1, "greedy_ms"), (4, "beam4_ms")):
            setting, out, swept = ct2_fastest(q, "ms", kind="batch1", ct2_dir=ct2_dir,
                                              beam=beam, **common)
            row.update({key: out["ms"], key + "_setting": setting_label(setting),
                        key + "_by_setting": swept})
    print(json.dumps(batch1), flush=True)
    return dict(result, batch1=batch1)


def markdown(e2e):
    """The real-text tables for bench/results/README.md (under the synthetic ones)."""
    lines = ["", (f"End to end: {e2e['run']}, {e2e['sentences']} test_2016_flickr sentences, "
                   f"strings to strings, beam {e2e['beam_size']}, batches of 32 sorted by "
                   f"length, alpha {e2e['alpha']} (ours GNMT, CT2 length^alpha); seconds "
                   "without model loading except in the CLI row."), "",
              "| decoder | seconds | sentences/s | target tokens/s | BLEU | load s |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, r in e2e["rows"].items():
        lines.append(f"| {name} | {r['seconds']} | {r['sentences_per_s']} | "
                     f"{r['tokens_per_s']:,} | {r['bleu']} | {r.get('load_seconds', '–')} |")
    b1 = e2e["batch1"]
    lines += ["", (f"Batch 1, first {b1['sentences']} sentences, median ms per sentence, "
                   "strings to strings; each cell's fastest setting in brackets:"), "",
              "| decoder | greedy ms | beam 4 ms |", "|---|---:|---:|"]
    for name, r in b1["rows"].items():
        cells = [_ms(r[k]) + (f" ({r[k + '_setting']})" if k + "_setting" in r else "")
                 for k in ("greedy_ms", "beam4_ms")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if e2e["stale_exports"]:
        lines += ["", "Exported before the last code change: "
                  + ", ".join(e2e["stale_exports"]) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--e2e"] or len(sys.argv) != 3:
        raise SystemExit("internal: run by bench/vs_ctranslate2.py as `--e2e JSON`")
    print(json.dumps(_e2e(json.loads(sys.argv[2]))))
