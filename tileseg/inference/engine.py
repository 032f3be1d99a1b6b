"""Inference engines: eager PyTorch, or the same network exported to ONNX and run by ONNX Runtime.

On a CPU, ONNX Runtime runs an smp DeepLab about twice as fast as eager PyTorch (it fuses
batch norms and activations into the convolutions and picks tuned kernels), with the same argmax.
The export is automatic and cached: the first run writes ``<cache>/onnx/<key>.onnx`` (the cache
of :func:`tileseg.samples.cache_dir`), keyed by everything that changes the graph (weights and
structure, network input size, bands, opset, torch and tileseg versions), with a record beside
it (``<key>.onnx.json``: the key and the file's SHA-256); later runs load it once the record
proves it is this model's export, unchanged, and export again otherwise. Exporting traces the
model locally and needs no network.

Threads: a process runs one CPU forward pass at a time (:data:`CPU_FORWARD_LOCK`), with as many
intra-op threads as the cores the worker may use (:func:`worker_cores`), so ``--workers`` threads
and a dask worker's ``--nthreads`` share those cores instead of multiplying them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tileseg._version import __version__
from tileseg.choices import ENGINES, check_choice
from tileseg.errors import ConfigError, DependencyError, DiskFullError, ModelError, OutputError
from tileseg.outputs.diskspace import atomic_file

logger = logging.getLogger(__name__)

OPSET = 17
ONNX_CACHE_ENV = "TILESEG_ONNX_CACHE"  # where exports go (default: the cache's onnx/)
INSTALL_HINT = 'pip install "tileseg[cpu]" (or: pip install onnxruntime onnx)'

# One CPU forward pass at a time per process: it already uses every core the worker may use,
# and two at once only add memory (two sets of activations) for no speed.
CPU_FORWARD_LOCK = threading.Lock()


def worker_cores() -> int:
    """Cores this process may use: its CPU affinity, or a dask worker's ``nthreads`` if fewer."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    distributed = sys.modules.get("distributed")  # a dask worker has imported it already
    if distributed is not None:
        try:
            cores = min(cores, int(distributed.get_worker().state.nthreads))
        except (ValueError, AttributeError):  # not inside a dask worker
            pass
    return max(1, cores)


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def onnxruntime_available() -> bool:
    return _import_onnxruntime() is not None


def resolve_engine(
    engine: str,
    device: torch.device,
    *,
    autocast: torch.dtype | None = None,
    compile_model: bool = False,
    from_directory: bool = True,
) -> str:
    """The engine a run uses: ``torch`` or ``onnxruntime``.

    ``auto`` picks ONNX Runtime for a model directory on the CPU in fp32 when it is installed,
    and torch otherwise: on a GPU, with ``compile_model`` or bf16 autocast, and for an ``nn.Module``
    object handed to ``predict()`` (arbitrary Python, run as it is).
    """
    check_choice(engine, ENGINES, "engine")
    if engine == "torch":
        return "torch"
    if engine == "auto":
        usable = (device.type == "cpu" and autocast is None and not compile_model
                  and from_directory)
        return "onnxruntime" if usable and onnxruntime_available() else "torch"
    if device.type != "cpu":
        raise ConfigError(f"engine onnxruntime runs on the CPU; use engine torch on {device}",
                          params=("engine",))
    if autocast is not None:
        raise ConfigError("engine onnxruntime runs in fp32; use precision fp32 (or auto) "
                          "or engine torch for bf16", params=("engine", "precision"))
    if compile_model:
        raise ConfigError("compile_model is for engine torch only; drop it or use engine torch",
                          params=("compile_model", "engine"))
    if not onnxruntime_available():
        raise DependencyError(f"engine onnxruntime needs ONNX Runtime: {INSTALL_HINT}",
                              params=("engine",))
    return "onnxruntime"


def model_key(module: nn.Module, context: int, bands: int) -> str:
    """A hash of what the exported graph depends on: weights, structure, input size, versions."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    # The structure (dilations, output stride, atrous rates) is in the module's repr.
    h.update(repr(module).encode())
    h.update(f"{context}|{bands}|{OPSET}|{torch.__version__}|{__version__}".encode())
    return h.hexdigest()[:24]


def onnx_cache_dir() -> Path:
    """``$TILESEG_ONNX_CACHE``, else ``$TILESEG_CACHE/onnx`` (``~/.cache/tileseg/onnx``)."""
    from tileseg.samples import cache_dir

    if os.environ.get(ONNX_CACHE_ENV):  # e.g. the test suite: its exports never in yours
        return Path(os.environ[ONNX_CACHE_ENV]).expanduser()
    return cache_dir() / "onnx"


def export_onnx(module: nn.Module, path: Path, context: int, bands: int, key: str = "") -> None:
    """Export ``module`` (fp32, CPU) with a dynamic batch axis to ``path``, atomically, and record
    ``key`` and the file's SHA-256 beside it (:func:`export_record`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros((1, bands, context, context))
    # concurrent workers never see a half-written file: the export is renamed into place, then
    # its record; one that reads the file and the record of two different exports in between
    # exports once more, never uses a wrong one
    with atomic_file(export_record(path)) as record_tmp, atomic_file(path) as tmp:
        with warnings.catch_warnings():
            # the TorchScript exporter is deprecated in favour of the dynamo one, which needs
            # onnxscript and handles smp's models no better; its tracer warnings are noise here
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (dummy,), str(tmp), dynamo=False, opset_version=OPSET,
                input_names=["x"], output_names=["logits"],
                dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            )
        record_tmp.write_text(json.dumps({"tileseg_onnx_export": 1, "model_key": key,
                                          "sha256": _sha256(tmp)}) + "\n")


def export_record(path: Path) -> Path:
    """The record beside a cached export: its model key and the SHA-256 of its bytes."""
    return path.with_name(path.name + ".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _mismatch(path: Path, key: str) -> str | None:
    """Why the cached file at ``path`` is not the export of the model ``key`` names, or None."""
    try:
        record = json.loads(export_record(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no record of its export beside it"
    except (OSError, ValueError) as exc:
        return f"its record cannot be read ({exc})"
    if not isinstance(record, dict) or record.get("model_key") != key:
        return "its record names another model"
    try:
        digest = _sha256(path)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    if record.get("sha256") != digest:
        return "its content is not what was exported"
    return None


def _cache_problem(folder: Path) -> str | None:
    """Why no export can be written into ``folder``, or None: creates it, writes a probe file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}.{threading.get_ident()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def cache_error(folder: Path, reason: str) -> OutputError:
    """The export cache cannot be written: the cache's problem (exit 4), not the model's."""
    variable = ONNX_CACHE_ENV if os.environ.get(ONNX_CACHE_ENV) else "TILESEG_CACHE"
    return OutputError(f"{folder}: the ONNX export cache cannot be written ({reason}); set "
                       f"{variable} to a writable folder, or use engine torch",
                       params=("engine",))


def export_path(module: nn.Module, context: int, bands: int, architecture: str) -> tuple[Path, str]:
    """Where the export of ``module`` at this input size is cached, and its model key."""
    key = model_key(module, context, bands)
    return onnx_cache_dir() / f"{architecture}-{context}px-{bands}b-{key}.onnx", key


def check_export_cache(module: nn.Module, context: int, bands: int, architecture: str) -> None:
    """Before a run that will export: the export is cached already, or the cache is writable;
    otherwise an :class:`OutputError` naming the cache (exit 4)."""
    folder = onnx_cache_dir()
    reason = _cache_problem(folder)
    if reason is None:
        return
    path, key = export_path(module, context, bands, architecture)  # hashes the weights: only here
    if not _is_file(path) or _mismatch(path, key) is not None:
        raise cache_error(folder, reason)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError as exc:  # a cache folder that may not be searched
        raise cache_error(path.parent, exc.strerror or str(exc)) from exc


def ensure_onnx(module: nn.Module, context: int, bands: int, architecture: str) -> Path:
    """The cached ONNX file of ``module`` at this input size; exported first if missing, or if
    the file there is not the recorded export of this model."""
    path, key = export_path(module, context, bands, architecture)
    if _is_file(path):
        problem = _mismatch(path, key)
        if problem is None:
            logger.debug("using cached ONNX export %s", path)
            return path
        logger.warning("%s: not used (%s); exporting the model again", path, problem)
    if _import_onnx() is None:
        raise DependencyError(f"exporting the model for ONNX Runtime needs the onnx package: "
                              f"{INSTALL_HINT}")
    reason = _cache_problem(path.parent)
    if reason is not None:
        raise cache_error(path.parent, reason)
    logger.info("exporting the model to ONNX (once per model and input size): %s", path)
    was_training = module.training
    try:
        module.eval()
        export_onnx(module, path, context, bands, key=key)
    except DiskFullError:  # one line naming the cache's folder already
        raise
    except OSError as exc:  # writing into the cache: not the model's fault
        raise cache_error(path.parent, exc.strerror or str(exc)) from exc
    except Exception as exc:
        raise ModelError(_export_failure(architecture, context, exc),
                         params=("engine", "tile_size")) from exc
    finally:
        module.train(was_training)
    return path


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        return None
    return onnx


def _export_failure(architecture: str, context: int, exc: Exception) -> str:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "adaptive_avg_pool2d" in reason:
        return (f"{architecture} cannot run with engine onnxruntime at a network input of "
                f"{context} px (its pyramid pooling needs an input that is a multiple of 48); use "
                "engine torch, or a tile_size whose input is a multiple of 48 (e.g. 513 -> 528)")
    return (f"{architecture} cannot be exported for engine onnxruntime ({reason[:200]}); "
            "use engine torch")


class TorchCpuForward:
    """Eager PyTorch on the CPU, one tile per forward pass.

    oneDNN's CPU kernels (its 1x1 convolutions, a pooled branch of one pixel) round differently
    with another intra-op thread count or batch shape; one tile per pass makes a tile's logits
    independent of the batch it came in. A model tileseg loaded itself (``concurrent``) also runs
    each pass on one thread, as many passes at once as the worker has cores, so its logits do
    not depend on the worker's cores either (and every core stays busy: measured at least as
    fast as one pass on every thread). A caller's module object runs its passes one after
    another on the process's threads: tileseg cannot know it is safe to call from two threads
    at once, and such a model only runs in this process, whose core count does not change.
    """

    def __init__(self, module: nn.Module, threads: int, autocast: torch.dtype | None,
                 concurrent: bool) -> None:
        self.module = module
        self.threads = threads
        self.autocast = autocast
        self._pool: Any = None
        if concurrent and threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tileseg-forward",
                                            initializer=torch.set_num_threads, initargs=(1,))
        self.concurrent = concurrent

    def _one(self, tile: torch.Tensor) -> torch.Tensor:
        # inference and autocast modes are per thread: set in the thread that runs the pass
        with torch.inference_mode(), torch.autocast("cpu", dtype=self.autocast or torch.float32,
                                                    enabled=self.autocast is not None):
            out: Any = self.module(tile)
        if isinstance(out, tuple | list):  # aux heads
            out = out[0]
        return out.float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        tiles = x.split(1)
        if self._pool is not None:
            return torch.cat(list(self._pool.map(self._one, tiles)))
        wanted = 1 if self.concurrent else self.threads
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
        return torch.cat([self._one(tile) for tile in tiles])
