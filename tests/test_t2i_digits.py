"""The shipped text-to-image digits teacher (SD3 layout) is a stock diffusers folder, and the report that judges
its one-step student runs end to end (tiny counts): teacher sweep, cached teacher scores, student over seeds."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "fdistill" / "assets" / "t2i_digits_teacher"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_teacher_is_a_stock_sd3_folder_that_draws_digits():
    from diffusers import DiffusionPipeline, StableDiffusion3Pipeline

    pipe = DiffusionPipeline.from_pretrained(ASSET)
    assert type(pipe) is StableDiffusion3Pipeline
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a handwritten seven"] * 2, num_inference_steps=2, guidance_scale=2.0, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()


def test_report_runs_and_reuses_the_teachers_scores(tmp_path):
    student = tmp_path / "student"
    shutil.copytree(ASSET, student)  # the teacher stands in for a student: the report only needs the stock call
    (student / "fdistill.json").write_text(json.dumps({"stock_call": {"num_inference_steps": 1,
                                                                      "guidance_scale": 0.0}}))
    report = _script("t2i_digits_report")
    args = ["--student", str(student), "--guidance", "1.0", "2.0", "--teacher-steps", "2", "--sweep-samples", "20",
            "--num-samples", "20", "--batch-size", "10", "--timing-batch", "2", "--timing-repeats", "1",
            "--student-seeds", "0", "1", "--threads", "1", "--cache", str(tmp_path / "cache"),
            "--output", str(tmp_path / "r.json"), "--grid", str(tmp_path / "g.png")]
    report.main(args)
    r = json.loads((tmp_path / "r.json").read_text())
    spaces = set(report.SPACES)
    assert set(r["teacher_sweep"]) == {"1.0", "2.0"} and set(r["teacher_best_guidance"]) == spaces
    assert set(r["student"]["per_seed"]) == {"0", "1"} and set(r["student_over_teacher_best"]) == spaces
    fid = r["student_fid_over_seeds"]["pixels"]
    per_seed = [r["student"]["per_seed"][s]["by_features"]["pixels"]["fid"] for s in ("0", "1")]
    assert fid["mean"] == sum(per_seed) / 2 and fid["spread"] == max(per_seed) - min(per_seed)
    assert r["speedup"] > 0 and (tmp_path / "g.png").is_file()
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert cached == ["teacher_w1.0_n20_s0_k2.json", "teacher_w2.0_n20_s0_k2.json"]
    (tmp_path / "cache" / "teacher_w1.0_n20_s0_k2.json").write_text(json.dumps(
        {**r["teacher_sweep"]["1.0"], "marker": True}))
    report.main(args)  # the teacher's scores are read back, not sampled again
    assert json.loads((tmp_path / "r.json").read_text())["teacher_sweep"]["1.0"]["marker"] is True
