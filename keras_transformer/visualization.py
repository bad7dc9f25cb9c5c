"""Attention heatmaps with matplotlib: the weights of each head over subword tokens.

Example:
>>> weights, queries, keys = attention_map(model, tokenizer, "A dog runs.",
...                                        "Ein Hund rennt.", kind="cross")  # doctest: +SKIP
>>> plot_attention(weights, queries, keys).savefig("cross.png")             # doctest: +SKIP
"""

import math

import numpy as np


KINDS = ("encoder", "decoder_self", "cross")


def attention_map(model, tokenizer, source, target, kind="cross", layer=-1):
    """Weights `[heads, queries, keys]` of one layer for one sentence pair, and the labels.

    `kind`: "encoder" (source attends to source), "decoder_self" (target prefix to
    itself) or "cross" (each target position to the source). The target is fed
    teacher-forced after bos, so query i is the position that predicts target token i.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    source_ids = np.asarray(tokenizer.source_ids([source]))
    target_ids = np.asarray(tokenizer.target_in_ids([target]))
    weights = np.asarray(model.attention_scores(source_ids, target_ids)[kind][layer])[0]
    source_tokens = tokenizer.pieces(source_ids[0])
    target_tokens = tokenizer.pieces(target_ids[0])
    queries = source_tokens if kind == "encoder" else target_tokens
    keys = target_tokens if kind == "decoder_self" else source_tokens
    return weights, queries, keys


def plot_attention(weights, query_tokens, key_tokens, title=None, columns=4):
    """One heatmap per head (rows: queries, columns: keys); returns the matplotlib Figure.

    `weights`: `[heads, queries, keys]` (or `[queries, keys]` for one map). Padding
    positions beyond the labels are cut off.
    """
    import matplotlib.pyplot as plt

    weights = np.asarray(weights, np.float32)
    if weights.ndim == 2:
        weights = weights[None]
    weights = weights[:, : len(query_tokens), : len(key_tokens)]
    heads = weights.shape[0]
    columns = min(columns, heads)
    rows = math.ceil(heads / columns)
    size = 0.28 * max(len(query_tokens), len(key_tokens)) + 1.5
    figure, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows),
                                squeeze=False)
    for head, axis in enumerate(axes.flat):
        if head >= heads:
            axis.axis("off")
            continue
        axis.imshow(weights[head], cmap="viridis", vmin=0.0, vmax=1.0)
        axis.set_xticks(range(len(key_tokens)), key_tokens, rotation=90, fontsize=8)
        axis.set_yticks(range(len(query_tokens)), query_tokens, fontsize=8)
        axis.set_title(f"head {head}", fontsize=9)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
