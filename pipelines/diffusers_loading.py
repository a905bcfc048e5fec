"""Let diffusers' own ``DiffusionPipeline.from_pretrained`` load fdistill pipeline folders.

diffusers finds a pipeline class by the name in ``model_index.json`` inside the ``diffusers``
module, so a saved ``FDistillPipeline`` or ``HiARPipeline`` folder needs one of two things:

- ``import fdistill.pipelines`` first. This registers our pipeline classes on the ``diffusers``
  module, and then ``DiffusionPipeline.from_pretrained(folder)`` works as for any diffusers pipeline.
- Or diffusers' custom-pipeline route, with no import first:
  ``DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder, trust_remote_code=True)``.
  It runs the ``pipeline.py`` that ``save_pretrained`` writes into the folder, which is one import
  line from the installed fdistill package.

The pipelines' own ``from_pretrained`` needs neither.
"""

from __future__ import annotations

import os
from pathlib import Path

import diffusers

from fdistill.io import atomic_write_text

LOADER_FILE = "pipeline.py"


def register_with_diffusers(*classes: type) -> None:
    """Make ``getattr(diffusers, cls.__name__)`` find each class; never replaces a diffusers name."""
    for cls in classes:
        try:
            existing = getattr(diffusers, cls.__name__)
        except AttributeError:
            existing = None
        if existing is None:
            setattr(diffusers, cls.__name__, cls)


def write_loader_module(save_directory: str | os.PathLike, cls: type) -> Path:
    """Write ``pipeline.py`` (import of ``cls`` from the installed package) next to ``model_index.json``."""
    path = Path(save_directory) / LOADER_FILE
    text = (f'"""diffusers custom-pipeline entry point: DiffusionPipeline.from_pretrained(folder, '
            f'custom_pipeline=folder, trust_remote_code=True). Needs the fdistill package installed."""\n\n'
            f"from {cls.__module__} import {cls.__name__}  # noqa: F401\n")
    return atomic_write_text(path, text)


class SavesLoaderModule:
    """Mixin for a ``DiffusionPipeline``: ``save_pretrained`` also writes ``pipeline.py``."""

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        # written first, so that ``push_to_hub=True`` uploads it with the rest of the folder
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory {str(save_directory)!r} should be a directory, not a file")
        os.makedirs(save_directory, exist_ok=True)
        write_loader_module(save_directory, type(self))
        super().save_pretrained(save_directory, *args, **kwargs)
