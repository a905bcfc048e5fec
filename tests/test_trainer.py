"""The shared loop's pieces (training/trainer.py)."""

import pytest
import torch

from fdistill.training.trainer import Draw, step_seed


def test_draw_gives_each_shard_its_rows_of_one_global_batch():
    def shard(i, n):
        return Draw(torch.Generator().manual_seed(step_seed(0, 3, 1)), 8, i, n, torch.device("cpu"))

    whole = shard(0, 1)
    full_x, full_y = whole.randn(2), whole(lambda n, g: torch.randint(10, (n,), generator=g))
    parts = [shard(i, 4) for i in range(4)]
    xs = [p.randn(2) for p in parts]
    ys = [p(lambda n, g: torch.randint(10, (n,), generator=g)) for p in parts]
    assert torch.equal(torch.cat(xs), full_x) and torch.equal(torch.cat(ys), full_y)
    assert all(x.shape == (2, 2) for x in xs)
    with pytest.raises(ValueError, match="global batch 6 does not split into 4 equal shards"):
        Draw(torch.Generator(), 6, 0, 4, torch.device("cpu")).randn(2)


def test_step_seed_separates_steps_and_updates():
    seeds = {step_seed(s, t, k) for s in range(3) for t in range(50) for k in range(6)}
    assert len(seeds) == 3 * 50 * 6


def test_truncate_metrics_drops_rows_after_the_checkpoint_and_a_cut_line(tmp_path):
    from fdistill.training.checkpoint import read_metrics, truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n{"step": 3, "loss": 0.125}\n{"step": 4, "lo')
    assert [r["step"] for _, r in read_metrics(path)] == [1, 2, 3]  # the line a kill cut in half is dropped
    truncate_metrics(path, 2)
    assert path.read_text() == '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n'
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_every_config_section_default_is_its_types_default():
    """A section given in part (``optim.lr_generator=…``) keeps the other settings' defaults only if the
    section's default instance is its type's default: a method's own defaults need a subclass."""
    import dataclasses

    from fdistill.training.distill_config import DistillConfig
    from fdistill.training.hiar_config import HiARConfig
    from fdistill.training.teacher import TeacherConfig
    from fdistill.training.toy import GMMConfig

    def default(f):
        try:
            return f.default_factory()
        except ValueError:  # a section that must be given (e.g. the teacher's data.name)
            return None

    def sections(cls):
        for f in dataclasses.fields(cls):
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(default(f)):
                yield cls, f
                yield from sections(type(default(f)))

    found = list(sections(DistillConfig)) + list(sections(HiARConfig)) + list(sections(TeacherConfig)) + \
        list(sections(GMMConfig))
    assert found
    for cls, f in found:
        value = f.default_factory()
        assert value == type(value)(), f"{cls.__name__}.{f.name}: default differs from {type(value).__name__}()"
