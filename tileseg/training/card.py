"""The model card written next to a trained model: data, recipe, holdout metrics."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tileseg.metrics import SegmentationMetrics
from tileseg.models.metadata import ModelMetadata
from tileseg.text import counted
from tileseg.training.result import TrainResult

CARD_FILENAME = "MODEL_CARD.md"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def metrics_table(metrics: Mapping[str, SegmentationMetrics], class_names: tuple[str, ...]) -> str:
    """A markdown table with one column per model (e.g. the network and a baseline)."""
    names = list(metrics)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    rows = [("pixel accuracy", lambda m: m.pixel_accuracy),
            ("mean class accuracy", lambda m: m.mean_class_accuracy),
            ("**mean IoU**", lambda m: m.mean_iou),
            ("frequency-weighted IoU", lambda m: m.frequency_weighted_iou)]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(_pct(get(metrics[n])) for n in names) + " |")
    for i, cname in enumerate(class_names):
        lines.append(f"| IoU {cname} | "
                     + " | ".join(_pct(metrics[n].class_iou[i]) for n in names) + " |")
    return "\n".join(lines)


def _selection_note(result: TrainResult) -> str:
    """The best epoch was picked on the holdout it is scored on: say how optimistic that is."""
    history = result.history
    if len(history) < 2:
        return ""
    last = history[-1]
    values = [h["val_mean_iou"] for h in history]
    return (f"\nThe model is the best of {counted(len(history), 'epoch')} by holdout mIoU, so its holdout "
            "score is the maximum over a noisy curve and somewhat optimistic: the last epoch "
            f"scored {last['val_mean_iou']:.3f}, and the epochs ranged "
            f"{min(values):.3f}-{max(values):.3f} "
            f"(median of the second half {_median(values[len(values) // 2:]):.3f}).\n")


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def write_model_card(out_dir: str | Path, result: TrainResult, metadata: ModelMetadata, *,
                     baselines: Mapping[str, SegmentationMetrics] | None = None,
                     title: str | None = None, notes: str = "") -> Path:
    """Write ``MODEL_CARD.md``; ``baselines`` adds columns to the holdout metrics table."""
    r = result.recipe
    all_metrics = {f"{r['architecture']} (this model)": result.metrics, **(baselines or {})}
    classes = "\n".join(f"| {c.id} | {c.name} | #{c.color[0]:02x}{c.color[1]:02x}{c.color[2]:02x}"
                        f" | {r['class_values'][c.id]} |" for c in metadata.classes)
    sources = "\n".join(
        f"- `{s['image']}` ({s['size'][0]} x {s['size'][1]} px, height x width; bands "
        f"{s['bands']}, "
        f"CRS {s['crs'] or 'none'}) with labels `{s['labels']}`"
        + (f" (attribute `{s['class_attribute']}`)" if s["class_attribute"] else "")
        for s in r["sources"])
    norm = metadata.normalization
    schedule = f"{counted(r['epochs'], 'epoch')} x {counted(r['steps_per_epoch'], 'step')}"
    text = f"""# {title or 'Model card: ' + r['architecture'] + ' / ' + r['encoder_name']}

{metadata.description}

## Inputs and outputs
- {counted(metadata.in_channels, 'band')}: {', '.join(metadata.bands)}; dtype `{metadata.dtype}`;
  GSD {metadata.gsd if metadata.gsd is not None else 'unknown'} (CRS units).
- Normalization (from the training pixels, stored in `tileseg.json`):
  `x_norm = (x * scale + offset - mean) / std` with mean {[round(v, 3) for v in norm.mean]},
  std {[round(v, 3) for v in norm.std]}.
- Output classes (mask value, name, colour, label value in the training data):

| id | class | colour | label value |
|---|---|---|---|
{classes}

## Training data
{sources}

Training pixels (valid, used for normalization): {result.train_pixels}.
Validation: {r['validation']}; regions (row_off, col_off, height, width):
{', '.join('({row_off}, {col_off}, {height}, {width})'.format(**v) for v in r['val_regions'])}.
Random crops are drawn only from the training regions
{', '.join('({row_off}, {col_off}, {height}, {width})'.format(**v) for v in r['train_regions'])}.

## Recipe
- {r['architecture']} with encoder `{r['encoder_name']}` ({r['encoder_init']} initialization),
  output stride {r['encoder_output_stride'] or 'default'}.
- Random {r['crop_size']}x{r['crop_size']} crops read by window, random scale
  {r['scale_range'][0]}-{r['scale_range'][1]} (log-uniform), flips: {r['flips']}.
- {r['loss']}.
- {r['optimizer']}; batch {r['batch_size']}, {schedule};
  seed {r['seed']}; device {r['device']}, mixed precision {r['amp']}.
- Best validation epoch: {result.best_epoch} (of {r['epochs']}); training took
  {result.seconds / 60:.1f} min.

## Holdout metrics
Computed on {result.metrics.pixels} labelled holdout pixels (classes absent from both reference
and prediction are left out of the means).

{metrics_table(all_metrics, metadata.class_names)}
{_selection_note(result)}"""
    if notes:
        text += "\n" + notes.strip() + "\n"
    path = Path(out_dir) / CARD_FILENAME
    path.write_text(text)
    return path
