"""The GradMix step computes what the per-variable step computed (tests/step_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest

from gradmix_tf import config_renames
from tests import step_reference


@pytest.mark.parametrize("method", step_reference.METHODS)
def test_step_outputs_equal_the_per_variable_step(method):
    """Three steps on the small CNN: every variable, the mixing weights, rho, r_t and the
    loss equal those of the per-variable implementation (commit cc95907) to 1e-5."""
    reference = np.load(step_reference.REFERENCE_FILE)
    outputs = step_reference.run_steps(method)
    # The file's keys are "method/output", the method in the names of the time it was written.
    recorded = {tuple(k.split("/", 1)): k for k in reference}
    expected = {
        output: reference[key]
        for (name, output), key in recorded.items()
        if config_renames.method_name(name) == method
    }
    assert sorted(outputs) == sorted(expected)
    for name, value in outputs.items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-5, err_msg=name)
