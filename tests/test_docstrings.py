"""Every `>>>` example in the package's docstrings runs and prints what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import keras_transformer
import keras_transformer.export
import keras_transformer.training


def _modules():
    names = []
    for package in (keras_transformer, keras_transformer.training, keras_transformer.export):
        names.append(package.__name__)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return sorted(set(names))


def _examples(name):
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [test for test in finder.find(importlib.import_module(name)) if test.examples]


MODULES = _modules()


def test_examples_are_found():
    """Guards the collection below: the modules with known examples are in it."""
    with_examples = {name for name in MODULES if _examples(name)}
    assert {"keras_transformer", "keras_transformer.model", "keras_transformer.translator",
            "keras_transformer.decoding_options", "keras_transformer.training.precision"
            } <= with_examples


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    report = []
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    for test in _examples(name):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
