"""Two independent digits feature spaces: the shipped CNN ("classifier") and a residual CNN of another
architecture and seed ("classifier_b"), usable wherever image metrics are computed."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tolerances import assert_close_up_to_rounding

from fdistill.data import load_digits_tensors
from fdistill.eval.fid import (
    ALL_FEATURE_SPACES,
    FEATURE_SPACES,
    extract_features,
    get_feature_extractor,
    resolve_classifier,
)
from fdistill.eval.pipeline_eval import image_metrics
from fdistill.models.classifier import (
    ASSET_NAME_B,
    DigitsClassifier,
    ResidualDigitsClassifier,
    build_classifier,
    default_classifier_path,
    load_digits_classifier,
)

EVAL_TEACHER = Path(__file__).resolve().parents[1] / "scripts" / "eval_teacher.py"


def load_script(name: str):
    """A script of scripts/ as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, EVAL_TEACHER.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_second_classifier_ships_with_its_own_arch_and_is_accurate():
    a, b = load_digits_classifier(), load_digits_classifier(default_classifier_path(ASSET_NAME_B))
    assert type(a) is DigitsClassifier and type(b) is ResidualDigitsClassifier and b.arch == "resnet"
    assert b.feature_dim != a.feature_dim
    x, y = load_digits_tensors("test")
    with torch.no_grad():
        assert (b(x).argmax(1) == y).float().mean() >= 0.97
    assert not any(p.requires_grad for p in b.parameters()) and not b.training
    assert resolve_classifier("classifier_b") is resolve_classifier("classifier_b")  # loaded once per process


def test_feature_spaces_differ_and_unknown_names_raise():
    x, _ = load_digits_tensors("test")
    fa, fb = extract_features(x[:50], "classifier"), extract_features(x[:50], get_feature_extractor("classifier_b"))
    assert fa.shape == (50, 128) and fb.shape == (50, 64)
    assert (extract_features(x[:50]) == fa).all()  # None is still the shipped "classifier"
    for bad in (lambda: get_feature_extractor("classifier_c"), lambda: resolve_classifier("dino"),
                lambda: image_metrics(x[:20], feature_spaces=("classifier", "nope"))):
        with pytest.raises(ValueError, match="classifier_b"):  # the message lists the valid names
            bad()


def test_image_metrics_reports_each_requested_space():
    x_train, _ = load_digits_tensors("train")
    images, reference = x_train[:200], x_train[200:700]
    plain = image_metrics(images, reference=reference)
    both = image_metrics(images, reference=reference, feature_spaces=tuple(FEATURE_SPACES))
    assert "by_features" not in plain  # the default keeps today's report shape
    assert set(both["by_features"]) == {"classifier", "classifier_b"}
    for space in both["by_features"].values():
        assert set(space) == {"fid", "kid", "precision", "recall", "density", "coverage"} and space["fid"] > 0
    assert both["by_features"]["classifier"]["fid"] == pytest.approx(plain["fid"], rel=1e-9)
    assert both["fid"] == pytest.approx(plain["fid"], rel=1e-9)
    assert both["by_features"]["classifier_b"]["fid"] != pytest.approx(plain["fid"], rel=1e-3)


def test_files_without_arch_load_as_cnn_and_arch_roundtrips(tmp_path):
    old = DigitsClassifier(width=8, feature_dim=16).eval()
    # A file written before the "arch" field existed: config metadata without it.
    save_file({k: v.contiguous() for k, v in old.state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata={"config": json.dumps(old.config)})
    loaded = load_digits_classifier(tmp_path / "old.safetensors")
    assert type(loaded) is DigitsClassifier and loaded.config == old.config

    torch.manual_seed(0)
    new = ResidualDigitsClassifier(width=8, feature_dim=16).eval()
    new.save(tmp_path / "b.safetensors")
    back = load_digits_classifier(tmp_path / "b.safetensors")
    x = torch.randn(3, 1, 16, 16)
    assert type(back) is ResidualDigitsClassifier and back.config == new.config
    assert_close_up_to_rounding(back.features(x), new.features(x))
    with pytest.raises(ValueError, match="resnet"):
        build_classifier("vit")


def test_eval_teacher_update_record_adds_both_spaces_and_keeps_the_rest(tiny_digits_teacher, tmp_path):
    from fdistill.teachers import export_teacher_asset

    asset = tmp_path / "digits_teacher.safetensors"
    export_teacher_asset(tiny_digits_teacher, asset, metrics={"steps": 2, "train_wall_s": 1.0})
    weights = asset.read_bytes()
    module = load_script("eval_teacher")
    module.main(["digits", "--run", str(asset), "--update-record", "--num-samples", "20", "--steps", "2",
                 "--threads", "1", "--reports", str(tmp_path / "reports")])
    metrics = json.loads(asset.with_suffix(".json").read_text())["metrics"]
    assert metrics["steps"] == 2 and metrics["train_wall_s"] == 1.0  # training summary kept
    assert set(metrics["by_features"]) == set(ALL_FEATURE_SPACES) and metrics["seed"] == 0
    assert metrics["by_features"]["classifier"]["fid"] == pytest.approx(metrics["fid_classifier_features"])
    reference = metrics["reference"]  # what `fdistill eval` reads instead of sampling the teacher again
    assert reference["seeds"] == [0, 1, 2] and reference["num_samples"] == 20 and reference["steps"] == 2
    assert set(reference["by_features"]) == set(ALL_FEATURE_SPACES)
    assert asset.read_bytes() == weights  # only the record changes
    with pytest.raises(SystemExit, match="update-record"):
        module.main(["digits", "--run", str(tiny_digits_teacher), "--update-record"])


def test_divergence_study_pairs_each_model_with_reverse_kl_on_the_same_seed():
    study = load_script("digits_divergences")

    def runs(fids):  # seed -> FID in every space
        return {"runs": {s: {"by_features": {sp: {"fid": f} for sp in FEATURE_SPACES}} for s, f in fids.items()}}

    report = {"models": {"teacher": runs({"all": 1.0}), "reverse_kl": runs({"0": 1.2, "1": 1.6, "2": 1.4}),
                         "forward_kl": runs({"0": 1.1, "1": 1.4}), "jensen_shannon": runs({"5": 1.0})}}
    out = study.paired(report)
    assert set(out) == {"forward_kl"} and out["forward_kl"]["seeds"] == [0, 1]  # no shared seed: no row
    d = out["forward_kl"][next(iter(FEATURE_SPACES))]
    assert d["per_seed"] == pytest.approx([-0.1, -0.2]) and d["mean"] == pytest.approx(-0.15)
    assert d["std"] == pytest.approx(0.0707107, rel=1e-5)


def test_divergence_study_command_names_every_run_whichever_worker_made_it():
    from fdistill.training.config import parse_args_with_overrides

    study = load_script("digits_divergences")
    report = {"settings": {"config": "configs/digits_js.yaml", "overrides": ["critic_steps=4"], "steps": 7,
                           "num_samples": 30, "teacher_steps": 2, "feature_spaces": list(FEATURE_SPACES)},
              "seeds": [1, 2], "models": {"teacher": {}, "ode_regression": {}, "reverse_kl": {}, "alpha:1.5": {}}}
    cmd = study.study_command(report).split()
    assert cmd[:2] == ["python", "scripts/digits_divergences.py"] and cmd[-1] == "critic_steps=4"
    args = parse_args_with_overrides(study.build_parser(), cmd[2:])  # the script's own parser reads it back
    assert args.divergences == ["reverse_kl", "alpha:1.5"] and args.seeds == [1, 2]
    assert (args.steps, args.num_samples, args.teacher_steps) == (7, 30, 2)
    assert args.config == "configs/digits_js.yaml" and args.overrides == ["critic_steps=4"]
