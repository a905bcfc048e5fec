"""The door: a bad override, argument, setting or weights file stops the command with one line that names it
(exit 2), before anything is written; a resume keeps the run's history."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fdistill.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SHELL_SPLIT = ["data.prompts=[a", "cat,", "a", "red", "car]"]


def error_line(capsys, command: str) -> str:
    """The one line a failed command printed, without its ``fdistill <command>: error: `` prefix."""
    err = capsys.readouterr().err.strip()
    prefix = f"fdistill {command}: error: "
    assert "\n" not in err and err.startswith(prefix), err
    return err[len(prefix):]


def usage_error(capsys, argv: list[str]) -> str:
    """The error line of an argument argparse refuses (exit 2)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def truncated(source: Path, target: Path) -> Path:
    """``target``: the first half of ``source``'s bytes (a download or copy cut short)."""
    data = source.read_bytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data[:len(data) // 2])
    return target


# -- overrides the shell split (item 3) -------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["distill", *SHELL_SPLIT], ["distill", "steps=2", "--resume", "latest", *SHELL_SPLIT],
                                  ["distill", "--resume", "latest", *SHELL_SPLIT, "steps=2"]])
def test_a_list_split_by_the_shell_names_the_key_and_the_quoting(argv, capsys):
    assert main(argv) == 2
    assert error_line(capsys, "distill") == (
        "override data.prompts: the shell split its value into 5 words ['[a', 'cat,', 'a', 'red', 'car]']; "
        "quote the whole value: data.prompts='[a cat, a red car]'")


def test_an_unquoted_list_on_a_real_shell_is_one_line():
    res = subprocess.run(f"{sys.executable} -m fdistill.cli distill data.prompts=[a cat, a red car]", shell=True,
                         capture_output=True, text=True, timeout=300, executable="/bin/bash")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "fdistill distill: error: override data.prompts: the shell split its value into 5 words "
        "['[a', 'cat,', 'a', 'red', 'car]']; quote the whole value: data.prompts='[a cat, a red car]'"]


def test_a_value_that_is_not_yaml_names_the_key(capsys):
    assert main(["distill", "data.prompts=[a"]) == 2
    assert error_line(capsys, "distill").startswith("override data.prompts: '[a' is not a value (expected ',' or ']'")


# -- truncated or corrupt weights (item 4) ----------------------------------------------------------------
def tiny_image_pipeline(folder: Path) -> Path:
    from diffusers import UNet2DModel

    from fdistill.pipelines import export_pipeline
    from fdistill.schedules import EDMSchedule

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=11)
    export_pipeline(unet, EDMSchedule(), folder)
    return folder


def tiny_video_pipeline(folder: Path, labels: bool = True) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from hiar_common import TINY

    from fdistill.models import CausalWanTransformer3DModel
    from fdistill.pipelines import HiARPipeline, LabelEmbeddingModel

    torch.manual_seed(0)
    transformer = CausalWanTransformer3DModel(**{**TINY, "in_channels": 1, "out_channels": 1}).eval()
    HiARPipeline(transformer, FlowMatchEulerDiscreteScheduler(shift=2.0),
                 label_embedding=LabelEmbeddingModel(10, 32, 1) if labels else None, num_frames=4, height=8, width=8,
                 frames_per_block=2, denoising_steps=[1000, 500]).save_pretrained(folder)
    return folder


def tiny_student_file(path: Path) -> Path:
    from hiar_common import TINY

    from fdistill.models import CausalWanTransformer3DModel
    from fdistill.pipelines import export_hiar_student
    from fdistill.teachers import LabelEmbedding

    torch.manual_seed(0)
    model = CausalWanTransformer3DModel(**{**TINY, "in_channels": 1, "out_channels": 1}).eval()
    meta = {"shift": 2.0, "frames_per_block": 2, "denoising_steps": [1000, 500], "context": "next", "num_frames": 4,
            "height": 8, "width": 8, "window": None, "order": "hierarchical"}
    return export_hiar_student(model, LabelEmbedding(10, 32), meta, path)


def test_a_truncated_teacher_asset_is_named_and_nothing_is_written(tmp_path, capsys):
    from fdistill.teachers import DIGITS_TEACHER, load_teacher

    bad = truncated(DIGITS_TEACHER, tmp_path / "teacher.safetensors")
    shutil.copy(DIGITS_TEACHER.with_suffix(".json"), tmp_path / "teacher.json")
    with pytest.raises(ValueError, match="teacher.safetensors' is truncated or corrupt"):
        load_teacher(bad)
    out = tmp_path / "run"
    assert main(["distill", "--config", str(ROOT / "configs" / "digits_js.yaml"), f"teacher.path={bad}",
                 f"output_dir={out}"]) == 2
    assert error_line(capsys, "distill").startswith(f"{str(bad)!r} is truncated or corrupt, not a complete "
                                                    "safetensors file (Error while deserializing header")
    assert not out.exists()


def test_a_truncated_hiar_student_file_is_named_and_nothing_is_written(tmp_path, capsys):
    from fdistill.pipelines import load_hiar_student

    bad = truncated(tiny_student_file(tmp_path / "good.safetensors"), tmp_path / "hiar_student.safetensors")
    with pytest.raises(ValueError, match="hiar_student.safetensors' is truncated or corrupt"):
        load_hiar_student(bad)
    assert main(["sample-video", str(bad), "--label", "3", "--output", str(tmp_path / "v.gif")]) == 2
    assert error_line(capsys, "sample-video").startswith(f"{str(bad)!r} is truncated or corrupt")
    assert not (tmp_path / "v.gif").exists()


def test_truncated_pipeline_weights_are_named_and_nothing_is_written(tmp_path, capsys):
    image = tiny_image_pipeline(tmp_path / "image")
    weights = image / "unet" / "diffusion_pytorch_model.safetensors"
    truncated(weights, weights)
    report = tmp_path / "report.json"
    assert main(["eval", "--pipeline", str(image), "--num-samples", "4", "--output", str(report)]) == 2
    assert error_line(capsys, "eval").startswith(f"{str(weights)!r} is truncated or corrupt")
    assert not report.exists()

    video = tiny_video_pipeline(tmp_path / "video")
    weights = video / "transformer" / "diffusion_pytorch_model.safetensors"
    truncated(weights, weights)
    for argv in (["sample-video", str(video), "--output", str(tmp_path / "v.npy")], ["eval-video", str(video)]):
        assert main(argv) == 2
        assert error_line(capsys, argv[0]).startswith(f"{str(weights)!r} is truncated or corrupt")
    assert not (tmp_path / "v.npy").exists()


# -- what the video commands take (item 5) ----------------------------------------------------------------
def test_sample_video_takes_a_hiar_student_file(tmp_path, capsys):
    from fdistill.pipelines import load_hiar_student

    student = tiny_student_file(tmp_path / "hiar_student.safetensors")
    npy = tmp_path / "v.npy"
    assert main(["sample-video", str(student), "--label", "3", "--seed", "1", "--output", str(npy)]) == 0
    pipe = load_hiar_student(student)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(labels=[3], generator=torch.Generator().manual_seed(1), output_type="pt").frames
    np.testing.assert_allclose(np.load(npy), expected.permute(0, 1, 3, 4, 2).numpy(), atol=1e-6)


def test_the_video_commands_name_what_they_were_given_and_what_they_take(tmp_path, capsys):
    image = tiny_image_pipeline(tmp_path / "image")
    takes = ("a HiARPipeline folder (save_pretrained), a diffusers Wan2.1 folder or a HiAR student .safetensors "
             "(distill-video's hiar_student.safetensors)")
    assert main(["sample-video", str(image), "--output", str(tmp_path / "v.gif")]) == 2
    assert error_line(capsys, "sample-video") == f"{str(image)!r} is a FDistillPipeline folder; sample-video expects {takes}"
    assert main(["eval-video", str(image)]) == 2
    assert error_line(capsys, "eval-video") == (f"{str(image)!r} is a FDistillPipeline folder; eval-video expects a "
                                                f"video file (.npy, .gif, .mp4) or {takes}")
    assert main(["sample-video", str(tmp_path / "missing"), "--output", str(tmp_path / "v.gif")]) == 2
    assert error_line(capsys, "sample-video") == f"{str(tmp_path / 'missing')!r} does not exist; sample-video expects {takes}"
    prompted = tiny_video_pipeline(tmp_path / "prompted", labels=False)
    assert main(["eval-video", str(prompted)]) == 2
    assert error_line(capsys, "eval-video") == (
        f"{str(prompted)!r} is a HiARPipeline folder without a label embedding (prompted); eval-video samples "
        "label-conditioned pipelines: sample it with sample-video --prompt and evaluate the video file")
    assert not (tmp_path / "v.gif").exists()


# -- settings and arguments refused at the door (item 6) --------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["warmup.steps=-1"], "config.warmup: warmup.steps must be >= 0 (0: no warm-up), got -1"),
    (["objective.t_shift=nan"], "config.objective.t_shift: 'nan' is not a finite number"),
    (["objective.t_shift=.inf"], "config.objective.t_shift: inf is not a finite number"),
    (["optim.lr_generator=-1"], "config.optim: optim.lr_generator must be >= 0 (0: that network stays as it is), "
                                "got -1.0"),
    (["optim.beta2=1"], "config.optim: optim.beta2 must be in [0, 1), got 1.0"),
    (["steps=-5"], "config: steps must be >= 0, got -5"),
    (["steps=0", "warmup.steps=0", "critic_warmup_steps=0"],
     "config: steps=0 with warmup.steps=0 and critic_warmup_steps=0 trains nothing: set steps >= 1, or warmup.steps "
     ">= 1 for a warm-up-only run"),
])
def test_bad_settings_stop_at_the_door_naming_the_key_and_the_range(overrides, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["distill", "--config", str(ROOT / "configs" / "digits_js.yaml"), *overrides, f"output_dir={out}"]) == 2
    assert error_line(capsys, "distill") == message
    assert not out.exists()


def test_steps_zero_is_a_warm_up_only_run():
    from fdistill.training.config import load_config
    from fdistill.training.distill_config import DistillConfig

    config = load_config(DistillConfig, ROOT / "configs" / "digits_js.yaml", ["steps=0", "critic_warmup_steps=0"])
    assert config.warmup.steps > 0 and config.total_steps == config.warmup.steps


CONFIGS = [("fdistill.training.distill_config", "DistillConfig", "digits_js.yaml"),
           ("fdistill.training.hiar_config", "HiARConfig", "moving_digits_hiar.yaml"),
           ("fdistill.training.teacher", "TeacherConfig", "digits_teacher.yaml"),
           ("fdistill.training.toy", "GMMConfig", None)]


@pytest.mark.parametrize("module, name, yaml_file", CONFIGS)
def test_every_float_setting_refuses_nan_and_inf(module, name, yaml_file):
    import importlib

    from fdistill.training.config import ConfigError, config_keys, load_config

    cls = getattr(importlib.import_module(module), name)
    path = None if yaml_file is None else ROOT / "configs" / yaml_file
    keys = [key for key, tp, _ in config_keys(cls) if tp.split(" | ")[0] == "float"]
    assert keys
    for key in keys:
        for value, shown in (("nan", "'nan'"), (".inf", "inf"), ("-.inf", "-inf")):
            with pytest.raises(ConfigError, match=rf"^config\.{key}: {shown} is not a finite number$"):
                load_config(cls, path, [f"{key}={value}"])


@pytest.mark.parametrize("argv, message", [
    (["eval", "--pipeline", "p", "--num-samples", "0"], "fdistill eval: error: argument --num-samples: must be >= 1, got 0"),
    (["eval", "--pipeline", "p", "--batch-size", "0"], "fdistill eval: error: argument --batch-size: must be >= 1, got 0"),
    (["sample-video", "p", "--output", "v.gif", "--frames-per-block", "0"],
     "fdistill sample-video: error: argument --frames-per-block: must be >= 1, got 0"),
    (["eval-video", "p", "--num-videos", "-1"], "fdistill eval-video: error: argument --num-videos: must be >= 1, got -1"),
])
def test_bad_counts_are_refused_with_the_flag_and_the_range(argv, message, capsys):
    assert usage_error(capsys, argv) == message


def test_resume_names_latest_when_the_checkpoint_does_not_exist(tmp_path, capsys):
    assert main(["distill", "--resume", "latest2", f"output_dir={tmp_path / 'run'}"]) == 2
    assert error_line(capsys, "distill") == (f"--resume 'latest2' is neither 'latest' (the newest checkpoint of "
                                             f"{str(tmp_path / 'run')!r}) nor an existing checkpoint folder")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command, module, name, yaml_file", [
    ("distill", *CONFIGS[0]), ("distill-video", *CONFIGS[1]), ("train-teacher", *CONFIGS[2])])
def test_each_trainers_help_example_is_a_valid_override(command, module, name, yaml_file):
    import importlib

    from fdistill.training.config import load_config

    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    help_text = next(a.help for a in subcommands[command]._actions if a.dest == "overrides")
    example = help_text.split("e.g. ", 1)[1].split()
    assert example and all("=" in word for word in example)
    load_config(getattr(importlib.import_module(module), name), ROOT / "configs" / yaml_file, example)


# -- a resume keeps the run's history (item 7) ------------------------------------------------------------
def test_a_resume_that_changes_settings_is_refused_unless_asked_and_then_kept(tiny_digits_teacher, tmp_path, capsys):
    config = tmp_path / "fkl.yaml"
    out = tmp_path / "run"
    config.write_text(yaml.safe_dump({
        "teacher": {"path": str(tiny_digits_teacher)},
        "warmup": {"steps": 1, "ode_pairs": 8, "ode_steps": 2, "batch_size": 4},
        "steps": 1, "batch_size": 4, "critic_steps": 1, "checkpoint_every": 1, "log_every": 1, "export": False,
        "progress": False, "output_dir": str(out), "objective": {"divergence": "forward_kl"}}))
    assert main(["distill", "--config", str(config)]) == 0
    capsys.readouterr()
    first = (out / "config.yaml").read_text()

    assert main(["distill", "--config", str(config), "--resume", "latest", "objective.divergence=js",
                 "optim.lr_generator=2e-5", "steps=2"]) == 2
    assert error_line(capsys, "distill") == (
        f"--resume {out / 'checkpoint-2'} would change the run's settings ({out / 'config.yaml'}): "
        "objective.divergence: 'forward_kl' → 'js'; optim.lr_generator: 1e-05 → 2e-05. Resume with the saved "
        "settings, or add resume_changes=true to run on with the new ones (the old ones are kept as "
        "config-<step>.yaml)")
    assert (out / "config.yaml").read_text() == first and not (out / "checkpoint-3").exists()

    # longer runs are how a run is extended: not a change
    assert main(["distill", "--config", str(config), "--resume", "latest", "steps=2", "checkpoint_every=5"]) == 0
    assert (out / "checkpoint-3").is_dir() and not list(out.glob("config-*.yaml"))
    assert main(["distill", "--config", str(config), "--resume", "latest", "objective.divergence=js", "steps=3",
                 "resume_changes=true"]) == 0
    kept = yaml.safe_load((out / "config-3.yaml").read_text())
    latest = yaml.safe_load((out / "config.yaml").read_text())
    assert kept["objective"]["divergence"] == "forward_kl" and kept["steps"] == 2
    assert latest["objective"]["divergence"] == "js" and latest["steps"] == 3 and (out / "checkpoint-4").is_dir()


def test_a_setting_added_after_the_run_was_saved_is_not_a_change_at_its_default(tmp_path):
    """A run saved before a setting existed resumes under a newer fdistill unless the setting is moved off its
    default (found resuming a teacher run saved before ``parallel`` was added)."""
    from fdistill.training.config import config_changes, load_config, save_config
    from fdistill.training.distill_config import DistillConfig

    config = DistillConfig()
    save_config(config, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["parallel"], saved["objective"]["divergence"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert config_changes(config, tmp_path / "config.yaml") == {}
    moved = load_config(DistillConfig, None, ["parallel=fsdp"])
    assert config_changes(moved, tmp_path / "config.yaml") == {"parallel": ("<absent>", "fsdp")}


def test_the_discriminator_levels_moved_from_teacher_to_discriminator_are_named():
    from fdistill.training.config import ConfigError, load_config
    from fdistill.training.distill_config import DistillConfig

    with pytest.raises(ConfigError, match="renamed setting: teacher.feature_modules → discriminator.feature_modules"):
        load_config(DistillConfig, None, ["teacher.feature_modules=[mid_block]"])
    with pytest.raises(ConfigError, match="renamed setting: teacher.feature_source → discriminator.feature_source"):
        load_config(DistillConfig, None, ["teacher.feature_source=fake"])
    assert load_config(DistillConfig, None, ["discriminator.feature_modules=[mid_block]"]).discriminator.feature_modules \
        == ["mid_block"]


def test_a_run_saved_before_a_rename_resumes_under_the_new_names(tmp_path):
    from fdistill.training.config import config_changes, load_config, save_config
    from fdistill.training.distill_config import DistillConfig

    config = load_config(DistillConfig, None, ["discriminator.feature_modules=[mid_block]"])
    save_config(config, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    saved["teacher"]["feature_modules"] = saved["discriminator"].pop("feature_modules")  # as written before
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert config_changes(config, tmp_path / "config.yaml") == {}
    moved = load_config(DistillConfig, None, ["discriminator.feature_modules=[down_blocks.0]"])
    assert config_changes(moved, tmp_path / "config.yaml") == {
        "discriminator.feature_modules": (["mid_block"], ["down_blocks.0"])}
