"""Reading the project's own files (weights, search checkpoints) without running their code.

``torch.load(weights_only=True)`` unpickles tensors and plain data only; a file that asks for
anything else (a function to call, a class to build) is refused, not run.  Such a file is not
"corrupted": it is reported as not a file of ours, with what it asked for.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

__all__ = ["load_data"]


def load_data(path: Path, kind: str, error: type[Exception]) -> Any:
    """``torch.load(path, weights_only=True)``; any failure raises ``error`` with one line that
    names ``path`` and says whether it was refused (it names code to run) or is damaged."""
    import torch

    try:
        with warnings.catch_warnings():  # torch's advice to retry with weights_only=False stays off
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        asked = re.search(r"(?i)unsupported(?: global:)? GLOBAL (\S+)", str(e))
        if asked:  # it names code to run: never run, whatever it is
            raise error(f"{path} is not a {kind} (refused to unpickle: it asks to load {asked.group(1)})") from None
        raise error(f"{path} is not a {kind} (unreadable as one)") from None
    except Exception as e:  # noqa: BLE001 - a damaged file raises many kinds
        raise error(f"corrupted {kind} {path}: {type(e).__name__}") from None
