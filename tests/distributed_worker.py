"""Subprocess body for tests/test_distributed.py (TF devices must be set up before use).

    python tests/distributed_worker.py mirrored OUT.npz [untied]
    python tests/distributed_worker.py single OUT.npz [untied]
    TF_CONFIG=... python tests/distributed_worker.py multi_worker OUT.npz
"""

import sys

mode, out = sys.argv[1], sys.argv[2]
# "untied": separate source/target embeddings and output projection (other gradient paths).
untied = mode != "multi_worker" and sys.argv[3:] == ["untied"]

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_transformer as kt  # noqa: E402
from keras_transformer.training.strategy import make_strategy  # noqa: E402

strategy = make_strategy({"single": "default"}.get(mode, mode), devices=2)
keras.utils.set_random_seed(0)

# Four sentences: the first two long, the last two mostly padding, so the two replicas
# of a split batch hold very different numbers of real target tokens.
rng = np.random.default_rng(0)
source = rng.integers(3, 20, (4, 8)).astype("int32")
target = rng.integers(3, 20, (4, 8)).astype("int32")
target[2:, 2:] = 0
data = tf.data.Dataset.from_tensor_slices(((source, target), target)).batch(4)
if mode == "multi_worker":
    data = data.repeat(3)

with strategy.scope():
    embeddings = (dict(share_embeddings=False, tie_embeddings=False, target_vocab_size=20)
                  if untied else {})
    model = kt.Transformer(kt.TransformerConfig.from_preset("tiny", vocab_size=20,
                                                            **embeddings))
    # The same start under every strategy: initializers run under a strategy scope draw
    # from the global seed in another order (seen with the untied output projection).
    start = np.random.default_rng(1)
    model.set_weights([start.normal(0.0, 0.2, w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    initial = [w.copy() for w in model.get_weights()]
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=kt.losses.MaskedCrossEntropy())
history = model.fit(data, epochs=1, verbose=0)
np.savez(out, replicas=strategy.num_replicas_in_sync, loss=history.history["loss"][-1],
         *[w - i for w, i in zip(model.get_weights(), initial)])
