"""The training loop: random crops, cross-entropy with an ignore index, holdout validation."""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tileseg.errors import ConfigError, InputError, OutputError
from tileseg.inference.device import resolve_device
from tileseg.metrics import SegmentationMetrics, compute_metrics, confusion_matrix
from tileseg.models.loaded import ModelSpec, build_model, readable_like_others, save_model
from tileseg.models.metadata import ClassInfo, ModelMetadata, Normalization, default_color
from tileseg.tiling.grid import round_up
from tileseg.training.card import write_model_card
from tileseg.training.config import IGNORE_INDEX, TrainConfig
from tileseg.training.data import (
    CropSampler,
    Region,
    Source,
    band_statistics,
    class_frequencies,
    class_weights,
    iter_tiles,
    split_holdout,
)
from tileseg.training.result import TrainResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainEvent:
    """Progress of a run: one per optimizer step (``kind="step"``) and per epoch."""

    kind: Literal["step", "epoch"]
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    seconds: float
    metrics: SegmentationMetrics | None = None
    best: bool = False
    eta: float | None = None  # estimated seconds left in the run (steps and validations)


TrainCallback = Callable[[TrainEvent], None]


@dataclass
class _Clock:
    """When the first step started and how many steps there are: the time the steps done so
    far took (their epochs' validations included) estimates the time the rest will take."""

    started: float
    total_steps: int
    steps_per_epoch: int

    def eta(self, epoch: int, step: int) -> float:
        done = (epoch - 1) * self.steps_per_epoch + step
        return (time.perf_counter() - self.started) / done * (self.total_steps - done)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


class _AuxHead(nn.Module):
    """PSPNet's auxiliary segmentation branch on the next-to-last encoder stage (training only)."""

    def __init__(self, in_channels: int, classes: int) -> None:
        super().__init__()
        mid = max(64, in_channels // 4)
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True), nn.Dropout2d(0.1), nn.Conv2d(mid, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.block(x)
        return out


def _forward(model: nn.Module, aux: _AuxHead | None,
             x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    if aux is None:
        return model(x), None
    smp_model: Any = model  # smp's encoder/decoder/segmentation_head are untyped attributes
    features = smp_model.encoder(x)
    logits = smp_model.segmentation_head(smp_model.decoder(features))
    return logits, aux(features[-2])


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy on logits resized (bilinear) to the label size; ignored pixels skipped;
    ``weight`` is an optional loss weight per class."""
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear",
                               align_corners=False)
    if not (labels != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels.long(), weight=weight,
                           ignore_index=IGNORE_INDEX)


@torch.no_grad()
def validate(model: nn.Module, sources: list[Source], regions: list[Region],
             coefficients: tuple[np.ndarray, np.ndarray], num_classes: int, tile: int,
             divisor: int, device: torch.device) -> np.ndarray:
    """Confusion matrix of the model on the validation regions, tile by tile.

    Each tile is read with a margin of context (image pixels only: labels are scored inside the
    region), padded by reflection to a multiple of the model's divisor.
    """
    a, b = coefficients
    model.eval()
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    margin = tile // 8
    for src, region in zip(sources, regions, strict=True):
        for t in iter_tiles(region, tile):
            row0, col0 = max(0, t.row_off - margin), max(0, t.col_off - margin)
            row1 = min(src.height, t.row_off + t.height + margin)
            col1 = min(src.width, t.col_off + t.width + margin)
            from rasterio.windows import Window

            image, valid, labels = src.read(Window(col0, row0, col1 - col0, row1 - row0))
            image = image * a[:, None, None] + b[:, None, None]
            image[:, ~valid] = 0.0
            h, w = image.shape[1:]
            ph, pw = round_up(h, divisor) - h, round_up(w, divisor) - w
            x = torch.from_numpy(image)[None]
            if ph or pw:
                mode = "reflect" if ph < h and pw < w else "replicate"
                x = F.pad(x, (0, pw, 0, ph), mode=mode)
            pred = model(x.to(device)).argmax(1)[0, :h, :w].cpu().numpy()
            r, c = t.row_off - row0, t.col_off - col0
            core = (slice(r, r + t.height), slice(c, c + t.width))
            lab = labels[core]
            cm += confusion_matrix(lab, pred[core], num_classes, valid=lab != IGNORE_INDEX)
    return cm


def _encoder_weights_path(config: TrainConfig) -> str | None:
    if config.encoder_weights in (None, "", "none", "random"):
        return None
    if config.encoder_weights == "imagenet":
        from tileseg.samples import fetch

        # Never a hidden download: `tileseg sample efficientnet-lite0` is the explicit fetch.
        return str(fetch("efficientnet-lite0", download=False))
    return config.encoder_weights


def _class_colors(config: TrainConfig, sources: list[Source]) -> tuple[tuple[int, int, int], ...]:
    """``--colors`` when given, else the labels' own colour table, else distinct defaults."""
    if config.class_colors:
        return config.class_colors
    for source in sources:
        colors = source.label_colors(config.values)
        if colors is not None:
            logger.info("class colours from the colour table of %s", source.spec.labels)
            return colors
    return tuple(default_color(i) for i in range(config.num_classes))


def _metadata(config: TrainConfig, src: Source, mean: np.ndarray, std: np.ndarray,
              colors: tuple[tuple[int, int, int], ...] | None = None) -> ModelMetadata:
    colors = colors or _class_colors(config, [src])
    bands = config.band_names or tuple(
        (src.image.descriptions[i - 1] or f"band_{i}") for i in src.indexes)
    gsd = None
    if src.crs is not None and src.crs.is_projected and abs(src.transform.a) == abs(
            src.transform.e):
        gsd = float(abs(src.transform.a))
    return ModelMetadata(
        classes=tuple(ClassInfo(i, n, tuple(c), label_value=v)  # type: ignore[arg-type]
                      for i, (n, c, v) in enumerate(zip(config.class_names, colors,
                                                        config.values, strict=True))),
        in_channels=len(src.indexes),
        bands=tuple(bands),
        dtype=src.dtype,
        normalization=Normalization(scale=(1.0,), offset=(0.0,),
                                    mean=tuple(float(v) for v in mean),
                                    std=tuple(float(v) for v in std)),
        gsd=gsd,
        description=config.description,
        tile_size=config.crop_size,
    )


def _save(model: nn.Module, out_dir: Path, metadata: ModelMetadata, save_dtype: str) -> None:
    save_model(model, out_dir, metadata)
    path = out_dir / "model.safetensors"
    if save_dtype == "float16":
        from safetensors.torch import load_file, save_file

        state = load_file(str(path))
        half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
        save_file(half, str(path), metadata={"format": "pt"})
        readable_like_others(path)  # save_file writes 0600 too


def train(config: TrainConfig, progress: TrainCallback | None = None) -> TrainResult:
    """Train a segmentation model and write a model directory that ``predict`` loads.

    The directory holds smp's ``config.json`` and ``model.safetensors`` (the best validation
    epoch), ``tileseg.json`` (classes, colours, bands, dtype, normalization from the training
    pixels, GSD), ``MODEL_CARD.md`` and ``training.json`` (recipe, history, holdout metrics).

    Examples
    --------
    >>> cfg = TrainConfig(sources=(TrainSource("img.tif", "labels.tif"),), out_dir="model",
    ...                   class_names=("background", "building"), crop_size=256)
    >>> result = train(cfg)                                  # doctest: +SKIP
    >>> result.metrics.mean_iou                              # doctest: +SKIP
    """
    start = time.perf_counter()
    out_dir = Path(config.out_dir)
    check_out_dir(out_dir, config.overwrite)
    device = resolve_device(config.device)
    if config.seed is not None:
        seed_everything(config.seed, config.deterministic)
    rng = np.random.default_rng(config.seed)

    sources = [Source(s, config) for s in config.sources]
    try:
        return _run(config, sources, out_dir, device, rng, start, progress)
    finally:
        for s in sources:
            s.close()


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a model folder that would lose someone's files: a file, a non-empty folder without
    ``overwrite``, or (even with it) a folder that is not a model folder tileseg wrote."""
    from tileseg.models.metadata import METADATA_FILENAME
    from tileseg.outputs.paths import check_folder_creatable

    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir}: is a file, not a folder; out_dir names the model folder "
                          "to write: choose another path", params=("out_dir",))
    # made with its missing parents after the data are read: writable now, not at the end
    check_folder_creatable(out_dir, "out_dir", params=("out_dir",))
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise OutputError(f"{out_dir}: exists and is not empty; choose another out_dir or pass "
                          "overwrite", params=("out_dir", "overwrite"))
    if not (out_dir / METADATA_FILENAME).is_file():
        raise OutputError(f"{out_dir}: not a model folder tileseg wrote (no {METADATA_FILENAME}),"
                          " so overwrite leaves it; choose another out_dir",
                          params=("overwrite", "out_dir"))


def _labelled_pixels(sources: list[Source], regions: list[Region], num_classes: int,
                     what: str) -> np.ndarray:
    counts = class_frequencies(sources, regions, num_classes)
    if counts.sum() == 0:
        names = ", ".join(sorted({s.spec.labels for s in sources}))
        raise InputError(f"{names}: {what} has no labelled pixel (every label there is nodata "
                         "or unlabelled); check the labels' nodata value, class_values and "
                         "the holdout", params=("class_values",))
    return counts


@dataclass
class _Network:
    """The model being trained, its optional PSPNet auxiliary head and its input divisor."""

    spec: ModelSpec
    model: nn.Module
    aux: _AuxHead | None
    encoder_weights: str | None  # the ImageNet weights file the encoder started from
    divisor: int

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters()) + (
            list(self.aux.parameters()) if self.aux is not None else [])

    def train(self) -> None:
        self.model.train()
        if self.aux is not None:
            self.aux.train()


@dataclass
class _Optimization:
    """AdamW with DeepLab's poly schedule, and mixed precision on CUDA."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype


def _run(config: TrainConfig, sources: list[Source], out_dir: Path, device: torch.device,
         rng: np.random.Generator, start: float, progress: TrainCallback | None) -> TrainResult:
    _check_sources_match(sources)
    val_sources, train_regions, val_regions = _regions(config, sources)
    mean, std, train_pixels = band_statistics(sources, train_regions)
    metadata = _metadata(config, sources[0], mean, std, _class_colors(config, sources))
    coefficients = metadata.normalization.coefficients(metadata.in_channels)
    logger.info("normalization from %d training pixels: mean %s std %s", train_pixels,
                np.round(mean, 3).tolist(), np.round(std, 3).tolist())
    counts = _labelled_pixels(sources, train_regions, config.num_classes, "the training area")
    # a model card claiming mIoU 0.000 from 0 pixels would be a lie: check the holdout up front
    _labelled_pixels(val_sources, val_regions, config.num_classes,
                     "the validation area" if config.val_sources else
                     f"the holdout strip ({config.holdout.side} "
                     f"{config.holdout.fraction:.0%})")
    loss_weights = _loss_weights(config, counts)
    weight = (None if loss_weights is None
              else torch.tensor(loss_weights, dtype=torch.float32, device=device))
    net = _network(config, metadata, device)
    opt = _optimization(config, net, device)
    _check_crop_size(config, net)
    sampler = CropSampler(sources, train_regions, config, coefficients, rng)

    out_dir.mkdir(parents=True, exist_ok=True)
    best: tuple[float, int, SegmentationMetrics] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = []
    clock = _Clock(time.perf_counter(), config.epochs * config.steps_per_epoch,
                   config.steps_per_epoch)
    for epoch in range(1, config.epochs + 1):
        losses = _train_epoch(config, net, opt, sampler, weight, device, epoch, start, progress,
                              clock)
        cm = validate(net.model, val_sources, val_regions, coefficients, config.num_classes,
                      config.crop_size, net.divisor, device)
        metrics = compute_metrics(cm)
        improved = best is None or metrics.mean_iou > best[0]
        record = {"epoch": epoch, "loss": float(np.mean(losses)),
                  "val_mean_iou": metrics.mean_iou, "val_pixel_accuracy": metrics.pixel_accuracy,
                  "lr": float(opt.scheduler.get_last_lr()[0]),
                  "seconds": time.perf_counter() - start}
        history.append(record)
        logger.info("epoch %d/%d loss %.4f holdout mIoU %.4f pixel acc %.4f%s", epoch,
                    config.epochs, record["loss"], metrics.mean_iou, metrics.pixel_accuracy,
                    " (best)" if improved else "")
        if improved:
            best = (metrics.mean_iou, epoch, metrics)
            best_state = copy.deepcopy({k: v.detach().cpu()
                                        for k, v in net.model.state_dict().items()})
            # checkpoint of the best validation epoch so far: an interrupted run keeps it
            _save(net.model, out_dir, metadata, config.save_dtype)
        if progress is not None:
            progress(TrainEvent("epoch", epoch, config.epochs, config.steps_per_epoch,
                                config.steps_per_epoch, record["loss"],
                                time.perf_counter() - start, metrics, improved,
                                clock.eta(epoch, config.steps_per_epoch)))
    if val_sources is not sources:
        for s in val_sources:
            s.close()
    assert best is not None and best_state is not None  # epochs >= 1 (checked in TrainConfig)
    net.model.load_state_dict(best_state)
    recipe = _recipe(config, net.spec, device, net.encoder_weights, train_regions, val_regions,
                     sources)
    recipe["class_pixels"] = counts.tolist()
    if loss_weights is not None:
        recipe["class_loss_weights"] = [round(w, 4) for w in loss_weights]
    result = TrainResult(out_dir=str(out_dir), best_epoch=best[1], metrics=best[2],
                         history=tuple(history), seconds=time.perf_counter() - start,
                         device=str(device), train_pixels=train_pixels,
                         val_pixels=sum(r.area for r in val_regions), recipe=recipe)
    _write_records(out_dir, result, metadata)
    return result


def _check_sources_match(sources: list[Source]) -> None:
    bands = {len(s.indexes) for s in sources}
    dtypes = {s.dtype for s in sources}
    if len(bands) != 1 or len(dtypes) != 1:
        raise InputError("training images differ in band count or dtype "
                         f"({sorted(bands)}, {sorted(dtypes)}); select matching indexes",
                         params=("indexes",))


def _regions(config: TrainConfig, sources: list[Source]
             ) -> tuple[list[Source], list[Region], list[Region]]:
    """The validation sources, and the training and validation regions of each source."""
    if config.val_sources:
        val_sources = [Source(s, config) for s in config.val_sources]
        train_regions = [Region(0, 0, s.height, s.width) for s in sources]
        val_regions = [Region(0, 0, s.height, s.width) for s in val_sources]
    else:
        val_sources = sources
        splits = [split_holdout(s.height, s.width, config.holdout) for s in sources]
        train_regions = [t for t, _ in splits]
        val_regions = [v for _, v in splits]
    for s, reg in zip(sources, train_regions, strict=True):
        if min(reg.height, reg.width) < 16:
            raise InputError(f"{s.spec.image}: training region {reg.height} x {reg.width} "
                             "(height x width) is too small; use a smaller holdout.fraction "
                             "or separate val_sources rasters",
                             params=("holdout.fraction", "val_sources"))
    return val_sources, train_regions, val_regions


def _loss_weights(config: TrainConfig, counts: np.ndarray) -> list[float] | None:
    if config.class_weighting == "none":
        return None
    power = 0.5 if config.class_weighting == "inverse-sqrt" else 1.0
    weights: list[float] = class_weights(counts, power).tolist()
    logger.info("class loss weights (%s): %s", config.class_weighting,
                [round(w, 3) for w in weights])
    return weights


def _network(config: TrainConfig, metadata: ModelMetadata, device: torch.device) -> _Network:
    """The model to train (encoder from ImageNet weights when given), on the device."""
    spec = ModelSpec(architecture=config.architecture, encoder_name=config.encoder_name,
                     in_channels=metadata.in_channels, classes=config.num_classes,
                     encoder_output_stride=config.encoder_output_stride)
    model = build_model(spec)
    weights = _encoder_weights_path(config)
    if weights is not None:
        from tileseg.training.encoders import load_pretrained_encoder

        load_pretrained_encoder(model, config.encoder_name, weights)
    aux = None
    if spec.architecture == "PSPNet" and config.aux_weight > 0:
        encoder: Any = model.encoder
        aux = _AuxHead(int(encoder.out_channels[-2]), config.num_classes)
    model.to(device)
    if aux is not None:
        aux.to(device)
    divisor = int(getattr(model.encoder, "output_stride", 32)) if getattr(
        model, "requires_divisible_input_shape", True) else 1
    return _Network(spec, model, aux, weights, divisor)


def _optimization(config: TrainConfig, net: _Network, device: torch.device) -> _Optimization:
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    total_steps = config.epochs * config.steps_per_epoch
    # DeepLab's "poly" schedule: lr * (1 - step/total)^0.9
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (1 - min(step, total_steps - 1) / total_steps) ** 0.9)
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    return _Optimization(optimizer, scheduler, scaler, use_amp, amp_dtype)


def _check_crop_size(config: TrainConfig, net: _Network) -> None:
    if config.crop_size % net.divisor:
        raise ConfigError(f"crop size {config.crop_size} must be a multiple of {net.divisor} for "
                          f"{net.spec.architecture}/{net.spec.encoder_name}; try "
                          f"{config.crop_size // net.divisor * net.divisor or net.divisor}")


def _train_epoch(config: TrainConfig, net: _Network, opt: _Optimization, sampler: CropSampler,
                 weight: torch.Tensor | None, device: torch.device, epoch: int, start: float,
                 progress: TrainCallback | None, clock: _Clock) -> list[float]:
    """One epoch of optimizer steps; the loss of each step."""
    net.train()
    losses = []
    for step in range(1, config.steps_per_epoch + 1):
        images, labels = sampler.batch(config.batch_size)
        x = torch.from_numpy(images).to(device, non_blocking=True)
        y = torch.from_numpy(labels).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=opt.amp_dtype, enabled=opt.use_amp):
            logits, aux_logits = _forward(net.model, net.aux, x)
            loss = segmentation_loss(logits, y, weight)
            if aux_logits is not None:
                loss = loss + config.aux_weight * segmentation_loss(aux_logits, y, weight)
        opt.optimizer.zero_grad(set_to_none=True)
        opt.scaler.scale(loss).backward()
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
        opt.scheduler.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise InputError("the training loss is not finite; lower learning_rate or check the "
                             "image for extreme values", params=("learning_rate",))
        losses.append(value)
        if progress is not None:
            progress(TrainEvent("step", epoch, config.epochs, step, config.steps_per_epoch,
                                value, time.perf_counter() - start, eta=clock.eta(epoch, step)))
    return losses


def _write_records(out_dir: Path, result: TrainResult, metadata: ModelMetadata) -> None:
    """``training.json`` and ``MODEL_CARD.md`` beside the saved weights."""
    (out_dir / "training.json").write_text(json.dumps(_training_json(result, metadata), indent=2)
                                           + "\n")
    write_model_card(out_dir, result, metadata)


def _recipe(config: TrainConfig, spec: ModelSpec, device: torch.device, weights: str | None,
            train_regions: list[Region], val_regions: list[Region],
            sources: list[Source]) -> dict[str, Any]:
    return {
        "architecture": spec.architecture,
        "encoder_name": spec.encoder_name,
        "encoder_init": "random" if weights is None else f"ImageNet ({config.encoder_weights})",
        "encoder_output_stride": spec.encoder_output_stride,
        "crop_size": config.crop_size,
        "scale_range": list(config.scale_range),
        "flips": config.flips,
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "steps_per_epoch": config.steps_per_epoch,
        "optimizer": f"AdamW lr {config.learning_rate} weight decay {config.weight_decay}, poly "
                     "0.9 schedule",
        "loss": "cross-entropy on logits resized to the label size, ignore index 255"
                + ("" if config.class_weighting == "none" else
                   f", class weights {config.class_weighting} frequency (capped 10x)")
                + (f", PSPNet auxiliary loss x{config.aux_weight}"
                   if spec.architecture == "PSPNet" else ""),
        "amp": bool(config.amp and device.type == "cuda"),
        "seed": config.seed,
        "device": str(device),
        "sources": [{"image": s.spec.image, "labels": s.spec.labels,
                     "class_attribute": s.spec.class_attribute, "bands": list(s.indexes),
                     "size": [s.height, s.width], "crs": s.crs.to_string() if s.crs else None}
                    for s in sources],
        "train_regions": [asdict(r) for r in train_regions],
        "validation": ("separate rasters " + ", ".join(s.image for s in config.val_sources)
                       if config.val_sources else
                       f"holdout strip: {config.holdout.side} {config.holdout.fraction:.0%}"),
        "val_regions": [asdict(r) for r in val_regions],
        "class_values": list(config.values),
    }


def _training_json(result: TrainResult, metadata: ModelMetadata) -> dict[str, Any]:
    return {
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 1),
        "train_pixels": result.train_pixels,
        "val_pixels": result.val_pixels,
        "recipe": result.recipe,
        "history": list(result.history),
        "holdout_metrics": result.metrics.to_json(metadata.class_names),
    }

