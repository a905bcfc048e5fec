"""scripts/eval_hiar_student.py end to end on a tiny student and a tiny teacher (seconds)."""

import importlib.util
import json
from pathlib import Path

import pytest
from test_hiar_student import teacher_dir, tiny_config  # noqa: F401 (teacher_dir: a fixture)

from fdistill.training.hiar import distill_video

SCRIPT = Path(__file__).parents[1] / "scripts" / "eval_hiar_student.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("eval_hiar_student", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_rows_metrics_and_goals(script, teacher_dir, tmp_path, capsys):  # noqa: F811
    run = distill_video(tiny_config(teacher_dir, tmp_path / "run", steps=1, **{"warmup.steps": 0}))
    out = tmp_path / "report" / "hiar_student.json"
    script.main(["--student", f"tiny={run / 'hiar_student.safetensors'}", "--teacher", str(teacher_dir),
                 "--bidirectional-teacher", "--seeds", "1", "--frames", "4", "8", "--classes", "2", "--edge", "4",
                 "--output", str(out)])
    report = json.loads(out.read_text())
    assert (out.parent / "hiar_student_frames.png").stat().st_size > 0
    assert (out.parent / "hiar_student.gif").stat().st_size > 0
    assert list(report["rows"]) == ["tiny", script.BASELINE, script.BIDIRECTIONAL, script.REAL]
    assert list(report["rows"][script.BIDIRECTIONAL]["lengths"]) == ["4"]  # not causal: its clip only
    assert report["rows"]["tiny"]["settings"]["made_by"].startswith("fdistill distill-video")
    for name in ("tiny", script.BASELINE):
        row = report["rows"][name]
        assert list(row["lengths"]) == ["4", "8"]
        long = row["lengths"]["8"]
        assert long["window"] == 8 and long["videos"] == 2  # past the 4-frame clip: the rolling window
        assert long["drift"] == pytest.approx(long["accuracy_first"] - long["accuracy_last"])
        real = report["rows"][script.REAL]["lengths"]["8"]["centroid_speed"]
        assert long["motion_ratio"] == pytest.approx(long["centroid_speed"] / real)
        goals = row["goals"]
        assert goals["evaluated_at_frames"] == 8 and goals["accuracy"]["value"] == long["frame_accuracy"]
        steps = len(row["settings"]["denoising_steps"])
        assert goals["accuracy"]["met"] == (long["frame_accuracy"] >= 0.8 and steps == 4)
        assert goals["drift"]["met"] == (long["drift"] <= 0.05)
        assert goals["motion"]["met"] == (long["motion_ratio"] >= 0.5)
    assert report["rows"][script.BIDIRECTIONAL]["goals"]["all_met"] is None  # no 8-frame video: not measured
    assert "| tiny | 8 | 2 |" in capsys.readouterr().out
