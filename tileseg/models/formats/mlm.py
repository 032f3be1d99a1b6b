"""STAC items using the Machine Learning Model (MLM) extension, read and written.

Written to MLM v1.5.2 (``https://stac-extensions.github.io/mlm/v1.5.2/schema.json``), the
current version; read from any 1.x item, including the ``norm_type``/``statistics`` fields of
releases before 1.4. tileseg reads:

* the Asset with the ``mlm:model`` role (its ``href`` a local path or ``file://`` URL, relative
  to the item; tileseg never downloads) and its ``mlm:artifact_type``: ``torch.save`` (a state
  dict or a TorchGeo checkpoint), ``safetensors.torch.save_file``, or ``onnx``;
* ``mlm:input`` (exactly one): ``bands``, ``input.shape``/``dim_order`` (batch, channel or
  bands, height, width; a fixed height = width is the network input of an ONNX file) and
  ``value_scaling`` (``z-score``, ``min-max``, ``scale``, ``offset``, or null, per band or one
  for all);
* ``mlm:output``: ``classification:classes`` (``value`` = output channel, ``name``,
  ``color_hint``);
* ``mlm:architecture`` and ``mlm:hyperparameters`` (``network``: the smp architecture and its
  arguments, for plain weights; ``input_multiple``).

Functions here take a loaded model and give plain dicts: :func:`mlm_properties` is the
``mlm:*`` fields of any model tileseg runs (an output STAC item may carry them),
:func:`stac_item` a whole item, :func:`export_stac` writes one.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from tileseg.errors import ModelError
from tileseg.models.formats.given import Given
from tileseg.models.formats.network import spec_config
from tileseg.models.loaded import LoadedModel
from tileseg.models.metadata import ClassInfo, Normalization, parse_color
from tileseg.sources import SUPPORTED_DTYPES

logger = logging.getLogger(__name__)

MLM_VERSION = "1.5.2"
MLM_SCHEMA = f"https://stac-extensions.github.io/mlm/v{MLM_VERSION}/schema.json"
STAC_VERSION = "1.1.0"
MARK = "tileseg:version"  # in the properties of an item tileseg wrote: what it may replace

# artifact types tileseg runs -> the file kinds (tileseg.models.formats.files.sniff) they are
ARTIFACT_KINDS = {
    "torch.save": ("torch",),
    "safetensors.torch.save_file": ("safetensors",),
    "safetensors": ("safetensors",),
    "onnx": ("onnx",),
}
_BATCH = {"batch", "b", "n"}
_CHANNEL = {"channel", "channels", "c", "bands", "band"}
_HEIGHT = {"height", "h", "y", "row", "rows", "lat", "latitude"}
_WIDTH = {"width", "w", "x", "col", "cols", "lon", "longitude"}
_SEGMENTATION = {"semantic-segmentation", "segmentation"}


def is_mlm_item(data: Any) -> bool:
    """A STAC item (a GeoJSON Feature with properties) with at least one ``mlm:`` field."""
    return (isinstance(data, dict) and data.get("type") == "Feature"
            and isinstance(data.get("properties"), dict)
            and any(str(k).startswith("mlm:") for k in data["properties"]))


# --------------------------------------------------------------------------- reading


def read_item(data: dict[str, Any], path: Path) -> tuple[Given, Path, str | None]:
    """What an MLM item says, the model artifact it points at, and its artifact type."""
    where = str(path)
    props = data["properties"]
    artifact, artifact_type = _model_asset(data, path)
    inp = _one_input(props, where)
    channels, size = _input_shape(inp, where)
    bands = _band_names(inp.get("bands"), where)
    if channels is not None and bands and len(bands) != channels:
        raise ModelError(f"{where}: mlm:input names {len(bands)} bands but its shape has "
                         f"{channels} channels; fix the item")
    hyper = props.get("mlm:hyperparameters") or {}
    if not isinstance(hyper, dict):
        raise ModelError(f"{where}: mlm:hyperparameters must be an object; fix the item")
    network = hyper.get("network")
    if not isinstance(network, dict):  # an item tileseg did not write: the common names
        network = {k: hyper[k] for k in ("encoder_name", "backbone") if k in hyper}
        if props.get("mlm:architecture"):
            network["architecture"] = props["mlm:architecture"]
    normalization = _normalization(inp, (channels or len(bands) or None), where)
    normalization = _exact(normalization, hyper.get("normalization"))
    classes = _classes(_segmentation_output(props, where), where)
    multiple = hyper.get("input_multiple")
    given = Given(
        source=where, kind="the MLM item", classes=classes,
        in_channels=channels or (len(bands) if bands else None), bands=bands,
        dtype=_dtype(data, hyper), normalization=normalization,
        description=str(props.get("description", "")), gsd=_number(props.get("gsd")),
        tile_size=size, network=dict(network),
        input_multiple=multiple if isinstance(multiple, int) else None, input_size=size)
    return given, artifact, artifact_type


def _model_asset(data: dict[str, Any], path: Path) -> tuple[Path, str | None]:
    assets = data.get("assets")
    models = [a for a in (assets.values() if isinstance(assets, dict) else [])
              if isinstance(a, dict) and "mlm:model" in (a.get("roles") or [])]
    if not models:
        raise ModelError(f"{path}: no asset with the mlm:model role; add the model file as an "
                         "asset with roles [\"mlm:model\"]")
    runnable = [a for a in models if a.get("mlm:artifact_type") in ARTIFACT_KINDS
                or a.get("mlm:artifact_type") is None]
    if not runnable:
        kinds = ", ".join(str(a.get("mlm:artifact_type")) for a in models)
        raise ModelError(f"{path}: its model artifact ({kinds}) is not one tileseg runs; it runs "
                         f"{', '.join(ARTIFACT_KINDS)}")
    asset = runnable[0]
    href = asset.get("href")
    if not isinstance(href, str) or not href:
        raise ModelError(f"{path}: the mlm:model asset has no href; fix the item")
    return _local(href, path), asset.get("mlm:artifact_type")


def _local(href: str, item: Path) -> Path:
    """The local file an asset's ``href`` names, relative to the item's folder."""
    parsed = urlparse(href)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        raise ModelError(f"{item}: the model artifact is at {href}; tileseg never downloads "
                         "a model: download it and point the asset's href at the local file")
    target = Path(unquote(href))
    return target if target.is_absolute() else item.parent / target


def _one_input(props: dict[str, Any], where: str) -> dict[str, Any]:
    inputs = props.get("mlm:input")
    if not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict):
        raise ModelError(f"{where}: mlm:input must be a list of one Model Input Object; fix the "
                         "item")
    if len(inputs) > 1:
        raise ModelError(f"{where}: mlm:input lists {len(inputs)} inputs; tileseg feeds one "
                         "image (batch, bands, height, width)")
    return inputs[0]


def _input_shape(inp: dict[str, Any], where: str) -> tuple[int | None, int | None]:
    """(channels, fixed square size) of an input's ``shape``/``dim_order``; None: dynamic."""
    structure = inp.get("input")
    if not isinstance(structure, dict):
        return None, None
    shape, order = structure.get("shape"), structure.get("dim_order")
    if not isinstance(shape, list) or not isinstance(order, list) or len(shape) != len(order):
        raise ModelError(f"{where}: mlm:input's input.shape and input.dim_order must be lists of "
                         "one length; fix the item")
    names = [str(d).lower() for d in order]
    kinds = [next((k for k, s in (("b", _BATCH), ("c", _CHANNEL), ("h", _HEIGHT),
                                  ("w", _WIDTH)) if n in s), "?") for n in names]
    if "".join(kinds) not in ("bchw", "chw"):
        raise ModelError(f"{where}: mlm:input dim_order {order} is not (batch, channel, height, "
                         "width); tileseg feeds its tiles in that order")
    dims = dict(zip(kinds, shape, strict=True))
    try:
        channels, height, width = (int(dims[k]) for k in "chw")
    except (TypeError, ValueError):
        raise ModelError(f"{where}: mlm:input's input.shape {shape} holds a non-integer; fix the "
                         "item") from None
    if (height > 0) != (width > 0) or (height > 0 and height != width):
        raise ModelError(f"{where}: mlm:input's shape {shape} is not square; tileseg's network "
                         "inputs are square: declare -1 for a dynamic height and width")
    return (channels if channels > 0 else None), (height if height > 0 else None)


def _band_names(bands: Any, where: str) -> tuple[str, ...]:
    if not bands:
        return ()
    if not isinstance(bands, list):
        raise ModelError(f"{where}: mlm:input bands must be a list; fix the item")
    out = []
    for band in bands:
        name = band.get("name") if isinstance(band, dict) else band
        if not isinstance(name, str) or not name:
            raise ModelError(f"{where}: mlm:input band {band!r} has no name; fix the item")
        out.append(name)
    return tuple(out)


def _normalization(inp: dict[str, Any], bands: int | None, where: str) -> Normalization | None:
    """``value_scaling`` (or the ``norm_type``/``statistics`` of MLM before 1.4) as tileseg's
    affine normalization; None when the item gives none (tileseg guesses, with a warning),
    the identity when it says explicitly that none applies (``null``)."""
    if "value_scaling" in inp:
        scaling = inp["value_scaling"]
        if scaling is None:
            return Normalization()
        if isinstance(scaling, dict):
            scaling = [scaling]
        if not isinstance(scaling, list) or not scaling:
            raise ModelError(f"{where}: value_scaling must be a list of Value Scaling Objects; "
                             "fix the item")
        return _affine([_one_scaling(s, where) for s in scaling], bands, where)
    if "norm_type" in inp or "statistics" in inp:  # MLM < 1.4
        kind, stats = inp.get("norm_type"), inp.get("statistics") or [{}]
        if kind is None:
            return Normalization()
        if not isinstance(stats, list):
            stats = [stats]
        objects = [{**(s if isinstance(s, dict) else {}), "type": kind} for s in stats]
        return _affine([_one_scaling(s, where) for s in objects], bands, where)
    return None


def _one_scaling(obj: Any, where: str) -> tuple[float, float]:
    """One band's scaling as (mean, std) of ``(x - mean) / std``."""
    if obj is None:
        return 0.0, 1.0
    if not isinstance(obj, dict):
        raise ModelError(f"{where}: value_scaling entry {obj!r} is not an object; fix the item")
    kind = obj.get("type")
    try:
        if kind is None:
            return 0.0, 1.0
        if kind == "z-score":
            return float(obj["mean"]), float(obj["stddev"] if "stddev" in obj else obj["std"])
        if kind == "min-max":
            low, high = float(obj["minimum"]), float(obj["maximum"])
            return low, high - low
        if kind == "scale":
            return 0.0, float(obj["value"])
        if kind == "offset":
            return float(obj["value"]), 1.0
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{where}: value_scaling {kind} lacks a number ({exc}); fix the "
                         "item") from None
    raise ModelError(f"{where}: value_scaling type {kind!r} is not one tileseg applies (it "
                     "applies z-score, min-max, scale and offset, one a band); convert the "
                     "rasters beforehand and declare the scaling the model then needs")


def _affine(pairs: list[tuple[float, float]], bands: int | None, where: str) -> Normalization:
    if len(pairs) > 1 and bands is not None and len(pairs) != bands:
        raise ModelError(f"{where}: value_scaling has {len(pairs)} entries for {bands} bands; "
                         "give one, or one a band")
    bad = next((s for _, s in pairs if not s > 0 or not math.isfinite(s)), None)
    if bad is not None:
        raise ModelError(f"{where}: value_scaling divides by {bad}; a stddev, a scale value and "
                         "maximum - minimum must be positive")
    return Normalization(mean=tuple(m for m, _ in pairs), std=tuple(s for _, s in pairs))


def _exact(normalization: Normalization | None, recorded: Any) -> Normalization | None:
    """tileseg's own normalization as it recorded it in the hyper-parameters, when it is the
    scaling ``value_scaling`` gives: the same float32 coefficients as the model it exported,
    not a rounding step away."""
    if normalization is None or not isinstance(recorded, dict):
        return normalization
    try:
        exact = Normalization(**{k: tuple(float(v) for v in recorded[k])
                                 for k in ("scale", "offset", "mean", "std")})
        bands = max(len(normalization.mean), len(exact.mean), len(exact.scale))
        a, b = normalization.coefficients(bands)
        ea, eb = exact.coefficients(bands)
    except (KeyError, TypeError, ValueError, ModelError):
        return normalization
    close = all(abs(x - y) <= 1e-6 * max(abs(x), abs(y), 1e-12)
                for x, y in zip([*a, *b], [*ea, *eb], strict=True))
    return exact if close else normalization


def _segmentation_output(props: dict[str, Any], where: str) -> dict[str, Any]:
    outputs = props.get("mlm:output")
    if not isinstance(outputs, list) or not outputs:
        raise ModelError(f"{where}: mlm:output must list the model's output; fix the item")
    good = [o for o in outputs if isinstance(o, dict)]
    for out in good:
        if _SEGMENTATION & {str(t) for t in out.get("tasks") or []}:
            return out
    if not good:
        raise ModelError(f"{where}: mlm:output holds no Model Output Object; fix the item")
    return good[0]


def _classes(output: dict[str, Any], where: str) -> tuple[ClassInfo, ...] | None:
    listed = output.get("classification:classes", output.get("classification_classes"))
    if not listed:
        return None
    if not isinstance(listed, list) or not all(isinstance(c, dict) for c in listed):
        raise ModelError(f"{where}: classification:classes must be a list of Class Objects; fix "
                         "the item")
    try:
        ordered = sorted(listed, key=lambda c: int(c["value"]))
        values = [int(c["value"]) for c in ordered]
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{where}: every class needs an integer value (its output channel); "
                         "fix the item") from None
    if values != list(range(len(values))):
        raise ModelError(f"{where}: class values {values} are not 0, 1, 2, ... (the output "
                         "channels in order); fix the item")
    out = []
    for value, c in zip(values, ordered, strict=True):
        name = c.get("name") or c.get("title") or c.get("description") or f"class_{value}"
        if c.get("title") and name == _class_name(str(c["title"])):
            name = c["title"]  # the class's own name, which the name field could not hold
        try:
            color = parse_color(c.get("color_hint"), value)
        except ValueError as exc:
            raise ModelError(f"{where}: class {value}: {exc}; fix the item") from None
        out.append(ClassInfo(value, str(name), color))
    return tuple(out)


def _dtype(data: dict[str, Any], hyper: dict[str, Any]) -> str | None:
    """The raster dtype the model takes: its bands' ``data_type`` (STAC 1.1 ``bands`` or
    ``raster:bands``, on the model asset or the item), else tileseg's own record."""
    found: set[str] = set()
    places = [data.get("properties", {})]
    places += [a for a in (data.get("assets") or {}).values() if isinstance(a, dict)
               and "mlm:model" in (a.get("roles") or [])]
    for place in places:
        for key in ("bands", "raster:bands"):
            for band in place.get(key) or []:
                if isinstance(band, dict) and isinstance(band.get("data_type"), str):
                    found.add(band["data_type"])
    if len(found) == 1 and (dtype := found.pop()) in SUPPORTED_DTYPES:
        return dtype
    recorded = hyper.get("dtype")
    return recorded if recorded in SUPPORTED_DTYPES else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------- writing


def mlm_properties(model: LoadedModel, *, input_size: int | None = None,
                   bands: Sequence[str] = ()) -> dict[str, Any]:
    """The MLM fields (``mlm:*``) describing ``model``: any model tileseg runs. The one
    description of a model in MLM's terms: the item :func:`export_stac` writes and the output
    item of every predict run (:mod:`tileseg.outputs.stac_item`) both take them as they are.

    ``input_size``: the input side a run used (default: the model's fixed one, else any);
    ``bands``: the input bands' names when the model's metadata does not name them (a run's
    source bands).

    tileseg's normalization ``((x * scale + offset) - mean) / std`` is MLM's ``z-score`` with
    mean ``(mean - offset) / scale`` and stddev ``std / scale``.

    Examples
    --------
    >>> mlm_properties(load_model("models/landcover"))["mlm:architecture"]  # doctest: +SKIP
    'DeepLabV3Plus'
    """
    meta = model.metadata
    outputs = _outputs(model)
    if input_size is None:
        input_size = model.input_size
    size = input_size if input_size is not None else -1
    batch = getattr(getattr(model.module, "signature", None), "batch", None) or -1
    names = list(meta.bands) or (list(bands) if len(bands) == meta.in_channels and all(bands)
                                 else [])
    props: dict[str, Any] = {
        "mlm:name": mlm_name(_name(model) or model.architecture),
        "mlm:architecture": model.architecture,
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:framework": "ONNX" if model.onnx_path else "PyTorch",
        "mlm:accelerator": None,  # runs on a CPU, or a GPU when there is one
        "mlm:accelerator_constrained": False,
        "mlm:input": [{
            "name": "image",
            "description": ("float32 tiles of the raster's bands after value_scaling; nodata "
                            "pixels are 0"),
            "bands": names,
            "input": {"shape": [batch, meta.in_channels, size, size],
                      "dim_order": ["batch", "bands" if names else "channel", "height", "width"],
                      "data_type": "float32"},
            "value_scaling": _value_scaling(meta.normalization, meta.in_channels),
            "resize_type": None,
            "pre_processing_function": None,
        }],
        "mlm:output": [{
            "name": "logits",
            "description": _output_description(outputs),
            "tasks": ["semantic-segmentation"],
            "result": {"shape": [batch, outputs, size, size],
                       "dim_order": ["batch", "channel", "height", "width"],
                       "data_type": "float32"},
            "classification:classes": classification_classes(meta.classes),
            "post_processing_function": None,
        }],
        "mlm:hyperparameters": _hyperparameters(model),
    }
    if not model.onnx_path:
        import torch

        props["mlm:framework_version"] = torch.__version__.split("+")[0]
        total = sum(p.numel() for p in model.module.parameters())
        if total:
            props["mlm:total_parameters"] = int(total)
    return props


def _outputs(model: LoadedModel) -> int:
    spec = model.spec
    if spec is not None:
        return spec.classes
    signature = getattr(model.module, "signature", None)
    if signature is not None and signature.outputs:
        return int(signature.outputs)
    return model.metadata.num_classes


def _output_description(outputs: int) -> str:
    if outputs == 1:
        return ("one logit a pixel (a binary model): class 1 where its sigmoid is above 0.5, "
                "else class 0")
    return "one logit a class and pixel; the class of a pixel is their argmax"


def _name(model: LoadedModel) -> str:
    if not (model.item or model.source):
        return ""  # a model object that came from no file
    source = Path(model.item or model.source)
    return source.name if source.is_dir() else source.stem


def _value_scaling(norm: Normalization, bands: int) -> list[dict[str, Any]]:
    """tileseg's ``((x*scale + offset) - mean)/std`` as one z-score a band (or one for all):
    ``(x - mean') / std'`` with ``mean' = (mean - offset)/scale`` and ``std' = std/scale``."""
    per_band = [len(getattr(norm, k)) for k in ("scale", "offset", "mean", "std")]
    count = bands if max(per_band) > 1 else 1

    def at(values: tuple[float, ...], i: int) -> float:
        return values[i] if len(values) > 1 else values[0]

    out = []
    for i in range(count):
        scale = at(norm.scale, i)
        mean = (at(norm.mean, i) - at(norm.offset, i)) / scale
        out.append({"type": "z-score", "mean": _plain(mean), "stddev": _plain(at(norm.std, i) / scale)})
    return out


def _plain(value: float) -> float | int:
    """An integral float as an int (``255`` rather than ``255.0``), as JSON schemas expect."""
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


def classification_classes(classes: Sequence[ClassInfo]) -> list[dict[str, Any]]:
    """Classes as the classification extension writes them (the mask's and the model output's):
    a name it accepts (``^[0-9A-Za-z-_]+$``: others become underscores), the class's own name
    as ``title`` when that differs, and the colour."""
    out = []
    for c in classes:
        entry: dict[str, Any] = {"value": c.id, "name": _class_name(c.name),
                                 "color_hint": "{:02X}{:02X}{:02X}".format(*c.color)}
        if c.name != entry["name"]:
            entry["title"] = c.name
        out.append(entry)
    return out


def _class_name(name: str) -> str:
    cleaned = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in name)
    return cleaned or "class"


def mlm_name(name: str) -> str:
    """A name MLM accepts: a letter first, letters, digits and ``_.-`` or spaces inside, a
    letter or digit last."""
    cleaned = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "_.- ") else "_"
                      for ch in name).strip("_.- ")
    if len(cleaned) < 3 or not cleaned[0].isalpha():
        cleaned = f"model-{cleaned}".strip("_.- ") if cleaned else "tileseg-model"
    return cleaned


def _hyperparameters(model: LoadedModel) -> dict[str, Any]:
    meta = model.metadata
    out: dict[str, Any] = {"input_multiple": model.divisor}
    if model.spec is not None:
        out["network"] = spec_config(model.spec)
    norm = meta.normalization
    out["normalization"] = {k: list(getattr(norm, k)) for k in ("scale", "offset", "mean", "std")}
    if meta.dtype is not None:
        out["dtype"] = meta.dtype
    return out


def stac_item(model: LoadedModel, item_path: Path) -> dict[str, Any]:
    """A STAC item (STAC 1.1, MLM v1.5.2) for ``model``, whose asset ``href`` is relative to
    ``item_path``'s folder."""
    artifact = artifact_of(model)
    props = mlm_properties(model)
    meta = model.metadata
    stamp = dt.datetime.fromtimestamp(artifact.stat().st_mtime, dt.UTC)
    props = {"datetime": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
             **({"description": meta.description} if meta.description else {}), **props}
    if meta.bands:
        props["bands"] = [{"name": b, **({"data_type": meta.dtype} if meta.dtype else {})}
                          for b in meta.bands]
    if meta.gsd is not None:
        props["gsd"] = meta.gsd
    from tileseg._version import __version__

    props[MARK] = __version__
    href = os.path.relpath(artifact.resolve(), item_path.resolve().parent)
    if href.startswith(f"..{os.sep}..{os.sep}"):  # far apart: absolute, not a climb to /
        href = str(artifact.resolve())
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [MLM_SCHEMA],
        "id": props["mlm:name"],
        "geometry": None,
        "properties": props,
        "links": [],
        "assets": {"model": {"href": Path(href).as_posix(), **artifact_fields(model, artifact)}},
    }


def artifact_of(model: LoadedModel) -> Path:
    """The file an MLM item's model asset points at: the weights of an smp folder, the
    checkpoint, weights or ONNX file itself."""
    if model.format == "module":
        raise ModelError("a model object has no file an item could point at; save it with "
                         "tileseg.models.loaded.save_model and export that folder")
    weights = next((f for f in model.files if Path(f).suffix in (".safetensors", ".bin", ".pt",
                                                                 ".pth", ".ckpt", ".onnx")), None)
    if model.onnx_path:
        return Path(model.onnx_path)
    if weights is None:
        raise ModelError(f"{model.source}: no model file to point an item at")
    return Path(weights)


def artifact_fields(model: LoadedModel, artifact: Path, *, data: bool = True) -> dict[str, Any]:
    """The asset fields of ``model``'s file ``artifact`` (:func:`artifact_of`): its media type,
    title, MLM roles and artifact type. ``data``: the model is the item's data (its own
    item), not a means to it (a predict run's output item, whose data is the mask)."""
    from tileseg.models.formats.files import sniff

    kind = sniff(artifact)
    tail = ["data"] if data else []
    if kind == "onnx":
        return {"type": "application/octet-stream; framework=onnx", "title": "ONNX model",
                "roles": ["mlm:model", "mlm:compiled", *tail], "mlm:artifact_type": "onnx"}
    roles = ["mlm:model", "mlm:checkpoint" if model.format == "torchgeo" else "mlm:weights",
             *tail]
    if kind == "safetensors":
        return {"type": "application/octet-stream; framework=pytorch; application=safetensors",
                "title": "PyTorch weights (safetensors)", "roles": roles,
                "mlm:artifact_type": "safetensors.torch.save_file"}
    title = "TorchGeo checkpoint" if model.format == "torchgeo" else "PyTorch state dict"
    return {"type": "application/octet-stream; framework=pytorch", "title": title,
            "roles": roles, "mlm:artifact_type": "torch.save"}


def is_our_item(path: Path) -> bool:
    """Whether ``path`` is an MLM item tileseg wrote (an existing one it may replace)."""
    from tileseg.models.formats.files import read_json

    try:
        data = read_json(path, "an MLM item")
    except ModelError:
        return False
    return is_mlm_item(data) and MARK in data["properties"]
