"""What tileseg read about a model, and from where, and the engines that run it here:
``tileseg model info``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tileseg.models.loaded import LoadedModel

FORMAT_NAMES = {
    "smp": "smp model folder (save_pretrained)",
    "torchgeo": "TorchGeo SemanticSegmentationTask checkpoint",
    "weights": "plain weights (state dict)",
    "onnx": "ONNX model",
    "module": "model object",
}


def engines(model: LoadedModel) -> list[str]:
    """The engines ``model`` can run on here."""
    from tileseg.inference.engine import onnxruntime_available

    if model.onnx_path is not None:
        import onnxruntime

        gpu = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        return ["onnxruntime (CPU)"] + (["onnxruntime (CUDA)"] if gpu else [])
    out = ["torch (CPU, CUDA)"]
    if onnxruntime_available():
        out.append("onnxruntime (CPU; exported by tileseg, cached)")
    return out


def describe_model(model: LoadedModel) -> dict[str, Any]:
    """The facts of ``model`` as JSON-ready values (snake_case keys, numbers as numbers).

    Examples
    --------
    >>> describe_model(load_model("epoch=9.ckpt"))["format"]  # doctest: +SKIP
    'torchgeo'
    """
    meta = model.metadata
    norm = meta.normalization
    spec = model.spec
    size = model.input_size
    return {
        "source": model.source,
        "format": model.format,
        "format_name": FORMAT_NAMES.get(model.format, model.format)
        + (" through a STAC MLM item" if model.item else ""),
        "files": [str(Path(f)) for f in model.files],
        "architecture": model.architecture,
        "encoder_name": spec.encoder_name if spec is not None else None,
        "in_channels": meta.in_channels,
        "bands": list(meta.bands),
        "dtype": meta.dtype,
        "normalization": {"scale": list(norm.scale), "offset": list(norm.offset),
                          "mean": list(norm.mean), "std": list(norm.std),
                          "guessed": meta.guessed_scaling},
        "classes": list(meta.class_names),
        "binary": bool(spec is not None and spec.classes == 1),
        "input_size": size,
        "input_multiple": model.divisor,
        "input": (f"{size} x {size} only" if size is not None
                  else f"any multiple of {model.divisor}" if model.divisor > 1 else "any size"),
        "engines": engines(model),
        "read_from": dict(model.origin),
    }
