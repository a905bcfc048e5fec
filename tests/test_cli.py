import json
import subprocess
import sys

import pytest
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


def test_overrides_may_follow_options(capsys):
    # the README's `... --resume latest steps=2`: overrides after an option still reach the config
    assert main(["distill", "--resume", "latest", "objective.divergence=bogus"]) == 2
    assert "unknown divergence 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["distill", "--resume", "latest", "--no-such-flag"])
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_eval_reports_every_space_over_seeds_next_to_its_teacher(tiny_digits_teacher, tmp_path, capsys):
    from diffusers import UNet2DModel

    from fdistill.cli import ALL_SPACES
    from fdistill.eval import ALL_FEATURE_SPACES
    from fdistill.pipelines import export_pipeline
    from fdistill.schedules import EDMSchedule
    from fdistill.teachers import export_teacher_asset

    assert ALL_SPACES == ALL_FEATURE_SPACES  # the parser's copy of the names
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=11)
    export_pipeline(unet, EDMSchedule(), tmp_path / "pipe")
    asset = tmp_path / "teacher.safetensors"
    export_teacher_asset(tiny_digits_teacher, asset)
    args = ["eval", "--pipeline", str(tmp_path / "pipe"), "--num-samples", "40", "--batch-size", "20", "--seeds", "0",
            "1", "--feature-spaces", "classifier", "pixels", "--teacher", str(asset), "--teacher-steps", "2"]
    assert main([*args, "--output", str(tmp_path / "r.json")]) == 0
    out, err = capsys.readouterr()
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["by_features"]) == {"classifier", "pixels"} and report["seeds"] == [0, 1]
    fid = report["by_features"]["pixels"]["fid"]
    assert len(fid["per_seed"]) == 2 and fid["spread"] == pytest.approx(max(fid["per_seed"]) - min(fid["per_seed"]))
    assert fid["mean"] == pytest.approx(sum(fid["per_seed"]) / 2) and fid["per_seed"][0] != fid["per_seed"][1]
    teacher = report["teacher"]
    assert teacher["source"].endswith("(sampled now, 2 steps)") and set(teacher["by_features"]) == {"classifier", "pixels"}
    assert report["fid_ratio_to_teacher"]["pixels"] == pytest.approx(fid["mean"] / teacher["by_features"]["pixels"]
                                                                    ["fid"]["mean"])
    assert "over sample seeds 0 1, 40 samples each" in out and "ratio" in out
    assert "warning: 40 samples per seed is too few for FID and KID" in err

    # a teacher record holding the reference at these counts is read instead of sampling again
    record = json.loads(asset.with_suffix(".json").read_text())
    record["metrics"] = {"reference": {**{k: v for k, v in teacher.items() if k != "source"}}}
    asset.with_suffix(".json").write_text(json.dumps(record))
    assert main([*args, "--output", str(tmp_path / "r2.json")]) == 0
    again = json.loads((tmp_path / "r2.json").read_text())
    assert again["teacher"]["source"].endswith("(recorded)")
    assert again["teacher"]["by_features"] == teacher["by_features"] and again["by_features"] == report["by_features"]
    assert main(["eval", "--pipeline", str(tmp_path / "missing")]) == 2


def test_eval_refuses_a_text_to_image_student(tmp_path, capsys):
    """A text-to-image student is its teacher's own pipeline class; ``fdistill eval`` scores FDistillPipelines."""
    from diffusers import StableDiffusionPipeline

    from fdistill.models.tiny_sd import tiny_sd_components

    StableDiffusionPipeline(**tiny_sd_components(), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(tmp_path / "sd")
    assert main(["eval", "--pipeline", str(tmp_path / "sd"), "--num-samples", "4"]) == 2
    err = capsys.readouterr().err
    assert "fdistill eval: error: this folder has text components (text_encoder, tokenizer)" in err
    assert "text-to-image students are exported as their teacher's own diffusers pipeline class" in err


def config_help(command, capsys):
    """The ``key  type = default`` rows that ``fdistill <command> --help`` prints."""
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    rows = text.split("config keys (in the --config YAML or as key=value overrides; type = default):\n")[1]
    return [line.split(None, 1) for line in rows.strip().splitlines()]


def test_distill_help_lists_every_config_key_with_type_and_default(capsys):
    from fdistill.training.config import load_config
    from fdistill.training.distill_config import DistillConfig

    rows = dict(config_help("distill", capsys))
    assert rows["teacher.kind"] == "str = 'asset'" and rows["teacher.path"] == "str | None = None"
    assert rows["objective.divergence"] == "str = 'jensen_shannon'" and rows["warmup.ode_pairs"] == "int = 2000"
    assert rows["data.prompts"] == "list[str] = []" and rows["steps"] == "int = 1000"
    # every listed key is a real one: setting each to its listed default builds the default config
    overrides = [f"{key}={spec.split(' = ', 1)[1]}" for key, spec in rows.items()]
    overrides = [o.replace("=None", "=") for o in overrides]
    assert load_config(DistillConfig, None, overrides) == DistillConfig()


def test_train_teacher_help_lists_its_config_keys(capsys):
    rows = dict(config_help("train-teacher", capsys))
    assert rows["model.kind"] == "str = 'unet2d'" and rows["schedule.name"] == "str = 'edm'"
    assert rows["schedule.kwargs"] == "dict = {}" and rows["lr_schedule"] == "str = 'constant'"


def test_yaml11_boolean_words_in_overrides_keep_their_meaning():
    # `mixed_precision=no` is the string "no" (YAML 1.1 would read False); a bool field still takes yes/no
    from fdistill.training.config import apply_overrides, build
    from fdistill.training.distill import DistillConfig

    data = apply_overrides({}, ["mixed_precision=no", "export=no"])
    assert data == {"mixed_precision": "no", "export": "no"}
    cfg = build(DistillConfig, data)
    assert cfg.mixed_precision == "no" and cfg.export is False


def test_overrides_after_a_list_option_stay_overrides():
    # argparse alone gives `steps=500` to --seeds (and fails on int('steps=500')); a one-value option keeps its value
    import argparse

    from fdistill.training.config import parse_args_with_overrides

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--divergences", nargs="+", default=["reverse_kl"])
    ap.add_argument("--config", default=None)
    ap.add_argument("--dry", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = parse_args_with_overrides(ap, ["--seeds", "1", "2", "steps=500", "--divergences", "forward_kl",
                                          "alpha:1.5", "optim.lr=1e-5", "--config", "a=b.yaml", "--dry", "seed=3"])
    assert args.seeds == [1, 2] and args.divergences == ["forward_kl", "alpha:1.5"] and args.dry
    assert args.config == "a=b.yaml" and args.overrides == ["steps=500", "optim.lr=1e-5", "seed=3"]
    with pytest.raises(SystemExit):
        ap.parse_args(["--seeds", "1", "steps=500"])
    args = parse_args_with_overrides(ap, ["steps=1", "--seeds", "4", "lr=2", "--", "x=1"])
    assert args.seeds == [4] and args.overrides == ["steps=1", "lr=2", "x=1"]
    assert parse_args_with_overrides(ap, ["--seeds", "5"]).overrides == []


@pytest.mark.parametrize("fails", [False, True])
def test_the_command_ends_its_process_group(tmp_path, monkeypatch, fails, capsys):
    """Under torchrun the command leaves no process group to the interpreter's exit, which sometimes
    aborted a finished gloo rank; after an error it does not wait at a barrier for the other ranks."""
    import torch.distributed as dist

    import fdistill.cli

    def run(args):
        if fails:
            raise ValueError("bad config")

    monkeypatch.setattr(fdistill.cli, "_distill", run)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main(["distill"]) == (2 if fails else 0)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
