"""benchmarks/report.py on a tiny configuration: it scores, resumes without redoing work, and
writes the README's model table and docs/results.md's tables from its rows."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_benchmark, write_photos

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    threads = torch.get_num_threads()
    yield load_benchmark("report")
    torch.set_num_threads(threads)  # report.main sets the process's threads; later tests expect the default


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"), 128)


def test_interval_is_student_t(report):
    mean, low, high, n = report.unseen.interval([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3)
    assert high - mean == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    assert report.cell([0.5], 2) == "0.50"
    assert report.cell([], 2) == "–"


def test_the_tables_name_each_models_sampler_and_data_step_from_its_metadata(report):
    sr = report.sampler_line("sr", ROOT / "models")
    assert "`cvdm-sr-residual`: DPM-Solver++ 2M SDE, 8 steps, data-consistency step ζ = 1;" in sr
    assert "`cvdm-sr-small`: DPM-Solver++ 2M SDE, 20 steps, no data-consistency step." in sr
    assert "`cvdm-qpi-residual`: DPM-Solver++ 2M SDE, 8 steps, no data-consistency step" in report.sampler_line(
        "qpi", ROOT / "models")


def test_qpi_tiny_run_resumes_and_writes_docs(report, photos, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--only", "qpi", "--out", str(out), "--source-images", str(photos), "--images", "2",
            "--large-images", "0", "--noise", "0.05", "--size", "48", "--samples", "2", "--tune-images", "1",
            "--skip-model", "cvdm-qpi-small", "--threads", "1", "--no-regression"]
    report.main(argv)
    lines = (out / "qpi.jsonl").read_text().splitlines()
    methods = {json.loads(line)["method"] for line in lines[1:]}
    assert methods == {"cvdm-qpi-residual", "US-TIE", "FFT-TIE"}
    row = next(json.loads(line)["row"] for line in lines[1:] if json.loads(line)["method"] == "cvdm-qpi-residual")
    assert 0 <= row["coverage95"] <= 1 and 0 <= row["coverage95_calibrated"] <= 1 and row["seconds"] > 0
    text = (out / "report-qpi.md").read_text()
    assert "| cvdm-qpi-residual | 2 |" in text and "not run: pass --regression FOLDER" in text
    if not report.waveorder_qpi.available():  # an optional benchmark extra: its row says so
        assert "| waveorder | 0 | not run: waveorder is not installed" in text
    assert "| cvdm-qpi-small | 0 | not run yet |" in text
    # the model minus the best tuned classical method, image by image
    assert re.search(r"\| cvdm-qpi-residual \| (US|FFT)-TIE \| 2 \| -?0\.\d{4} \[.*\] \| [012] of 2 \|", text)

    # a second run finds every image done: nothing is appended
    capsys.readouterr()
    report.main(argv)
    assert (out / "qpi.jsonl").read_text().splitlines() == lines
    assert "image 1/2" not in capsys.readouterr().out

    # a baseline row that is missing is made again, without sampling the model again
    kept = [line for line in lines if '"method": "FFT-TIE"' not in line]
    (out / "qpi.jsonl").write_text("\n".join(kept) + "\n")
    report.main(argv)
    again = (out / "qpi.jsonl").read_text().splitlines()
    assert sum('"method": "FFT-TIE"' in line for line in again) == 2
    assert len(again) == len(kept) + 2  # and only it: the rows there are not made again
    assert sum('"method": "cvdm-qpi-residual"' in line for line in again) == 2

    # the shipped regression network is scored by default, beside the rows there, without sampling the model
    capsys.readouterr()
    report.main(argv[:-1])
    assert "image 1/2 cvdm-qpi-residual: baselines" in capsys.readouterr().out
    scored = [json.loads(line) for line in (out / "qpi.jsonl").read_text().splitlines()[1:]]
    regression = [r["row"] for r in scored if r["method"] == report.REGRESSION]
    assert len(regression) == 2 and all(0 < r["ms_ssim"] <= 1 and len(r["weights"]) == 16 for r in regression)
    assert "Regression baseline: `benchmarks/baselines/qpi-regression`" in (out / "report-qpi.md").read_text()

    # a folder that holds no regression is refused in one line
    with pytest.raises(SystemExit, match="holds no regression made by benchmarks/qpi_regression.py"):
        report.main([*argv[:-1], "--regression", str(tmp_path / "nothing")])

    # a regression network that has not had its whole budget is not scored as "the same budget"
    unfinished = tmp_path / "regression"
    unfinished.mkdir()
    (unfinished / "regression.json").write_text(json.dumps({"steps": 2, "planned_steps": 4}))
    with pytest.raises(SystemExit, match="2 of its 4 steps"):
        report.main([*argv[:-1], "--regression", str(unfinished)])
    # nor is one trained over another residual model: its base and budget would not be this model's
    (unfinished / "regression.json").write_text(json.dumps({"steps": 4, "planned_steps": 4, "model_sha256": "0"}))
    with pytest.raises(SystemExit, match="trained over another cvdm-qpi-residual"):
        report.main([*argv[:-1], "--regression", str(unfinished)])

    # another setting in the same folder is refused rather than mixed in
    with pytest.raises(SystemExit, match="other settings"):
        report.main([*argv[:-3], "--samples", "3"])
    # and so are other model files (other weights, sampler or data-consistency strength)
    other = tmp_path / "other-models"
    other.mkdir()
    for name in ("cvdm-qpi-residual", "cvdm-qpi-small"):
        (other / f"{name}.safetensors").write_bytes((ROOT / "models" / f"{name}.safetensors").read_bytes() + b" ")
    with pytest.raises(SystemExit, match="other settings"):
        report.main([*argv, "--models", str(other)])

    readme, results = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text("intro\n<!-- report:models -->\nold\n<!-- /report:models -->\nend\n")
    results.write_text("<!-- report:qpi -->\n<!-- /report:qpi -->\n<!-- report:sr -->\n<!-- /report:sr -->\n")
    args = report.main.__globals__["argparse"].Namespace(
        out=out, seed=0, samples=2, size=48, large_size=512, sr_size=256, images=2, large_images=0,
        sr_images=24, noise=[0.05], regression=None, models=ROOT / "models")
    cards = tmp_path / "models"
    cards.mkdir()
    (cards / "cvdm-qpi-residual.md").write_text("# card\n<!-- report:card -->\n<!-- /report:card -->\n")
    report.write_docs(args, "test CPU", readme=readme, results=results, cards=cards)
    card = (cards / "cvdm-qpi-residual.md").read_text()
    assert "| noise 0.05, 48² | 2 |" in card and "| regression (same budget): MS-SSIM |" in card
    table = readme.read_text()
    assert "old" not in table and table.startswith("intro\n") and table.endswith("end\n")
    assert "[`cvdm-qpi-residual`](models/cvdm-qpi-residual.md)" in table and "(n = 2, QPI" in table
    assert "[`cvdm-sr-residual`](models/cvdm-sr-residual.md) | widefield → SIM-like (×2) | 62.6 nm → 31.3 nm | not run yet |" in table
    assert "### QPI noise 0.05, 48²" in results.read_text()
    assert "Samplers (each model's defaults): `cvdm-qpi-residual`" in results.read_text()

    # one half's docs leave the other half's README rows as they are
    sr_row = "| [`cvdm-sr-residual`](models/cvdm-sr-residual.md) | widefield → SIM-like (×2) | 62.6 nm → 31.3 nm | 0.9 |"
    readme.write_text(f"<!-- report:models -->\n{sr_row}\n<!-- /report:models -->\n")
    report.write_docs(args, "test CPU", readme=readme, results=results, cards=cards, tasks=("qpi",))
    table = readme.read_text()
    assert sr_row in table and "(n = 2, QPI" in table and "cvdm-sr-small" not in table
