"""Telling model files apart by their content, and reading them without executing anything.

A file's kind comes from its first bytes, never from its name alone: a zip archive or a pickle
stream is what ``torch.save`` writes (``.pt``, ``.pth``, ``.ckpt``, ``.bin``); safetensors
starts with its header's length and a JSON object; a STAC item is JSON; an ONNX model is a
protobuf message (its name ends in ``.onnx``, or its first byte is the ``ir_version`` field's
tag).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import torch

from tileseg.errors import ModelError
from tileseg.models.metadata import unreadable

logger = logging.getLogger(__name__)

FileKind = Literal["torch", "safetensors", "json", "onnx"]

# a model description is a few kB; anything far larger is not one (or a bomb)
MAX_JSON_BYTES = 16 << 20
_SAFETENSORS_MAX_HEADER = 100 << 20


def sniff(path: Path) -> FileKind:
    """The kind of model file at ``path``, from its first bytes; a :class:`ModelError` naming
    the file when it is none tileseg reads."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = f.seek(0, 2)
    except OSError as exc:
        raise unreadable(path, exc) from exc
    if not head:
        raise ModelError(f"{path}: the model file is empty; copy or save it again")
    if head[:4] == b"PK\x03\x04":  # torch.save's zip format
        return "torch"
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:  # torch.save's legacy pickle format
        return "torch"
    header = int.from_bytes(head[:8], "little")
    if len(head) > 8 and head[8:9] == b"{" and 0 < header <= min(size - 8, _SAFETENSORS_MAX_HEADER):
        return "safetensors"
    if head.lstrip()[:1] == b"{":
        return "json"
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":
        return "onnx"
    raise ModelError(
        f"{path}: not a model file tileseg reads; give an smp model folder, a TorchGeo .ckpt, "
        "a .pt/.pth/.safetensors state dict, an .onnx file or a STAC MLM item (.json)")


def read_json(path: Path, what: str) -> Any:
    """The JSON document at ``path`` (at most :data:`MAX_JSON_BYTES`); ``what`` names it in the
    one-line error for a file that is not one."""
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise unreadable(path, exc) from exc
    if len(text) > MAX_JSON_BYTES:
        raise ModelError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB, too large for {what}")
    try:
        return json.loads(text.decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ModelError(f"{path}: not valid JSON ({exc}); fix {what}") from exc


# Lightning's dict with attribute access (older releases saved hyper-parameters as one), under
# the names it was pickled by: read as the plain ordered dict it is, without importing Lightning
# or running any of its code (torch's weights-only reader fills only dicts it knows)
_LIGHTNING_DICTS = ("lightning.fabric.utilities.data.AttributeDict",
                    "pytorch_lightning.utilities.parsing.AttributeDict",
                    "lightning_fabric.utilities.data.AttributeDict")


# torch's allow-list is process-wide: tileseg's loads add to it one at a time, under this lock
_ALLOW_LOCK = threading.Lock()


def _torch_load(path: Path) -> Any:
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if allow is None:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    with _ALLOW_LOCK, allow([(OrderedDict, name) for name in _LIGHTNING_DICTS]):
        return torch.load(str(path), map_location="cpu", weights_only=True)


def read_torch(path: Path) -> Any:
    """What ``torch.save`` wrote to ``path``, read with ``torch.load(weights_only=True)``:
    tensors, numbers, strings, lists and dicts only. A pickled object (a whole model, a
    function, anything whose unpickling would run code) is refused with one line saying why."""
    try:
        return _torch_load(path)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise ModelError(
            f"{path}: holds pickled Python objects{what}, which tileseg refuses to load: "
            "unpickling them could run any code; save a state dict (torch.save(model.state_dict(), "
            "f)), or model.save_pretrained(dir) for an smp model") from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as exc:
        raise ModelError(f"{path}: not a readable PyTorch file, truncated or corrupt "
                         f"({first_sentence(exc)}); copy or save it again") from exc


def first_sentence(exc: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's message, for a one-line error."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:  # safetensors reports a file it may not read as "No such file or directory"
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise unreadable(path, exc) from exc
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: corrupt safetensors file ({exc}); re-save the model") from exc


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from a safetensors or ``torch.save`` file (also one saved as
    ``{"state_dict": ...}``)."""
    if sniff(path) == "safetensors":
        return read_safetensors(path)
    state = read_torch(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not is_state_dict(state):
        raise ModelError(f"{path}: not a state dict of tensors; re-save it with model.state_dict()")
    return state  # type: ignore[no-any-return]


def is_state_dict(value: Any) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def stat_files(paths: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime_ns) of each file: what a run fingerprints of a model's files."""
    out = []
    for name in paths:
        st = Path(name).stat()
        out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)
