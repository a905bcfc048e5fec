"""Prompt handling of the text-conditional fdistill pipeline (HiARPipeline)."""

from __future__ import annotations


def negative_prompts(negative_prompt: str | list[str] | None, batch_size: int) -> list[str]:
    """One negative prompt per prompt: ``None`` → "", a string repeated, or a list of ``batch_size``."""
    negative = negative_prompt or ""
    negative = batch_size * [negative] if isinstance(negative, str) else list(negative)
    if len(negative) != batch_size:
        raise ValueError(f"negative_prompt has {len(negative)} entries for {batch_size} prompts: "
                         "pass one per prompt, or one string")
    return negative
