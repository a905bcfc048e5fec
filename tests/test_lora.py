"""LoRA students and fake scores on one shared frozen base, their two exports, and the memory planner."""

import json

import diffusers
import pytest
import torch
from safetensors.torch import load_file

from fdistill.cli import main
from fdistill.lora import add_lora, lora_parameter_count, merged_copy, shared_copy
from fdistill.memory import KNOWN_MODELS, count_parameters, denoiser_on_meta, plan_memory
from fdistill.models.tiny_pipelines import tiny_pipeline

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_lora_view_shares_the_base_and_merges_to_the_same_network():
    base = tiny_pipeline("sd3").transformer.requires_grad_(False)
    view = add_lora(shared_copy(base), 4)
    trained = [p for p in view.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trained) == lora_parameter_count(base, 4) > 0
    assert view.transformer_blocks[0].attn.to_q.base_layer.weight is base.transformer_blocks[0].attn.to_q.weight
    for name, p in view.named_parameters():
        if "lora_B" in name:
            p.data.normal_(generator=torch.Generator().manual_seed(0))
    merged = merged_copy(base, view)
    args = dict(hidden_states=torch.randn(2, 16, 8, 8), timestep=torch.full((2,), 500.0),
                encoder_hidden_states=torch.randn(2, 272, 64), pooled_projections=torch.randn(2, 64))
    with torch.no_grad():
        a, b, c = view(**args).sample, merged(**args).sample, base(**args).sample
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (a - c).abs().max() > 1e-2  # the adapter changed the network, the base did not move


def test_lora_student_exports_merged_and_as_a_stock_lora(tmp_path):
    teacher = tmp_path / "sd3"
    tiny_pipeline("sd3").save_pretrained(teacher)
    out = tmp_path / "run"
    assert main(["distill", "teacher.kind=pipeline", f"teacher.path={teacher}", "data.name=teacher_samples",
                 "data.prompts=[a cat, a red car]", "data.num_samples=4", "data.sample_steps=2", "warmup.steps=1",
                 "warmup.ode_pairs=4", "warmup.ode_steps=2", "warmup.batch_size=2", "steps=2", "batch_size=2",
                 "critic_steps=1", "checkpoint_every=1", "progress=false", "student.lora_rank=4",
                 "fake_score.lora_rank=4", "gradient_checkpointing=true", "optim.lr_generator=1e-2",
                 f"output_dir={out}"]) == 0
    # checkpoints hold the adapters, not the shared frozen base
    student_state = load_file(str(out / "checkpoint-3" / "student.safetensors"))
    assert student_state and all("lora" in k for k in student_state if "weight" in k)
    call = json.loads((out / "pipeline" / "fdistill.json").read_text())["stock_call"]
    latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    merged = quiet(diffusers.DiffusionPipeline.from_pretrained(out / "pipeline"))
    a = merged("a cat", latents=latents, output_type="latent", **call).images
    pipe = quiet(diffusers.DiffusionPipeline.from_pretrained(teacher))  # the LCM-LoRA convention
    pipe.load_lora_weights(out / "lora")
    pipe.scheduler = type(pipe.scheduler).from_pretrained(out / "lora", subfolder="scheduler")
    b = pipe("a cat", latents=latents, output_type="latent", **call).images
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    plain = quiet(diffusers.DiffusionPipeline.from_pretrained(teacher))
    plain.scheduler = pipe.scheduler
    assert (plain("a cat", latents=latents, output_type="latent", **call).images - a).abs().max() > 1e-4


def test_lora_of_a_network_without_attention_is_refused():
    with pytest.raises(ValueError, match="no linear layer named like"):
        add_lora(shared_copy(diffusers.UNet2DModel(block_out_channels=(8, 8), norm_num_groups=4,
                                                   down_block_types=("DownBlock2D",) * 2,
                                                   up_block_types=("UpBlock2D",) * 2, add_attention=False)), 4)


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux", "pixart", "dit"])
def test_planner_counts_equal_the_instantiated_models(tmp_path, family):
    folder = tmp_path / family
    pipe = tiny_pipeline(family)
    pipe.save_pretrained(folder)
    _, meta = denoiser_on_meta(folder)
    real = getattr(pipe, "unet", None) or pipe.transformer
    assert count_parameters(meta) == count_parameters(real)
    view = add_lora(shared_copy(real.requires_grad_(False)), 8)
    assert lora_parameter_count(meta, 8) == sum(p.numel() for p in view.parameters() if p.requires_grad)


def test_planner_prices_every_strategy():
    _, model = denoiser_on_meta("sd15")
    n, lora = count_parameters(model), lora_parameter_count(model, 64)
    assert set(KNOWN_MODELS) >= {"sd15", "sdxl-base", "sd3-medium", "flux1-dev", "pixart-sigma", "wan2.1-t2v-1.3b",
                                 "wan2.1-t2v-14b"}
    rows = {r.strategy: r for r in plan_memory(model, ranks=4, lora_rank=64)}
    full = rows["full"]
    assert (full.weights, full.gradients, full.optimizer) == (3 * 4 * n, 2 * 4 * n, 2 * 8 * n)
    assert rows["full, bf16 teacher"].weights == (2 + 2 * 4) * n
    assert rows["LoRA r=64, bf16 base"].total == 2 * n + 2 * lora * 16
    sharded = rows["full, FSDP × 4"]  # the frozen teacher stays whole on every rank, as parallel=fsdp holds it
    assert (sharded.weights, sharded.gradients, sharded.optimizer) == (4 * n + 2 * 4 * n // 4, 2 * 4 * n // 4,
                                                                       2 * 8 * n // 4)
    assert not any("LoRA" in s and "FSDP" in s for s in rows)  # LoRA trains under DDP


def test_plan_memory_command(tmp_path, capsys):
    assert main(["plan-memory", "--teacher", "flux1-dev", "--ranks", "8", "--output", str(tmp_path / "p.json")]) == 0
    text = capsys.readouterr().out
    assert "11.901 B parameters" in text and "FSDP × 8" in text
    report = json.loads((tmp_path / "p.json").read_text())
    assert {r["strategy"]: r["fits"] for r in report["rows"]}["full"] is False  # 3 × 12 B parameters in fp32
    assert main(["plan-memory", "--teacher", "nope"]) == 2
    assert "known: flux1-dev" in capsys.readouterr().err
