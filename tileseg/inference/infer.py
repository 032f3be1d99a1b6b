"""Running the model over the tiles of one chunk and blending their logits on the device.

Reading and decoding happen in a prefetch thread that fills (pinned, on CUDA) host batches
while the device works on the previous batch; host-to-device copies are non-blocking. Only the
blended result of a chunk leaves the device. On the CPU a process runs one forward pass at a
time with all the cores the worker may use (see :mod:`tileseg.inference.engine`), by eager PyTorch or by
ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from tileseg.errors import ConfigError, DependencyError, ModelError, OutputError
from tileseg.inference.device import (  # noqa: F401  (re-exported: older imports)
    CPU_BATCH_SIZE,
    Precision,
    default_batch_size,
    precision_name,
    resolve_device,
    resolve_precision,
)
from tileseg.inference.engine import (
    CPU_FORWARD_LOCK,
    TorchCpuForward,
    ensure_onnx,
    resolve_engine,
    worker_cores,
)
from tileseg.inference.tta import averaged, check_mode
from tileseg.models.formats.onnxfile import OnnxForward
from tileseg.models.loaded import LoadedModel, class_logits
from tileseg.sources.raster import RasterInfo, WindowReader
from tileseg.tiling.blend import fixed_point_window, logit_limit, weight_window
from tileseg.tiling.grid import Rect, TileGrid

logger = logging.getLogger(__name__)

T = TypeVar("T")

# channels-last memory format for the torch engine on the CPU (always on a GPU): measured with
# benchmarks/bench_engine.py (docs/benchmarks.md, "Inference engines on the CPU").
CPU_CHANNELS_LAST = True


@dataclass
class Runtime:
    """A model placed on a device, with what each batch needs; cached once per process."""

    model: LoadedModel
    device: torch.device
    autocast: torch.dtype | None
    batch_size: int
    context: int  # network input size (>= tile size, a multiple of the model's divisor)
    norm_a: torch.Tensor
    norm_b: torch.Tensor
    window: torch.Tensor  # (tile, tile) blend weights times the fixed-point scale, float32
    window_units: torch.Tensor  # (tile, tile) blend weights in fixed-point units, int64
    logit_limit: float  # logits are clamped to +-this before they are blended
    channels_last: bool
    engine: str = "torch"  # "torch" or "onnxruntime"
    threads: int | None = None  # CPU intra-op threads (None on a GPU)
    onnx: OnnxForward | None = None
    torch_cpu: TorchCpuForward | None = None
    tta: str = "none"  # test-time augmentation (tileseg.inference.tta): none, flips or d4

    def label(self) -> str:
        """What a tile's logits depend on besides the model and the tiling: the engine, the
        device type and precision and, on a GPU, the batch size (see :meth:`forward`)."""
        parts = [self.engine, self.device.type, precision_name(self.autocast)]
        if self.device.type == "cuda":
            parts.append(f"batch {self.batch_size}")
        return " ".join(parts)

    def resolved(self) -> dict[str, Any]:
        """The device, precision and batch size this runtime really uses (``auto`` resolved)."""
        return {"device": str(self.device), "precision": precision_name(self.autocast),
                "batch_size": self.batch_size}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The float32 logits of a batch of normalized tiles, each independent of the others
        in its batch and of how many there are (see :mod:`tileseg.tiling.blend`: the mask must not
        depend on how tiles are grouped); averaged over the test-time augmentation's
        transforms (:mod:`tileseg.inference.tta`), each tile on its own."""
        return averaged(self._forward_once, x, self.tta)

    def _forward_once(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # a binary model's one logit x as [0, x] (see class_logits): argmax = sigmoid > 0.5
        classes = self.model.metadata.num_classes
        if self.onnx is not None:  # its kernels depend on neither (tests/inference/test_determinism.py)
            return class_logits(self.onnx(x), classes)
        if self.torch_cpu is not None:
            return class_logits(self.torch_cpu(x), classes)
        n = len(x)
        if n < self.batch_size:
            # cuDNN may choose other kernels for another batch shape: every pass gets the full
            # batch, so a chunk's last, smaller batch computes its tiles as a full one would
            x = torch.cat([x, x.new_zeros((self.batch_size - n, *x.shape[1:]))])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                             enabled=self.autocast is not None):
            out: Any = self.model.module(x)
        if isinstance(out, tuple | list):  # aux heads
            out = out[0]
        return class_logits(out[:n].float(), classes)


def make_runtime(
    model: LoadedModel,
    *,
    device: str,
    precision: str,
    batch_size: int | None,
    tile_size: int,
    overlap: int,
    blend: str,
    compile_model: bool = False,
    engine: str = "torch",
    halo_before: int | None = None,
    from_directory: bool = False,
    owned: bool = False,
    tta: str = "none",
) -> Runtime:
    """Place ``model`` for inference: device, precision, engine, threads and blend window.

    ``halo_before`` is where each tile's core starts (see :class:`~tileseg.tiling.grid.TileGrid`);
    ``from_directory`` says the model was loaded from files (``auto`` may then export it).
    ``owned=False`` (a caller's model) leaves ``model.module`` as it was: it is copied before
    being moved, switched to eval mode or converted to channels-last, unless it already is
    on the device in eval mode and needs no conversion. ``tta``: test-time augmentation
    (:mod:`tileseg.inference.tta`).
    """
    check_mode(tta)
    if model.onnx_path is not None:
        return _onnx_file_runtime(model, device=device, precision=precision,
                                  batch_size=batch_size, tile_size=tile_size, overlap=overlap,
                                  blend=blend, compile_model=compile_model, engine=engine,
                                  halo_before=halo_before, tta=tta)
    dev = resolve_device(device)
    autocast = resolve_precision(precision, dev)
    context = model.context_size(tile_size)
    chosen = resolve_engine(engine, dev, autocast=autocast, compile_model=compile_model,
                            from_directory=from_directory)
    threads = worker_cores() if dev.type == "cpu" else None
    onnx = None
    if chosen == "onnxruntime":
        try:
            exported = model.module if owned else copy.deepcopy(model.module)
            path = ensure_onnx(exported.cpu(), context, model.metadata.in_channels,
                               model.architecture)
            onnx = OnnxForward(path, threads or 1)
        except (ModelError, OutputError) as exc:  # OutputError: the export cache
            if engine != "auto":
                raise
            logger.warning("%s; running it with torch instead", exc)
            chosen = "torch"
    # channels-last on the CPU only for a model the runtime owns: converting a caller's module
    # would mean copying it (the caller keeps the object it passed, as it was)
    channels_last = dev.type == "cuda" or (chosen == "torch" and CPU_CHANNELS_LAST and owned)
    module = model.module
    if not owned and not _usable_as_is(module, dev, channels_last):
        module = copy.deepcopy(module)
    module = module.to(dev).eval()
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if compile_model:
        module = torch.compile(module)  # type: ignore[assignment]
    placed = replace(model, module=module)
    torch_cpu = (TorchCpuForward(module, threads, autocast, concurrent=owned)
                 if chosen == "torch" and threads is not None else None)
    return _runtime(placed, dev, autocast, batch_size, context, blend, tile_size, overlap,
                    halo_before, channels_last=channels_last, engine=chosen, threads=threads,
                    onnx=onnx, torch_cpu=torch_cpu, tta=tta)


def _runtime(model: LoadedModel, dev: torch.device, autocast: torch.dtype | None,
             batch_size: int | None, context: int, blend: str, tile_size: int, overlap: int,
             halo_before: int | None, **placed: Any) -> Runtime:
    """The :class:`Runtime` of a placed model: normalization and blend window on ``dev``."""
    a, b = model.metadata.normalization.coefficients(model.metadata.in_channels)
    scaled, units = fixed_point_window(weight_window(blend, tile_size, overlap, halo_before))
    return Runtime(
        model=model,
        device=dev,
        autocast=autocast,
        batch_size=batch_size or default_batch_size(dev, context),
        context=context,
        norm_a=torch.from_numpy(a).to(dev)[None, :, None, None],
        norm_b=torch.from_numpy(b).to(dev)[None, :, None, None],
        window=torch.from_numpy(scaled).to(dev),
        window_units=torch.from_numpy(units).to(dev),
        logit_limit=logit_limit(tile_size, overlap),
        **placed,
    )


def _onnx_file_runtime(model: LoadedModel, *, device: str, precision: str,
                       batch_size: int | None, tile_size: int, overlap: int, blend: str,
                       compile_model: bool, engine: str, halo_before: int | None,
                       tta: str) -> Runtime:
    """A user's ONNX file, run by ONNX Runtime as it is: on the CPU, or on CUDA with
    onnxruntime-gpu, every pass of the same batch shape there (the last one padded)."""
    dev = onnx_device(device, precision, engine, compile_model)
    context = model.context_size(tile_size)
    threads = worker_cores() if dev.type == "cpu" else None
    batch = batch_size or default_batch_size(dev, context)
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if dev.type == "cuda"
                 else ["CPUExecutionProvider"])
    signature = getattr(model.module, "signature", None)
    onnx = OnnxForward(Path(str(model.onnx_path)), threads or 1, signature=signature,
                       providers=providers, pad_to=batch if dev.type == "cuda" else None)
    return _runtime(model, dev, None, batch, context, blend, tile_size, overlap, halo_before,
                    channels_last=False, engine="onnxruntime", threads=threads, onnx=onnx,
                    tta=tta)


def onnx_device(device: str, precision: str, engine: str, compile_model: bool) -> torch.device:
    """Where a user's ONNX file runs: ONNX Runtime in fp32, on the CPU or, with onnxruntime-gpu
    installed, on CUDA (``auto`` picks CUDA only then). Anything else is one line."""
    from tileseg.models.formats.onnxfile import import_onnxruntime

    if engine == "torch":
        raise ConfigError("an ONNX model file runs on ONNX Runtime, not torch; use engine auto "
                          "or onnxruntime", params=("engine",))
    if compile_model:
        raise ConfigError("compile_model is for torch networks; an ONNX model file runs on ONNX "
                          "Runtime: drop compile_model", params=("compile_model",))
    if precision not in ("auto", "fp32"):
        raise ConfigError(f"an ONNX model file runs as it was exported; precision {precision} "
                          "applies to torch networks: use precision fp32 (or auto)",
                          params=("precision",))
    ort = import_onnxruntime()
    gpu = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "auto":
        dev = resolve_device("auto")
        return dev if dev.type == "cpu" or gpu else torch.device("cpu")
    dev = resolve_device(device)
    if dev.type == "cuda" and not gpu:
        raise DependencyError(f"running an ONNX model file on {dev} needs onnxruntime-gpu (pip "
                              "install onnxruntime-gpu); or use device cpu", params=("device",))
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"an ONNX model file runs on the CPU or CUDA, not {dev}",
                          params=("device",))
    return dev


def context_pad(grid: TileGrid, context: int) -> int:
    """Context pixels above/left of each tile: the grid's, which puts the network input on the
    model's divisor grid; centred for a grid planned without the model (``divisor=1``)."""
    if grid.context == context:
        return grid.pad_before
    return (context - grid.tile_size) // 2


def _usable_as_is(module: torch.nn.Module, device: torch.device, channels_last: bool) -> bool:
    on_device = all(t.device == device for t in [*module.parameters(), *module.buffers()])
    return on_device and not module.training and not channels_last


@dataclass
class HostBatch:
    data: torch.Tensor  # (n, bands, context, context), raster dtype (uint16 as int16 bits)
    valid: torch.Tensor  # (n, context, context) bool
    offsets: list[tuple[int, int]]  # tile window origin relative to the chunk extent
    unsigned16: bool


def _host_array(data: np.ndarray) -> tuple[np.ndarray, bool]:
    """Make a raster array torch can hold without widening it on the host where avoidable."""
    if data.dtype == np.uint16:
        return data.view(np.int16), True
    if data.dtype == np.uint32:
        return data.astype(np.int64), False
    if data.dtype == np.float64:
        return data.astype(np.float32), False
    return data, False


def iter_batches(
    reader: WindowReader,
    grid: TileGrid,
    tiles: list[tuple[int, int]],
    extent: Rect,
    context: int,
    batch_size: int,
    pin: bool,
) -> Iterator[HostBatch]:
    """Read one strip per tile row (GDAL's block cache absorbs the rows strips share).

    Tiles without a valid pixel in their core are left out of the batches.
    """
    size = grid.tile_size
    pad = context_pad(grid, context)
    rows: dict[int, list[int]] = {}
    for r, c in tiles:
        rows.setdefault(r, []).append(c)
    pending: list[tuple[np.ndarray, np.ndarray, tuple[int, int]]] = []

    def flush() -> HostBatch:
        arrays = [_host_array(p[0]) for p in pending]
        data = torch.from_numpy(np.stack([a for a, _ in arrays]))
        valid = torch.from_numpy(np.stack([p[1] for p in pending]))
        if pin:
            data, valid = data.pin_memory(), valid.pin_memory()
        batch = HostBatch(data, valid, [p[2] for p in pending], arrays[0][1])
        pending.clear()
        return batch

    for r, cols in rows.items():
        first, last = grid.tile(r, cols[0]), grid.tile(r, cols[-1])
        strip = Rect.from_bounds(first.row_off, first.col_off, last.row_end, last.col_end)
        strip = strip.grow(pad, context - size - pad)  # the context windows' rows
        data, valid = reader.read(strip)
        for c in cols:
            tile = grid.tile(r, c)
            x0 = tile.col_off - first.col_off
            tile_valid = valid[:, x0 : x0 + context]
            if not tile_valid[pad : pad + size, pad : pad + size].any():
                continue
            pending.append((
                data[:, :, x0 : x0 + context],
                tile_valid,
                (tile.row_off - extent.row_off, tile.col_off - extent.col_off),
            ))
            if len(pending) == batch_size:
                yield flush()
    if pending:
        yield flush()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Produce ``items`` in a background thread, ``depth`` ahead of the consumer."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(("error", exc))

    thread = threading.Thread(target=produce, name="tileseg-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join(timeout=5)


@dataclass
class ChunkLogits:
    """Blended logit sums of one chunk's tiles over the chunk extent, on the device, as
    fixed-point integers (:mod:`tileseg.tiling.blend`), so sums of other chunks add to them exactly."""

    extent: Rect
    logit_sum: torch.Tensor  # (classes, h, w) int64
    weight_sum: torch.Tensor  # (h, w) int64
    tiles: int
    skipped: int


def infer_chunk_logits(
    runtime: Runtime, raster: RasterInfo, grid: TileGrid, row: int, col: int, run: str = "",
    on_tiles: Callable[[int], None] | None = None,
    leave_out: set[tuple[int, int]] | frozenset[tuple[int, int]] = frozenset(),
) -> ChunkLogits:
    """Infer every tile whose core lies in chunk ``(row, col)`` and sum their weighted logits.

    ``run``: the run's id, under which the open raster is handed on to its next chunk here.
    ``on_tiles``: called after each batch with the tiles of the chunk inferred so far.
    ``leave_out``: tiles not to infer (outside an area of interest); ``skipped`` does not count
    them.
    """
    extent = grid.chunk_extent(row, col)
    classes = runtime.model.metadata.num_classes
    dev = runtime.device
    size = grid.tile_size
    pad = context_pad(grid, runtime.context)
    # a CPU forward pass already uses every core the worker may use: one at a time per process
    forward_lock = CPU_FORWARD_LOCK if dev.type == "cpu" else contextlib.nullcontext()
    logit_sum = torch.zeros((classes, extent.height, extent.width), dtype=torch.int64, device=dev)
    weight_sum = torch.zeros((extent.height, extent.width), dtype=torch.int64, device=dev)
    not_finite = torch.zeros((), dtype=torch.bool, device=dev)
    tiles = [t for t in grid.chunk_tiles_of(row, col) if t not in leave_out]
    if not tiles:  # nothing to infer: the raster need not even be opened
        return ChunkLogits(extent, logit_sum, weight_sum, 0, 0)
    done = 0
    with WindowReader(raster, run or None) as reader, torch.inference_mode():
        batches = iter_batches(reader, grid, tiles, extent, runtime.context, runtime.batch_size,
                               dev.type == "cuda")
        for batch in prefetch(batches):
            if dev.type == "cpu":
                x, valid = _normalize_on_host(batch, runtime)
            else:
                x, valid = _normalize_on_device(batch, runtime)
            with forward_lock:
                logits = runtime.forward(x)[:, :, pad : pad + size, pad : pad + size]
            if dev.type == "cpu":
                _accumulate_on_host(logit_sum, weight_sum, logits, valid, batch.offsets, runtime,
                                    pad, size)
            else:
                not_finite |= torch.isnan(logits).any()  # checked once a chunk: no sync a batch
                inside = valid[:, pad : pad + size, pad : pad + size]
                scores = logits.clamp(-runtime.logit_limit, runtime.logit_limit)
                for k, (r, c) in enumerate(batch.offsets):
                    weights = runtime.window * inside[k]
                    logit_sum[:, r : r + size, c : c + size] += torch.round(
                        scores[k] * weights).to(torch.int64)
                    weight_sum[r : r + size, c : c + size] += runtime.window_units * inside[k]
            done += len(batch.offsets)
            if on_tiles is not None:
                on_tiles(done)
    if bool(not_finite):
        raise _not_finite(runtime)
    # every tile is either in a batch or skipped for having no valid pixel in its core
    return ChunkLogits(extent, logit_sum, weight_sum, done, len(tiles) - done)


def _not_finite(runtime: Runtime) -> ModelError:
    return ModelError(
        f"{runtime.model.source}: the model gave NaN logits (precision "
        f"{precision_name(runtime.autocast)}); check its weights, or use precision fp32",
        params=("precision",))


def _normalize_on_device(batch: HostBatch, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy a batch to the device and normalize it there; invalid pixels become 0."""
    dev = runtime.device
    x = batch.data.to(dev, non_blocking=True)
    valid = batch.valid.to(dev, non_blocking=True)
    if batch.unsigned16:
        x = x.to(torch.int32) & 0xFFFF
    x = x.float() * runtime.norm_a + runtime.norm_b
    # Nodata and NaN pixels become 0, the normalized mean, so they cannot poison a tile.
    return torch.where(valid[:, None], x, torch.zeros((), device=dev)), valid


def _normalize_on_host(batch: HostBatch, runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_normalize_on_device` for the CPU, in numpy: torch's element-wise kernels on
    these shapes are several times slower there (benchmarks/bench_engine.py), and the same
    multiply-then-add order gives the same float32 values bit for bit."""
    data = batch.data.numpy()
    if batch.unsigned16:
        data = data.view(np.uint16)
    x = data.astype(np.float32)  # always a copy: the batch's buffer is never changed
    x *= runtime.norm_a.numpy()
    x += runtime.norm_b.numpy()
    valid = batch.valid.numpy()
    np.copyto(x, np.float32(0), where=~valid[:, None])
    return torch.from_numpy(x), batch.valid


def _accumulate_on_host(logit_sum: torch.Tensor, weight_sum: torch.Tensor, logits: torch.Tensor,
                        valid: torch.Tensor, offsets: list[tuple[int, int]], runtime: Runtime,
                        pad: int, size: int) -> None:
    """Add each tile's weighted logits to the chunk's sums, in numpy on the CPU (the tensors
    share their memory with the arrays), with the same float32 products and rounding as on a
    device (:func:`tileseg.tiling.blend.quantize`)."""
    sums, weights_sum = logit_sum.numpy(), weight_sum.numpy()
    scores = logits.float().numpy()
    if np.isnan(scores).any():
        raise _not_finite(runtime)
    scores = np.clip(scores, -runtime.logit_limit, runtime.logit_limit)
    window, units = runtime.window.numpy(), runtime.window_units.numpy()
    inside = valid.numpy()[:, pad : pad + size, pad : pad + size]
    for k, (r, c) in enumerate(offsets):
        term = scores[k] * (window * inside[k])
        sums[:, r : r + size, c : c + size] += np.rint(term, out=term).astype(np.int64)
        weights_sum[r : r + size, c : c + size] += units * inside[k]


def blend_to_mask(
    logit_sum: torch.Tensor,
    weight_sum: torch.Tensor,
    nodata: int,
    mask_dtype: np.dtype[Any],
    probabilities: str,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Normalize summed logits per pixel; return the class mask and optional probabilities.

    The sums are fixed-point integers (:mod:`tileseg.tiling.blend`); a pixel's weight sum is common to
    its classes, so the class is the argmax of the integer sums themselves: exact, with the
    first of equal maxima winning. Probabilities come from the normalized logits.
    """
    if logit_sum.device.type == "cpu":
        # numpy, several times faster than torch's kernels for these on the CPU
        weights = weight_sum.numpy()
        covered_np = weights > 0
        mask_np = logit_sum.numpy().argmax(axis=0).astype(mask_dtype)
        mask_np[~covered_np] = nodata
        if probabilities == "none":
            return mask_np, None
        scores = (logit_sum.numpy() / np.where(covered_np, weights, 1)).astype(np.float32)
        logits, covered = torch.from_numpy(scores), torch.from_numpy(covered_np)
    else:
        covered = weight_sum > 0
        mask = logit_sum.argmax(dim=0)
        mask = torch.where(covered, mask,
                           torch.full((), nodata, device=mask.device, dtype=mask.dtype))
        mask_np = mask.to(torch.int32).cpu().numpy().astype(mask_dtype)
        if probabilities == "none":
            return mask_np, None
        logits = (logit_sum.double() / torch.where(covered, weight_sum, 1).double()).float()
    probs_np = None
    if probabilities != "none":
        probs = torch.softmax(logits, dim=0) * covered
        if probabilities == "uint8":
            probs_np = torch.round(probs * 255).to(torch.uint8).cpu().numpy()
        else:
            probs_np = probs.to(torch.float16).cpu().numpy()
    return mask_np, probs_np
