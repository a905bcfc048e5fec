import json
import subprocess
import sys

import torch

from fdistill.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "fdistill.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_subcommands():
    res = run_cli("--help")
    assert res.returncode == 0
    for cmd in ("train-teacher", "distill", "eval"):
        assert cmd in res.stdout


def test_bad_override_exits_with_a_clear_message(capsys):
    assert main(["distill", "objective.divergence=bogus", "steps=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown divergence 'bogus'" in err and "jensen_shannon" in err


def test_eval_reports_metrics_of_a_pipeline(tmp_path, capsys):
    from diffusers import UNet2DModel

    from fdistill.pipelines import export_pipeline
    from fdistill.schedules import EDMSchedule

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=11)
    export_pipeline(unet, EDMSchedule(), tmp_path / "pipe")
    assert main(["eval", "--pipeline", str(tmp_path / "pipe"), "--num-samples", "40", "--batch-size", "20",
                 "--output", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert {"fid", "kid", "precision", "recall", "classes_covered", "images_per_second"} <= set(report)
    assert report["num_samples"] == 40 and report["fid"] > 0
    assert main(["eval", "--pipeline", str(tmp_path / "missing")]) == 2
