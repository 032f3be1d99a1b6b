"""ONNX files from any framework, run by ONNX Runtime as they are (never re-exported).

tileseg feeds one float32 ``(batch, bands, height, width)`` input and reads one output, the
logits ``(batch, classes, height, width)``; an output at a fraction of the input's size (a
SegFormer's logits at 1/4) is upsampled bilinearly to it, as its own post-processing would. The
graph's declared shape says what it takes: a fixed batch (every pass gets that many tiles, the
last padded), a fixed square input size (the network input; tiles are at most that size), or
dynamic sizes (the input on a multiple the description gives, else 32). What the graph cannot
take (several inputs or outputs, a non-square or rank-other-than-4 input, another element type)
is one line when it loads, before any work. :class:`OnnxForward` runs such a file, and the
exports tileseg makes of its own models (:mod:`tileseg.inference.engine`), in an ONNX Runtime
session.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tileseg.errors import DependencyError, ModelError

logger = logging.getLogger(__name__)

DEFAULT_MULTIPLE = 32  # a dynamic graph of unknown depth: safe for up to five 2x downsamplings
INSTALL_HINT = 'pip install "tileseg[cpu]" (or: pip install onnxruntime)'


@dataclass(frozen=True)
class OnnxSignature:
    """The one input and output of an ONNX graph; a dimension is None where it is dynamic."""

    input_name: str
    output_name: str
    batch: int | None
    channels: int | None
    height: int | None
    width: int | None
    outputs: int | None  # the output's channel dimension

    @property
    def input_size(self) -> int | None:
        return self.height


def import_onnxruntime(where: str = "") -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        prefix = f"{where}: " if where else ""
        raise DependencyError(f"{prefix}an ONNX model runs on ONNX Runtime: {INSTALL_HINT}",
                              params=("engine",)) from exc
    return onnxruntime


def _dim(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def inspect_onnx(path: Path) -> OnnxSignature:
    """Open ``path`` with ONNX Runtime (CPU) and read its input and output."""
    ort = import_onnxruntime(str(path))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # its own warnings are not the user's business
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types (InvalidProtobuf, Fail, ...)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: not a readable ONNX model, truncated or corrupt "
                         f"({reason[:200]}); export or copy it again") from exc
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ModelError(f"{path}: the ONNX model takes {len(inputs)} inputs "
                         f"({', '.join(i.name for i in inputs)}); tileseg feeds one image "
                         "(batch, bands, height, width): export it with one input")
    if len(outputs) != 1:
        raise ModelError(f"{path}: the ONNX model gives {len(outputs)} outputs "
                         f"({', '.join(o.name for o in outputs)}); tileseg reads one, the logits "
                         "(batch, classes, height, width): export it with the logits only")
    inp, out = inputs[0], outputs[0]
    if inp.type != "tensor(float)":
        raise ModelError(f"{path}: the ONNX model's input {inp.name} is {inp.type}; tileseg feeds "
                         "float32 (tensor(float)): export it with a float32 input")
    if len(inp.shape) != 4:
        raise ModelError(f"{path}: the ONNX model's input {inp.name} has {len(inp.shape)} "
                         "dimensions; tileseg feeds (batch, bands, height, width)")
    if len(out.shape) != 4:
        raise ModelError(f"{path}: the ONNX model's output {out.name} has {len(out.shape)} "
                         "dimensions; tileseg reads logits (batch, classes, height, width)")
    batch, channels, height, width = (_dim(d) for d in inp.shape)
    if (height is None) != (width is None) or height != width:
        shown = " x ".join(str(d) for d in inp.shape[2:])
        raise ModelError(f"{path}: the ONNX model takes {shown} inputs; tileseg's network inputs "
                         "are square: export it with a square or dynamic height and width")
    return OnnxSignature(inp.name, out.name, batch, channels, height, width, _dim(out.shape[1]))


class OnnxForward:
    """Runs an ONNX model with ONNX Runtime; torch tensors in and out.

    An export of tileseg's own (input ``x``, output ``logits``, dynamic batch) runs on the CPU
    provider. A user's file (``signature``) runs as its graph declares: a fixed batch gets that
    many tiles a pass (the last pass padded), and logits at a fraction of the input's size are
    upsampled to it. ``providers`` puts it on a GPU (``CUDAExecutionProvider``), where
    ``pad_to`` gives every pass the same batch shape, as for torch on CUDA.
    """

    def __init__(self, path: Path, threads: int, *, signature: Any = None,
                 providers: list[str] | None = None, pad_to: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise DependencyError(f"engine onnxruntime needs ONNX Runtime: {INSTALL_HINT}",
                                  params=("engine",)) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle pool threads sleep instead of spinning, so the prefetch thread that reads and
        # decodes the next batch gets the cores between forward passes.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # a corrupt or foreign file in the cache
            hint = ("export or copy it again" if signature is not None else
                    "delete it to export again, or use engine torch")
            raise ModelError(f"{path}: ONNX Runtime cannot load this model ({exc}); {hint}",
                             params=("engine",)) from exc
        self.path = path
        self.threads = threads
        self.input_name = signature.input_name if signature is not None else "x"
        self.output_name = signature.output_name if signature is not None else "logits"
        self.fixed_batch = signature.batch if signature is not None else None
        self.pad_to = self.fixed_batch or pad_to

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        n = len(array)
        step = self.fixed_batch or max(n, self.pad_to or 1)
        parts = []
        for start in range(0, n, step):
            part = array[start : start + step]
            if self.pad_to is not None and len(part) < self.pad_to:
                # a fixed-batch graph takes nothing else; on a GPU the same shape every pass
                pad = np.zeros((self.pad_to - len(part), *part.shape[1:]), np.float32)
                part = np.concatenate([part, pad])
            (out,) = self.session.run([self.output_name], {self.input_name: part})
            parts.append(out[: min(step, n - start)])
        logits = torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))
        return _at_input_size(logits, x.shape[-2:], self.path).to(x.device)


def _at_input_size(out: torch.Tensor, size: Any, path: Path) -> torch.Tensor:
    """Logits at the input's height and width: as they are, or upsampled bilinearly from an
    integer fraction of it (a SegFormer's 1/4), as the model's own post-processing does."""
    if out.ndim != 4:
        raise ModelError(f"{path}: the model gave {tuple(out.shape)} logits; tileseg needs "
                         "(batch, classes, height, width)")
    height, width = int(size[0]), int(size[1])
    got = (int(out.shape[2]), int(out.shape[3]))
    if got == (height, width):
        return out
    if (got[0] and got[1] and height % got[0] == 0 and width % got[1] == 0
            and height // got[0] == width // got[1]):
        return torch.nn.functional.interpolate(out.float(), size=(height, width),
                                               mode="bilinear", align_corners=False)
    raise ModelError(f"{path}: the model gave {got[0]} x {got[1]} logits for a {height} x {width} "
                     "input; tileseg needs them at the input's size or a whole fraction of it")


def _process_cores() -> int:
    """Cores this process may use (its CPU affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class OnnxNetwork(nn.Module):
    """A user's ONNX file as a module (``module(x)`` runs it on the CPU), so a loaded ONNX
    model can be called like any other; predict runs the file through its own session."""

    def __init__(self, path: Path, signature: OnnxSignature) -> None:
        super().__init__()
        self.path = Path(path)
        self.signature = signature
        self._forward: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._forward is None:
            # predict runs the file through a session of its own, sized to the worker
            self._forward = OnnxForward(self.path, _process_cores(), signature=self.signature)
        out: torch.Tensor = self._forward(x)
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxNetwork:
        clone = OnnxNetwork(self.path, copy.deepcopy(self.signature, memo))
        clone.train(self.training)
        return clone

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_forward"] = None  # a session is not picklable; the copy opens its own
        return state

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}"


def network_size(signature: OnnxSignature, multiple: int | None, declared: int | None,
                 where: str, described_by: str = "the description") -> tuple[int, int | None, str]:
    """(input multiple, fixed input size or None, where the multiple came from)."""
    size = signature.input_size
    if declared is not None and size is not None and declared != size:
        raise ModelError(f"{where}: declares {declared} px inputs but the ONNX graph takes "
                         f"{size}; fix the description")
    size = size or declared
    if size is not None:
        step = multiple or 1
        if size % step:
            raise ModelError(f"{where}: the input size {size} is not a multiple of the input "
                             f"multiple {step} the description gives; fix the description")
        return step, size, "the graph's fixed input size"
    if multiple is not None:
        return multiple, None, described_by
    return DEFAULT_MULTIPLE, None, f"assumed ({DEFAULT_MULTIPLE}; give input_multiple)"
