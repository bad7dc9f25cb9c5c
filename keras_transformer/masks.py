"""Attention masks. Keras semantics throughout: True means "may attend / keep"."""

from keras import ops


def padding_mask(ids, pad_id=0):
    """`[batch, length]` bool mask, True at real (non-pad) tokens."""
    return ops.not_equal(ids, pad_id)


def causal_mask(query_length, key_length=None):
    """`[query_length, key_length]` bool mask letting query i see keys 0..i."""
    key_length = query_length if key_length is None else key_length
    rows = ops.expand_dims(ops.arange(query_length), -1)
    cols = ops.expand_dims(ops.arange(key_length), 0)
    return ops.greater_equal(rows, cols)


def combine_masks(query_length, key_length, key_padding=None, attention=None, causal=False):
    """Merge masks into one bool mask broadcastable to `[batch, q, k]`, or None.

    Args:
        key_padding: `[batch, key_length]`, True at real keys.
        attention: `[batch, query_length, key_length]`, an explicit mask.
        causal: forbid attending to later positions (decoder self-attention).
    """
    masks = []
    if attention is not None:
        masks.append(ops.cast(attention, "bool"))
    if key_padding is not None:
        masks.append(ops.expand_dims(ops.cast(key_padding, "bool"), 1))
    if causal:
        masks.append(ops.expand_dims(causal_mask(query_length, key_length), 0))
    if not masks:
        return None
    mask = masks[0]
    for other in masks[1:]:
        mask = ops.logical_and(mask, other)
    return mask
