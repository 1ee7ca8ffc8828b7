"""``evaluate``'s simulated test data: unseen by default, and the table says which data it scored."""

import numpy as np
import pytest

from napari_cvdm.errors import InputError
from napari_cvdm.evaluate import EvaluationOptions, evaluate, write_tables


def _photos(folder, n=30):
    from skimage.io import imsave

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        imsave(folder / f"photo_{i:02d}.png", (rng.random((24, 24)) * 255).astype(np.uint8), check_contrast=False)
    return folder


def test_qpi_evaluation_uses_the_test_photos_and_says_it_is_unseen(tmp_path):
    from napari_cvdm.data import split_source_files

    folder = _photos(tmp_path / "photos")
    options = EvaluationOptions(simulate="qpi", images=2, size=32, source_images=str(folder))
    table = evaluate(options)
    test = {p.name for p in split_source_files(folder)["test"]}
    assert {row["image"].split("-", 4)[-1] for row in table.rows} <= test
    assert table.data.startswith("unseen QPI test set")
    markdown, _, _ = write_tables(table, tmp_path / "out")
    assert markdown.read_text().startswith("Test data: unseen QPI test set")


def test_without_photos_the_qpi_table_says_it_is_not_unseen_and_sr_defaults_to_the_unseen_settings():
    qpi = evaluate(EvaluationOptions(simulate="qpi", images=1, size=32))
    assert "NOT unseen" in qpi.data and "--source-images" in qpi.data
    sr = evaluate(EvaluationOptions(simulate="sr", images=6, size=32))
    assert sr.data.startswith("unseen SR test set")
    assert {row["image"].rsplit("-", 1)[-1] for row in sr.rows} >= {"nucleus", "mitochondria"}
    seen = evaluate(EvaluationOptions(simulate="sr", images=1, size=32, test_set="seen"))
    assert "NOT unseen" in seen.data


def test_bad_source_images_are_a_readable_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        evaluate(EvaluationOptions(simulate="qpi", images=1, size=32, source_images=str(tmp_path / "missing")))
    with pytest.raises(InputError, match="QPI"):
        evaluate(EvaluationOptions(simulate="sr", images=1, size=32, source_images=str(tmp_path)))
