"""Every ``>>>`` example in the package's docstrings runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tfp_nice

MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(tfp_nice.__path__, "tfp_nice.")
)


def test_the_walk_finds_the_package():
    assert {"tfp_nice.flow_model", "tfp_nice._math.couplings", "tfp_nice.export.save"} <= set(
        MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs=dict(vars(module))):
        if test.filename and not test.filename.startswith(tfp_nice.__path__[0]):
            continue  # re-exported objects are checked in their own module
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
