import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

import keras_transformer as kt  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


def tiny_config(**overrides):
    values = dict(vocab_size=40, d_model=32, num_heads=4, d_ff=64, dropout=0.0)
    values.update(overrides)
    return kt.TransformerConfig.from_preset("tiny", **values)


def random_ids(rng, batch, length, vocab=40, min_len=1):
    """Ids in [3, vocab) with a random number of trailing pads (at least `min_len` real)."""
    ids = rng.integers(3, vocab, size=(batch, length)).astype("int32")
    for row, real in enumerate(rng.integers(min_len, length + 1, size=batch)):
        ids[row, real:] = 0
    return ids


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, "training", "configs", "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run directory trained by the CLI on the tiny config (2 epochs, ~30 s)."""
    from keras_transformer import cli

    run_dir = str(tmp_path_factory.mktemp("tiny_run"))
    assert cli.main(["train", "--config", TINY_CONFIG, "--out", run_dir, "--verbose", "0",
                     "--no-evaluate"]) == 0
    return run_dir


@pytest.fixture(scope="session")
def reverse_model():
    """(model, x_val, y_val): a tiny model trained to reverse sequences (~45 s)."""
    from tests.test_learning import train_reverse_model

    keras.utils.set_random_seed(1234)
    return train_reverse_model()
