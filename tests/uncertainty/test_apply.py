import math

import numpy as np
import pytest

from napari_cvdm.uncertainty.apply import sample_variance_note, variance_relative_error
from napari_cvdm.uncertainty.conformal import NO_VARIANCE_MESSAGE


def test_variance_relative_error_and_notes_for_one_and_few_samples():
    assert variance_relative_error(2) == pytest.approx(math.sqrt(2.0))
    assert variance_relative_error(9) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no variance"):
        variance_relative_error(1)
    with pytest.raises(ValueError, match="at least 1"):
        variance_relative_error(0)
    assert sample_variance_note(1) == NO_VARIANCE_MESSAGE
    assert "±50%" in sample_variance_note(9) and "±25%" in sample_variance_note(9)


def test_variance_relative_error_matches_simulated_sample_variances():
    rng = np.random.default_rng(9)
    variances = rng.normal(size=(20000, 5)).var(axis=1, ddof=1)
    assert variances.std() == pytest.approx(variance_relative_error(5), rel=0.05)

