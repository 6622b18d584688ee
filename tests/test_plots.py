"""The run's figures: the selected epoch is marked on the learning curves, the confusion matrix comes normalised too."""
from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np

from tasks.lib import plots


def test_normalised_rows_are_per_true_class():
    np.testing.assert_allclose(plots.normalise_rows([[3, 1], [0, 0], [2, 2]]),
                               [[0.75, 0.25], [0.0, 0.0], [0.5, 0.5]])


def test_figures_are_written_and_the_marker_shows(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_f1": 0.1 * e} for e in range(1, 6)]
    plain = mpimg.imread(plots.learning_curves(history, tmp_path / "a.png"))
    marked = mpimg.imread(plots.learning_curves(history, tmp_path / "b.png", best_epoch=3))
    assert plain.shape == marked.shape and not np.array_equal(plain, marked)
    red = (marked[..., 0] > 0.8) & (marked[..., 1] < 0.3) & (marked[..., 2] < 0.3)  # the dashed tab:red line
    assert red.sum() > 50 and ((plain[..., 0] > 0.8) & (plain[..., 1] < 0.3) & (plain[..., 2] < 0.3)).sum() < red.sum()
    for normalize in (False, True):
        p = plots.confusion_matrix([[5, 1], [2, 2]], ["a", "b"], tmp_path / f"cm{normalize}.png", normalize=normalize)
        assert p.stat().st_size > 1000
