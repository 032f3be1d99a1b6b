"""Hostile input over every command: each row is (id, command line, exit code).

Every case runs in-process through click's CliRunner, in a fresh working folder copied from
shared session fixtures (rasters, masks, labels, a user's files and folders), with the model
directories shared read-only. For every case:

* the exit code is the row's;
* stderr has at most two lines (the error and, for usage errors, a --help hint), counting what
  GDAL/PROJ print straight to file descriptor 2;
* no traceback anywhere, and no exception escaped the command;
* every file that existed before (working folder and models) still exists with the same
  checksum, unless the row names it as one the command may replace.

A row may set environment variables for its command (``env``) and name outputs that must not
exist afterwards (``absent``: the command failed before any work).

Adding a case is one line in ``CASES``. ``{model}``-style placeholders name shared model
directories (see ``models``); every other path is relative to the working folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner
from conftest import NORTH_UP, UTM, random_image

from tileseg.cli.main import cli

# rasterio warns for its in-memory copies with catch_warnings, which leaks across threads.
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@dataclass(frozen=True)
class Case:
    id: str
    argv: str  # shell syntax; $'\xff' style is not needed: see NON_UTF8
    code: int
    may_change: tuple[str, ...] = ()  # pre-existing files this command may replace
    env: tuple[tuple[str, str], ...] = ()  # environment variables set for this command only
    absent: tuple[str, ...] = ()  # outputs that must not exist afterwards (nothing was run)


NON_UTF8 = os.fsdecode(b"sc\xffne.tif")  # a name GDAL cannot take (not valid UTF-8)
M = "-m {model}"
FAST = "--tile-size 64 --overlap 16"
KEYS = (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "y"))  # no credential lookup first
NOTHING = ("out.tif", "out.tif.partial", "out.stac.json")  # a refusal before any work
AOI_INSIDE = "3.0023,54.1450,3.0076,54.1472"  # lon/lat, inside rgb.tif (UTM 31N)
TRAIN = "--classes bg,water,forest --crop-size 32 --epochs 1 --steps-per-epoch 1 --batch-size 2"

CASES: list[Case] = [
    # ---- predict: inputs
    Case("predict-missing-src", f"predict missing.tif out.tif {M}", 2),
    Case("predict-text-file", f"predict notes.txt out.tif {M}", 2),
    Case("predict-fake-tif", f"predict fake.tif out.tif {M}", 2),
    Case("predict-empty-file", f"predict empty.tif out.tif {M}", 2),
    Case("predict-folder-as-src", f"predict documents out.tif {M}", 2),
    Case("predict-no-crs", f"predict nocrs.tif out.tif {M}", 2),
    Case("predict-all-nodata", f"predict allnodata.tif out.tif {M}", 2),
    Case("predict-non-utf8-src", f"predict {NON_UTF8} out.tif {M}", 2),
    Case("predict-non-utf8-dst", f"predict rgb.tif {NON_UTF8} {M}", 2),
    # ---- predict: raster vs model
    Case("predict-7-bands", f"predict seven.tif out.tif {M}", 3),
    Case("predict-1-band", f"predict gray.tif out.tif {M}", 3),
    Case("predict-uint16-for-uint8-model", f"predict rgb16.tif out.tif {M}", 3),
    Case("predict-float-for-uint8-model", f"predict float.tif out.tif {M}", 3),
    Case("predict-bands-two", f"predict rgb.tif out.tif {M} --bands 1,2", 3),
    Case("predict-bands-letters", f"predict rgb.tif out.tif {M} --bands a,b,c", 2),
    Case("predict-bands-zero", f"predict rgb.tif out.tif {M} --bands 0,1,2", 2),
    Case("predict-bands-beyond", f"predict rgb.tif out.tif {M} --bands 1,2,9", 2),
    Case("predict-bands-empty-item", f"predict rgb.tif out.tif {M} --bands 1,,2", 2),
    # ---- predict: options
    Case("predict-tile-size-4", f"predict rgb.tif out.tif {M} --tile-size 4", 2),
    Case("predict-tile-size-word", f"predict rgb.tif out.tif {M} --tile-size big", 2),
    Case("predict-overlap-too-big", f"predict rgb.tif out.tif {M} --overlap 600", 2),
    Case("predict-overlap-negative", f"predict rgb.tif out.tif {M} --overlap -1", 2),
    Case("predict-batch-size-0", f"predict rgb.tif out.tif {M} --batch-size 0", 2),
    Case("predict-chunk-size-0", f"predict rgb.tif out.tif {M} --chunk-size 0", 2),
    Case("predict-workers-0", f"predict rgb.tif out.tif {M} --workers 0", 2),
    Case("predict-device-tpu", f"predict rgb.tif out.tif {M} --device tpu", 2),
    Case("predict-precision-fp8", f"predict rgb.tif out.tif {M} --precision fp8", 2),
    Case("predict-blend-unknown", f"predict rgb.tif out.tif {M} --blend cosine", 2),
    Case("predict-format-png", f"predict rgb.tif out.tif {M} --format png", 2),
    Case("predict-output-stride-4", f"predict rgb.tif out.tif {M} --output-stride 4", 2),
    Case("predict-probabilities-bad", f"predict rgb.tif out.tif {M} --probabilities int", 2),
    Case("predict-unknown-option", f"predict rgb.tif out.tif {M} --frobnicate", 2),
    Case("predict-no-arguments", f"predict {M}", 2),
    Case("predict-no-args", "predict", 2),
    # ---- predict: destinations
    Case("predict-dst-jpg", f"predict rgb.tif out.jpg {M}", 4),
    Case("predict-dst-folder-missing", f"predict rgb.tif nodir/out.tif {M}", 4),
    Case("predict-dst-user-file", f"predict rgb.tif precious.tif {M}", 4),
    Case("predict-dst-user-folder", f"predict rgb.tif documents {M} --format zarr", 4),
    Case("predict-zarr-dst-with-zarr", f"predict rgb.tif out.zarr {M} --zarr also.zarr", 2),
    Case("predict-vectorize-user-file", f"predict rgb.tif out.tif {M} --vectorize precious.gpkg", 4),
    Case("predict-vectorize-user-file-overwrite",
         f"predict rgb.tif out.tif {M} --vectorize precious.gpkg --overwrite", 4),
    Case("predict-vectorize-bad-ext", f"predict rgb.tif out.tif {M} --vectorize out.shpx", 4),
    Case("predict-zarr-user-folder", f"predict rgb.tif out.tif {M} --zarr documents", 4),
    # ---- predict: paths against each other, and what --overwrite may replace (issue 10, 1-3, 5)
    Case("predict-dst-is-src", f"predict rgb.tif rgb.tif {M} --overwrite", 2),
    Case("predict-zarr-is-src", f"predict rgb.tif out.tif {M} --zarr rgb.tif --overwrite", 2),
    Case("predict-zarr-is-dst", f"predict rgb.tif out.tif {M} --zarr out.tif", 2),
    Case("predict-report-is-src", f"predict rgb.tif out.tif {M} --report rgb.tif --overwrite", 2),
    Case("predict-report-is-dst", f"predict rgb.tif out.tif {M} --report out.tif", 2),
    Case("predict-vectorize-is-src", f"predict rgb.tif out.tif {M} --vectorize rgb.tif", 2),
    Case("predict-model-is-dst", f"predict rgb.tif documents {M} -m documents --format zarr", 2),
    Case("predict-overwrite-user-tif", f"predict rgb.tif precious.tif {M} --overwrite", 4),
    Case("predict-overwrite-user-folder",
         f"predict rgb.tif documents {M} --format zarr --overwrite", 4),
    Case("predict-overwrite-zarr-user-folder",
         f"predict rgb.tif out.tif {M} --zarr documents --overwrite", 4),
    Case("predict-report-user-file", f"predict rgb.tif out.tif {M} --report notes.txt", 4),
    Case("predict-report-user-file-overwrite",
         f"predict rgb.tif out.tif {M} --report notes.txt --overwrite", 4),
    Case("predict-report-folder-missing", f"predict rgb.tif out.tif {M} --report nodir/r.json", 4),
    Case("predict-resume-nothing-to-resume-user-file",
         f"predict rgb.tif precious.tif {M} --resume", 4),
    # ---- predict: options that could only fail inside a task, refused before staging
    Case("predict-atrous-negative", f"predict rgb.tif out.tif {M} --atrous-rates 0,-1,2", 2),
    Case("predict-tile-size-huge", f"predict rgb.tif out.tif {M} --tile-size 100000000", 2),
    Case("predict-scheduler-bogus", f"predict rgb.tif out.tif {M} --scheduler bogus", 2),
    Case("predict-probabilities-tif-no-zarr",
         f"predict rgb.tif out.tif {M} --probabilities uint8", 2),
    Case("predict-vectorize-same-object",
         f"predict rgb.tif s3://bucket/out.tif {M} --vectorize s3://bucket/out.tif", 2),
    Case("predict-vectorize-inside-zarr-object",
         f"predict rgb.tif s3://bucket/out.zarr {M} --vectorize s3://bucket/out.zarr/p.gpkg", 2),
    Case("predict-preview-same-object-as-report",
         f"predict rgb.tif out.tif {M} --preview s3://b/x.png --report /vsis3/b/x.png", 2),
    Case("predict-vectorize-folder-missing",
         f"predict rgb.tif out.tif {M} --vectorize nodir/p.gpkg", 4),
    # ---- predict: models
    Case("predict-model-missing", "predict rgb.tif out.tif -m nomodel", 2),
    Case("predict-model-user-folder", "predict rgb.tif out.tif -m documents", 3),
    Case("predict-model-nan-std", "predict rgb.tif out.tif -m {nan_std}", 3),
    Case("predict-model-inf-std", "predict rgb.tif out.tif -m {inf_std}", 3),
    Case("predict-model-zero-std", "predict rgb.tif out.tif -m {zero_std}", 3),
    Case("predict-model-bad-json", "predict rgb.tif out.tif -m {bad_json}", 3),
    Case("predict-model-binary-json", "predict rgb.tif out.tif -m {binary_json}", 3),
    Case("predict-model-no-weights", "predict rgb.tif out.tif -m {no_weights}", 3),
    Case("predict-model-corrupt", "predict rgb.tif out.tif -m {corrupt}", 3),
    Case("predict-model-pickled", "predict rgb.tif out.tif -m {pickled}", 3),
    Case("predict-model-config-no-encoder", "predict rgb.tif out.tif -m {no_encoder}", 3),
    Case("predict-ok", f"predict rgb.tif out.tif {M} {FAST} -q", 0),
    Case("predict-ok-no-metadata", f"predict rgb.tif out.tif -m {{bare}} {FAST} -q", 0),
    # ---- info
    Case("info-ok", f"info rgb.tif {M}", 0),
    Case("info-json", f"info rgb.tif {M} --json", 0),
    Case("info-missing", f"info missing.tif {M}", 2),
    Case("info-fake-tif", f"info fake.tif {M}", 2),
    Case("info-non-utf8", f"info {NON_UTF8} {M}", 2),
    Case("info-no-crs", f"info nocrs.tif {M}", 2),
    Case("info-no-crs-allowed", f"info nocrs.tif {M} --allow-no-crs", 0),
    Case("info-bands-letters", f"info rgb.tif {M} --bands x", 2),
    Case("info-1-band", f"info gray.tif {M}", 0),  # facts, and the misfit as one warning
    Case("info-model-nan-std", "info rgb.tif -m {nan_std}", 3),
    Case("info-tile-size-0", f"info rgb.tif {M} --tile-size 0", 2),
    Case("info-overlap-too-big", f"info rgb.tif {M} --overlap 1000", 2),
    # ---- vectorize
    Case("vectorize-gpkg", "vectorize mask.tif out.gpkg -q", 0),
    Case("vectorize-geojson", "vectorize mask.tif out.geojson -q", 0),
    Case("vectorize-parquet", "vectorize mask.tif out.parquet -q", 0),
    Case("vectorize-fgb", "vectorize mask.tif out.fgb -q", 0),
    Case("vectorize-uint32-ids", "vectorize mask32.tif out.gpkg -q", 0),
    Case("vectorize-overwrite-own-layer", "vectorize mask.tif ours.gpkg --overwrite -q", 0,
         ("ours.gpkg",)),
    Case("vectorize-missing", "vectorize missing.tif out.gpkg", 2),
    Case("vectorize-fake-tif", "vectorize fake.tif out.gpkg", 2),
    Case("vectorize-multiband", "vectorize rgb.tif out.gpkg", 2),
    Case("vectorize-float-mask", "vectorize fmask.tif out.gpkg", 2),
    Case("vectorize-no-crs", "vectorize nocrs_mask.tif out.gpkg", 2),
    Case("vectorize-non-utf8", f"vectorize {NON_UTF8} out.gpkg", 2),
    Case("vectorize-user-file", "vectorize mask.tif precious.gpkg", 4),
    Case("vectorize-overwrite-user-file", "vectorize mask.tif precious.gpkg --overwrite", 4),
    Case("vectorize-overwrite-user-geojson", "vectorize mask.tif precious.geojson --overwrite", 4),
    Case("vectorize-overwrite-user-parquet", "vectorize mask.tif precious.parquet --overwrite", 4),
    Case("vectorize-overwrite-folder", "vectorize mask.tif folder.gpkg --overwrite", 4),
    Case("vectorize-overwrite-src", "vectorize mask.tif mask.tif --overwrite", 4),
    Case("vectorize-unknown-format", "vectorize mask.tif out.shp", 4),
    Case("vectorize-store-unknown-format", "vectorize mask.tif s3://bucket/out.shp", 4),
    Case("vectorize-store-src-is-dst", "vectorize s3://bucket/m.gpkg /vsis3/bucket/m.gpkg", 4),
    Case("vectorize-folder-missing", "vectorize mask.tif nodir/out.gpkg", 4),
    Case("vectorize-bad-crs", "vectorize mask.tif out.gpkg --to-crs EPSG:999999", 2),
    Case("vectorize-min-area-negative", "vectorize mask.tif out.gpkg --min-area -1", 2),
    Case("vectorize-simplify-negative", "vectorize mask.tif out.gpkg --simplify -1", 2),
    Case("vectorize-min-area-nan", "vectorize mask.tif out.gpkg --min-area nan", 2),
    Case("vectorize-simplify-inf", "vectorize mask.tif out.gpkg --simplify inf", 2),
    Case("vectorize-connectivity-6", "vectorize mask.tif out.gpkg --connectivity 6", 2),
    Case("vectorize-classes-letters", "vectorize mask.tif out.gpkg --classes a", 2),
    Case("vectorize-chunk-size-0", "vectorize mask.tif out.gpkg --chunk-size 0", 2),
    Case("vectorize-scheduler-bogus", "vectorize mask.tif out.gpkg --scheduler bogus", 2),
    # ---- issue 18, a new user's run: GeoJSON in a CRS it cannot name
    Case("vectorize-geojson-crs-without-epsg",
         "vectorize mask.tif out.geojson --to-crs '+proj=tmerc +lon_0=3.5 +datum=WGS84'", 2),
    # ---- evaluate
    Case("evaluate-ok", "evaluate mask.tif labels.tif", 0),
    Case("evaluate-json", "evaluate mask.tif labels.tif --json", 0),
    Case("evaluate-all-nodata-labels", "evaluate mask.tif nolabels.tif", 2),
    Case("evaluate-missing-pred", "evaluate missing.tif labels.tif", 2),
    Case("evaluate-missing-labels", "evaluate mask.tif missing.tif", 2),
    Case("evaluate-fake-labels", "evaluate mask.tif fake.tif", 2),
    Case("evaluate-misaligned", "evaluate mask.tif shifted.tif", 2),
    Case("evaluate-no-class-list", "evaluate labels.tif labels.tif", 2),
    Case("evaluate-window-three-numbers", "evaluate mask.tif labels.tif --window 0,0,5", 2),
    Case("evaluate-window-outside", "evaluate mask.tif labels.tif --window 0,0,500,500", 2),
    Case("evaluate-block-size-1", "evaluate mask.tif labels.tif --block-size 1", 2),
    Case("evaluate-label-values-twice", "evaluate mask.tif labels.tif --label-values 1,1,2", 2),
    Case("evaluate-undeclared-label", "evaluate mask.tif labels.tif --label-values 5,6,7", 2),
    # ---- train
    Case("train-out-is-a-file", f"train rgb.tif labels.tif -o notes.txt {TRAIN}", 4),
    Case("train-out-is-a-file-overwrite",
         f"train rgb.tif labels.tif -o notes.txt {TRAIN} --overwrite", 4),
    Case("train-out-user-folder", f"train rgb.tif labels.tif -o documents {TRAIN}", 4),
    Case("train-out-user-folder-overwrite",
         f"train rgb.tif labels.tif -o documents {TRAIN} --overwrite", 4),
    Case("train-all-nodata-labels", f"train rgb.tif nolabels.tif -o m {TRAIN}", 2),
    Case("train-misaligned", f"train rgb.tif shifted.tif -o m {TRAIN}", 2),
    Case("train-missing-image", f"train missing.tif labels.tif -o m {TRAIN}", 2),
    Case("train-one-class", "train rgb.tif labels.tif -o m --classes bg", 2),
    Case("train-crop-8", f"train rgb.tif labels.tif -o m {TRAIN} --crop-size 8", 2),
    Case("train-holdout-0.9", f"train rgb.tif labels.tif -o m {TRAIN} --holdout-fraction 0.9", 2),
    Case("train-class-values-count", f"train rgb.tif labels.tif -o m {TRAIN} --class-values 1", 2),
    Case("train-colors-bad", f"train rgb.tif labels.tif -o m {TRAIN} --colors red,blue", 2),
    Case("train-scale-range-bad", f"train rgb.tif labels.tif -o m {TRAIN} --scale-range 2", 2),
    Case("train-architecture-unknown",
         f"train rgb.tif labels.tif -o m {TRAIN} --architecture unet", 2),
    Case("train-no-out", "train rgb.tif labels.tif --classes a,b", 2),
    Case("train-ok", f"train rgb.tif labels.tif -o m {TRAIN} -q", 0),
    # ---- batch
    Case("batch-missing-manifest", "batch nothing.txt -o masks", 2),
    Case("batch-bad-yaml", "batch bad.yaml", 2),
    Case("batch-bad-csv", "batch bad.csv", 2),
    Case("batch-empty-manifest", "batch empty.txt -o masks", 2),
    Case("batch-text-without-output-dir", "batch scenes.txt", 2),
    Case("batch-bands-letters", "batch scenes.txt -o masks --bands a", 2),
    Case("batch-missing-scene", f"batch scenes.txt -o masks {M} -q", 5),
    # ---- sample and the group
    Case("sample-list", "sample --list", 0),
    Case("sample-unknown", "sample no-such-sample", 2),
    Case("sample-offline-not-cached", "sample rmnp-rgb --offline", 2),
    Case("no-such-command", "segment rgb.tif", 2),
    Case("version", "--version", 0),
    # ---- predict: model files, refused when the model loads, before any staging (issue 18)
    Case("predict-model-negative-std", "predict rgb.tif out.tif -m {negative_std}", 3),
    Case("predict-model-colour-300", "predict rgb.tif out.tif -m {colour_300}", 3),
    Case("predict-model-colour-bad-hex", "predict rgb.tif out.tif -m {colour_bad_hex}", 3),
    Case("predict-model-class-name-bell", "predict rgb.tif out.tif -m {name_bell}", 3),
    Case("predict-model-tileseg-json-folder", "predict rgb.tif out.tif -m {json_folder}", 3),
    Case("predict-model-weights-folder", "predict rgb.tif out.tif -m {weights_folder}", 3),
    Case("info-model-colour-300", "info rgb.tif -m {colour_300}", 3),
    # ---- issue 18, hostile inputs: sample caches, unwritable folders found before any work
    # (/proc/sys is a real read-only folder, for root too), GDAL containers and subdatasets,
    # manifests that bomb, endpoints that are not URLs
    Case("sample-cache-is-a-file", "sample rmnp-rgb", 4, env=(("TILESEG_CACHE", "notes.txt"),)),
    Case("sample-cache-read-only", "sample rmnp-rgb", 4,
         env=(("TILESEG_CACHE", "/proc/sys/tileseg-cache"),)),
    Case("predict-preview-read-only-folder",
         f"predict rgb.tif out.tif {M} {FAST} --preview /proc/sys/p.png", 4, absent=("out.tif",)),
    Case("predict-report-read-only-folder",
         f"predict rgb.tif out.tif {M} {FAST} --report /proc/sys/r.json", 4, absent=("out.tif",)),
    Case("train-out-read-only-folder", f"train rgb.tif labels.tif -o /proc/sys/m {TRAIN}", 4),
    Case("batch-summary-read-only-folder",
         f"batch scenes.txt -o masks {M} --summary /proc/sys/s.json", 4),
    Case("batch-summary-beside-manifest-in-read-only-folder",
         f"batch /proc/sys/kernel/ostype -o masks {M}", 4),
    Case("batch-output-dir-read-only", f"batch scenes.txt -o /proc/sys {M}", 4),
    Case("info-netcdf-several-variables", f"info multi.nc {M}", 2),
    Case("predict-netcdf-several-variables", f"predict multi.nc out.tif {M}", 2,
         absent=("out.tif",)),
    Case("info-netcdf-subdataset", f"info netcdf:multi.nc:Band1 {M}", 0),
    Case("info-netcdf-quoted-subdataset", f"info 'NETCDF:\"multi.nc\":Band2' {M}", 0),
    Case("info-netcdf-unknown-variable", f"info 'NETCDF:\"multi.nc\":nope' {M}", 2),
    Case("info-netcdf-subdataset-file-missing", f"info netcdf:gone.nc:Band1 {M}", 2),
    Case("predict-gpkg-subdataset", f"predict GPKG:tables.gpkg:B out.tif {M} {FAST} -q", 0),
    Case("batch-yaml-alias-bomb", "batch bomb.yaml", 2),
    Case("batch-yaml-deep-nesting", "batch deep.yaml", 2),
    Case("batch-yaml-recursive-alias", "batch recursive.yaml", 2),
    Case("predict-s3-endpoint-not-a-url", f"predict rgb.tif s3://bucket/out.tif {M}", 2,
         env=(("AWS_ENDPOINT_URL", "not a url"), *KEYS)),
    Case("vectorize-s3-endpoint-no-scheme", "vectorize mask.tif s3://bucket/p.gpkg", 2,
         env=(("AWS_ENDPOINT_URL", "127.0.0.1:9000"), *KEYS)),
    # ---- a bucket root as an output on a store: refused before any request (issue 18, 5);
    # no store answers here, so a request would fail differently and slowly
    Case("predict-dst-bucket-root", f"predict rgb.tif s3://masks {M}", 4),
    Case("predict-dst-bucket-root-slash", f"predict rgb.tif s3://masks/ --format zarr {M}", 4),
    Case("predict-dotted-bucket-root", f"predict rgb.tif s3://masks.tif {M}", 4),
    Case("predict-report-bucket-root",
         f"predict rgb.tif out.tif --report s3://reports.json {M}", 4),
    Case("vectorize-bucket-root", "vectorize mask.tif s3://polygons.gpkg", 4),
    # ---- reads (issue 18): a raster placed by ground control points only (rectify, not assign)
    Case("predict-gcps-only", f"predict gcps.tif out.tif {M}", 2),
    Case("info-gcps-only", f"info gcps.tif {M}", 2),
    # ---- issue 21, models as users hold them: checkpoints whose unpickling would run code
    # (never run: the payload would leave payload-ran here), truncated files, ONNX files
    # tileseg cannot run, items that point away, and the model command group
    Case("predict-ckpt-pickled-payload", "predict rgb.tif out.tif -m {payload_ckpt}", 3,
         absent=("out.tif", "payload-ran")),
    Case("predict-pth-pickled-payload", "predict rgb.tif out.tif -m {payload_pth} "
         "--architecture unet --encoder resnet18", 3, absent=("out.tif", "payload-ran")),
    Case("predict-ckpt-truncated", "predict rgb.tif out.tif -m {cut_ckpt}", 3, absent=("out.tif",)),
    Case("predict-ckpt-4-bands", "predict rgb.tif out.tif -m {ckpt_4_bands}", 3,
         absent=("out.tif",)),
    Case("predict-ckpt-multilabel", "predict rgb.tif out.tif -m {ckpt_multilabel}", 3),
    Case("predict-ckpt-ok", f"predict rgb.tif out.tif -m {{ckpt}} {FAST} --tta flips -q", 0),
    Case("predict-weights-no-network", "predict rgb.tif out.tif -m {bare_weights}", 3,
         absent=("out.tif",)),
    Case("predict-weights-wrong-network", "predict rgb.tif out.tif -m {bare_weights} "
         "--architecture pspnet --encoder resnet18", 3, absent=("out.tif",)),
    Case("predict-weights-unknown-architecture", "predict rgb.tif out.tif -m {bare_weights} "
         "--architecture transformer9000 --encoder resnet18", 3),
    Case("predict-onnx-two-outputs", "predict rgb.tif out.tif -m {onnx_two_outputs}", 3,
         absent=("out.tif",)),
    Case("predict-onnx-4-bands", "predict rgb.tif out.tif -m {onnx_4_bands}", 3,
         absent=("out.tif",)),
    Case("predict-onnx-oblong-input", "predict rgb.tif out.tif -m {onnx_oblong}", 3,
         absent=("out.tif",)),
    Case("predict-onnx-truncated", "predict rgb.tif out.tif -m {onnx_cut}", 3,
         absent=("out.tif",)),
    Case("predict-onnx-engine-torch", "predict rgb.tif out.tif -m {onnx} --engine torch", 2,
         absent=("out.tif",)),
    Case("predict-onnx-ok", f"predict rgb.tif out.tif -m {{onnx}} {FAST} --tta d4 -q", 0),
    Case("predict-item-remote-href", "predict rgb.tif out.tif -m {item_remote}", 3,
         absent=("out.tif",)),
    Case("predict-item-artifact-missing", "predict rgb.tif out.tif -m {item_gone}", 3),
    Case("predict-tta-unknown", f"predict rgb.tif out.tif {M} --tta rot45", 2),
    Case("model-info-ok", "model info {ckpt}", 0),
    Case("model-info-missing", "model info nomodel", 2),
    Case("model-info-notes", "model info notes.txt", 3),
    Case("model-info-payload", "model info {payload_ckpt}", 3, absent=("payload-ran",)),
    Case("model-export-over-user-file", f"model export-stac {M[3:]} precious.tif --overwrite", 4),
    Case("model-export-read-only-folder", f"model export-stac {M[3:]} /proc/sys/item.json", 4),
    Case("model-export-ok", "model export-stac {onnx} model-item.json -q", 0),
    Case("model-no-subcommand", "model frobnicate", 2),
    # ---- issue 20, scenes: STAC items, several files as one raster, the resolution, areas of
    # interest and the output's STAC item; every refusal before any work, nothing written
    Case("predict-item-ok", f"predict item.json out.tif {M} --bands red,green,blue {FAST} -q", 0),
    Case("predict-stack-ok", f"predict b1.tif b2.tif b3.tif -o out.tif {M} {FAST} -q", 0),
    Case("predict-stack-last-is-dst", f"predict b1.tif b2.tif b3.tif out.tif {M} {FAST} -q", 0),
    Case("predict-item-no-matching-assets",
         f"predict item-nomatch.json out.tif {M} --bands red,green,blue", 2, absent=NOTHING),
    Case("predict-item-model-names-no-bands", f"predict item.json out.tif {M}", 2,
         absent=NOTHING),
    Case("predict-item-numbered-bands", f"predict item.json out.tif {M} --bands 1,2,3", 2,
         absent=NOTHING),
    Case("predict-item-unreachable-asset",
         f"predict item-gone.json out.tif {M} --bands red,green,blue", 2, absent=NOTHING),
    Case("predict-item-assets-apart",
         f"predict item-apart.json out.tif {M} --bands red,green,blue", 2, absent=NOTHING),
    Case("predict-item-collection", f"predict collection.json out.tif {M}", 2, absent=NOTHING),
    Case("predict-item-collection-unknown-id",
         f"predict 'collection.json#nope' out.tif {M} --bands red,green,blue", 2,
         absent=NOTHING),
    Case("predict-item-missing", f"predict nothere.json out.tif {M}", 2, absent=NOTHING),
    Case("predict-item-not-json", f"predict bad.json out.tif {M}", 2, absent=NOTHING),
    Case("predict-item-no-assets", f"predict item-empty.json out.tif {M}", 2, absent=NOTHING),
    Case("predict-stack-missing-file", f"predict b1.tif gone.tif b3.tif out.tif {M}", 2,
         absent=NOTHING),
    Case("predict-stack-apart", f"predict b1.tif far.tif b3.tif out.tif {M}", 2,
         absent=NOTHING),
    Case("predict-stack-not-a-raster", f"predict b1.tif notes.txt b3.tif out.tif {M}", 2,
         absent=NOTHING),
    Case("predict-bands-names-on-raster", f"predict rgb.tif out.tif {M} --bands red,green,blue",
         2, absent=NOTHING),
    Case("predict-resolution-negative", f"predict rgb.tif out.tif {M} --resolution -10", 2),
    Case("predict-resolution-word", f"predict rgb.tif out.tif {M} --resolution fine", 2),
    Case("predict-resolution-model-no-gsd", f"predict rgb.tif out.tif {M} --resolution model", 2,
         absent=NOTHING),
    Case("predict-resolution-absurdly-fine",
         f"predict rgb.tif out.tif {M} --resolution 0.000001", 2, absent=NOTHING),
    Case("predict-resampling-unknown", f"predict rgb.tif out.tif {M} --resampling fancy", 2),
    Case("predict-aoi-points", f"predict rgb.tif out.tif {M} --aoi points.geojson", 2,
         absent=NOTHING),
    Case("predict-aoi-outside", f"predict rgb.tif out.tif {M} --aoi far.geojson", 2,
         absent=NOTHING),
    Case("predict-aoi-bbox-outside", f"predict rgb.tif out.tif {M} --aoi 10,10,11,11", 2,
         absent=NOTHING),
    Case("predict-aoi-bbox-reversed", f"predict rgb.tif out.tif {M} --aoi 3.01,54.15,3,54.14",
         2),
    Case("predict-aoi-missing-file", f"predict rgb.tif out.tif {M} --aoi nothere.gpkg", 2),
    Case("predict-aoi-not-vector", f"predict rgb.tif out.tif {M} --aoi notes.txt", 2,
         absent=NOTHING),
    Case("predict-aoi-crs-without-aoi", f"predict rgb.tif out.tif {M} --aoi-crs EPSG:4326", 2),
    Case("predict-aoi-crs-unknown",
         f"predict rgb.tif out.tif {M} --aoi {AOI_INSIDE} --aoi-crs EPSG:999999", 2,
         absent=NOTHING),
    Case("predict-aoi-ok", f"predict rgb.tif out.tif {M} {FAST} --aoi {AOI_INSIDE} -q", 0),
    Case("predict-stac-item-user-file", f"predict rgb.tif mine.tif {M} {FAST}", 4,
         absent=("mine.tif",)),
    Case("predict-stac-item-user-file-overwrite", f"predict rgb.tif mine.tif {M} {FAST} "
         "--overwrite", 4, absent=("mine.tif",)),
    Case("predict-no-stac-item-beside-user-file",
         f"predict rgb.tif mine.tif {M} {FAST} --no-stac-item -q", 0),
    Case("info-item", f"info item.json {M} --bands red,green,blue", 0),
    Case("info-stack", f"info b1.tif b2.tif b3.tif {M}", 0),
    Case("info-item-no-matching-assets", f"info item-nomatch.json {M} --bands red", 2),
    Case("batch-collection", f"batch collection.json -o masks {M} --bands red,green,blue {FAST} -q",
         0),
    Case("batch-named-bands-on-rasters", f"batch scenes.txt -o masks {M} --bands red", 2),
    # ---- one place for each rule: choice sets, shared option groups, the scheduler resolved
    # once (before anything is written), the scheduled-job runner folded into tileseg batch
    Case("predict-scheduler-processes", f"predict rgb.tif out.tif {M} {FAST} --scheduler "
         "processes", 2, absent=NOTHING),
    Case("batch-scheduler-processes", f"batch scenes.txt -o masks {M} --scheduler processes", 2,
         absent=("masks", "scenes.txt.summary.json")),
    Case("batch-scheduler-and-local-workers", f"batch scenes.txt -o masks {M} --scheduler "
         "tcp://127.0.0.1:1 --local-workers 1", 2, absent=("masks", "scenes.txt.summary.json")),
    Case("batch-local-workers-and-slurm-jobs", f"batch scenes.txt -o masks {M} --local-workers 1 "
         "--slurm-jobs 1", 2, absent=("masks", "scenes.txt.summary.json")),
    Case("batch-local-workers-0", f"batch scenes.txt -o masks {M} --local-workers 0", 2,
         absent=("masks", "scenes.txt.summary.json")),
    Case("batch-wait-workers-negative", f"batch scenes.txt -o masks {M} --wait-workers -1", 2,
         absent=("masks", "scenes.txt.summary.json")),
    Case("batch-lock-in-read-only-folder", f"batch scenes.txt -o masks {M} --lock /proc/sys/b.lock",
         4, absent=("masks", "scenes.txt.summary.json")),
    Case("batch-tta-unknown", f"batch scenes.txt -o masks {M} --tta rot45", 2, absent=("masks",)),
    Case("batch-format-unknown", f"batch scenes.txt -o masks {M} --format png", 2,
         absent=("masks",)),
    Case("batch-output-stride-unknown", f"batch scenes.txt -o masks {M} --output-stride 4", 2,
         absent=("masks",)),
]


# --------------------------------------------------------------------------- shared fixtures


def _write(path: Path, data: np.ndarray, *, crs: str | None = UTM,
           transform: Affine = NORTH_UP, nodata: float | None = None,
           tags: dict[str, str] | None = None) -> None:
    if data.ndim == 2:
        data = data[None]
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
                       count=data.shape[0], dtype=data.dtype.name, crs=crs,
                       transform=transform, nodata=nodata) as dst:
        dst.write(data)
        if tags:
            dst.update_tags(**tags)


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working folder's starting content: small rasters, masks, labels, a user's files."""
    import geopandas as gpd
    import shapely

    root = tmp_path_factory.mktemp("hostile") / "assets"
    root.mkdir()
    image = random_image(3, 60, 70)
    _write(root / "rgb.tif", image)
    _write(root / "rgb16.tif", random_image(3, 60, 70, "uint16"))
    _write(root / "float.tif", random_image(3, 60, 70, "float32"))
    _write(root / "gray.tif", image[:1])
    _write(root / "seven.tif", random_image(7, 60, 70))
    _write(root / "nocrs.tif", image, crs=None)
    _write(root / "allnodata.tif", np.zeros_like(image), nodata=0)
    classes = json.dumps([{"id": i, "name": n, "color": "#000000"}
                          for i, n in enumerate(("background", "water", "forest"))])
    rng = np.random.default_rng(3)
    mask = (rng.random((60, 70)) * 3).astype(np.uint8)
    _write(root / "mask.tif", mask, nodata=255, tags={"TILESEG_CLASSES": classes})
    _write(root / "nocrs_mask.tif", mask, crs=None, nodata=255)
    _write(root / "fmask.tif", mask.astype(np.float32))
    big_ids = np.zeros((60, 70), np.uint32)
    big_ids[10:20, 10:20] = 3_000_000_000
    _write(root / "mask32.tif", big_ids)
    labels = mask.copy()
    labels[:5] = 255
    _write(root / "labels.tif", labels, nodata=255)
    _write(root / "nolabels.tif", np.full_like(labels, 255), nodata=255)
    _write(root / "shifted.tif", labels, nodata=255,
           transform=Affine(10.0, 0.0, 500050.0, 0.0, -10.0, 6000000.0))
    (root / "notes.txt").write_text("my notes\n")
    (root / "fake.tif").write_text("not a raster\n")
    (root / "empty.tif").write_bytes(b"")
    (root / "precious.tif").write_bytes(b"precious")
    (root / "documents").mkdir()
    (root / "documents" / "report.txt").write_text("quarterly report\n")
    (root / "folder.gpkg").mkdir()
    (root / "folder.gpkg" / "inside.txt").write_text("a folder named like a layer\n")
    theirs = gpd.GeoDataFrame({"name": ["field"]}, geometry=[shapely.box(0, 0, 1, 1)],
                              crs="EPSG:4326")
    theirs.to_file(root / "precious.gpkg")
    theirs.to_file(root / "precious.geojson")
    theirs.to_parquet(root / "precious.parquet")
    from tileseg.vectorization import VectorizeConfig, vectorize

    vectorize(root / "mask.tif", root / "ours.gpkg", VectorizeConfig(scheduler="sync"))
    (root / "scenes.txt").write_text("missing.tif\n")
    (root / "empty.txt").write_text("# nothing here\n")
    (root / "bad.yaml").write_text("scenes: [unclosed\n")
    (root / "bad.csv").write_text("foo,bar\n1,2\n")
    (root / "cache").mkdir()  # an empty sample cache: nothing is fetched in these tests
    _containers(root, image)
    # reads (issue 18): a scan placed by ground control points only
    from rasterio.control import GroundControlPoint

    with rasterio.open(root / "gcps.tif", "w", driver="GTiff", height=60, width=70, count=3,
                       dtype="uint8") as dst:
        dst.write(image)
        dst.gcps = ([GroundControlPoint(r, c, 500000 + 10 * c, 6000000 - 10 * r)
                     for r, c in ((0, 0), (0, 69), (59, 0), (59, 69))], "EPSG:32631")
    _scenes(root, image)
    return root


def _scenes(root: Path, image: np.ndarray) -> None:
    """Issue 20: one file per band, STAC items (good, and each way of being bad), an
    ItemCollection, AOIs that are not polygons or lie elsewhere, a user's file where the
    output's STAC item would go."""
    import geopandas as gpd
    import shapely

    for n in range(3):
        _write(root / f"b{n + 1}.tif", image[n])
    _write(root / "far.tif", image[1], transform=Affine(10.0, 0.0, 600000.0, 0.0, -10.0,
                                                        6000000.0))

    def item(name: str, assets: dict[str, tuple[str, str]]) -> dict[str, object]:
        doc = {"type": "Feature", "stac_version": "1.0.0", "id": name, "geometry": None,
               "properties": {"datetime": "2024-06-01T10:00:00Z"}, "links": [],
               "assets": {key: {"href": href, "type": "image/tiff; application=geotiff",
                                "roles": ["data"], "eo:bands": [{"name": key,
                                                                 "common_name": common}]}
                          for key, (href, common) in assets.items()}}
        (root / f"{name}.json").write_text(json.dumps(doc))
        return doc

    rgb = {"B04": ("./b1.tif", "red"), "B03": ("./b2.tif", "green"), "B02": ("./b3.tif", "blue")}
    good = item("item", rgb)
    item("item-nomatch", {"B01": ("./b1.tif", "coastal"), "B09": ("./b2.tif", "nir09"),
                          "B10": ("./b3.tif", "cirrus")})
    item("item-gone", {**rgb, "B03": ("./gone.tif", "green")})
    item("item-apart", {**rgb, "B03": ("./far.tif", "green")})
    empty = {**good, "id": "item-empty", "assets": {}}
    (root / "item-empty.json").write_text(json.dumps(empty))
    other = {**good, "id": "scene-b"}
    (root / "collection.json").write_text(json.dumps(
        {"type": "FeatureCollection", "features": [{**good, "id": "scene-a"}, other]}))
    (root / "bad.json").write_text("not json at all\n")
    gpd.GeoDataFrame({"n": [1, 2]}, geometry=[shapely.Point(3.005, 54.146),
                                             shapely.Point(3.006, 54.147)],
                     crs="EPSG:4326").to_file(root / "points.geojson")
    gpd.GeoDataFrame({"n": [1]}, geometry=[shapely.box(10, 10, 11, 11)],
                     crs="EPSG:4326").to_file(root / "far.geojson")
    (root / "mine.stac.json").write_text('{"type": "Feature", "note": "my own catalogue"}\n')


def _containers(root: Path, image: np.ndarray) -> None:
    """A NetCDF with two variables and a GeoPackage with two raster tables (GDAL writes both:
    a two-band GeoTIFF becomes variables Band1 and Band2), and YAML manifests that bomb."""
    import rasterio.shutil

    _write(root / "two-bands.tif", image[:2, :20, :20])
    rasterio.shutil.copy(root / "two-bands.tif", root / "multi.nc", driver="netCDF")
    for n, table in enumerate("AB"):
        rasterio.shutil.copy(root / "rgb.tif", root / "tables.gpkg", driver="GPKG",
                             RASTER_TABLE=table, **({"APPEND_SUBDATASET": "YES"} if n else {}))
    levels = ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"&l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 7)]
    (root / "bomb.yaml").write_text(f"- src: rgb.tif\n  dst: o.tif\n  bands: [{', '.join(levels)}]\n")
    (root / "deep.yaml").write_text("- src: rgb.tif\n  dst: o.tif\n  bands: " + "[" * 5000
                                    + "]" * 5000 + "\n")
    (root / "recursive.yaml").write_text("- &scene {src: rgb.tif, dst: o.tif, bands: [*scene]}\n")


@pytest.fixture(scope="session")
def models(deeplab_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model directories by placeholder name: the good one and broken variants."""
    root = tmp_path_factory.mktemp("hostile-models")
    meta = json.loads((deeplab_dir / "tileseg.json").read_text())

    def variant(name: str, **files: str | bytes | None) -> Path:
        path = root / name
        path.mkdir()
        for original in deeplab_dir.iterdir():
            if original.suffix == ".safetensors":  # 45 MB: shared, not copied ten times
                (path / original.name).symlink_to(original)
            else:
                shutil.copy(original, path / original.name)
        for filename, content in files.items():
            target = path / filename.replace("_", ".", 1)
            target.unlink(missing_ok=True)  # never write through the shared weights' link
            if isinstance(content, bytes):
                target.write_bytes(content)
            elif content is not None:
                target.write_text(content)
        return path

    def with_std(value: float) -> str:
        return json.dumps({**meta, "normalization": {**meta["normalization"],
                                                     "std": [1.0, value, 1.0]}})

    def with_class(index: int, **fields: object) -> str:
        classes = [dict(c) for c in meta["classes"]]
        classes[index].update(fields)
        return json.dumps({**meta, "classes": classes})

    def folder_at(name: str, filename: str) -> Path:
        path = variant(name, **{filename.replace(".", "_", 1): None})
        (path / filename).mkdir()
        return path

    config = json.loads((deeplab_dir / "config.json").read_text())
    config.pop("encoder_name")
    pickled = root / "pickled.pt"
    torch.save({"model": torch.nn.Conv2d(3, 3, 1)}, pickled)
    return {
        "model": deeplab_dir,
        "nan_std": variant("nan_std", tileseg_json=with_std(float("nan"))),
        "inf_std": variant("inf_std", tileseg_json=with_std(float("inf"))),
        "zero_std": variant("zero_std", tileseg_json=with_std(0.0)),
        "bad_json": variant("bad_json", tileseg_json="{not json"),
        "binary_json": variant("binary_json", tileseg_json=b"\xff\xfe\x00garbage"),
        "no_weights": variant("no_weights", model_safetensors=None),
        "corrupt": variant("corrupt", model_safetensors=b"\x00garbage" * 10),
        "no_encoder": variant("no_encoder", config_json=json.dumps(config)),
        "bare": variant("bare", tileseg_json=None),
        "pickled": pickled,
        # model files (issue 18)
        "negative_std": variant("negative_std", tileseg_json=with_std(-1.0)),
        "colour_300": variant("colour_300", tileseg_json=with_class(1, color=[300, 0, 0])),
        "colour_bad_hex": variant("colour_bad_hex", tileseg_json=with_class(1, color="#-10000")),
        "name_bell": variant("name_bell", tileseg_json=with_class(0, name="water\u0007")),
        "json_folder": folder_at("json_folder", "tileseg.json"),
        "weights_folder": folder_at("weights_folder", "model.safetensors"),
        **_issue21_models(root / "issue21", meta),
    }


def _checksums(*folders: Path) -> dict[str, str]:
    sums = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and str(path.resolve()) not in sums:
                sums[str(path.resolve())] = hashlib.blake2b(path.read_bytes(),
                                                            digest_size=16).hexdigest()
    return sums


def _signatures(*folders: Path) -> dict[str, tuple[int, int, int]]:
    # the shared models are hundreds of MB: per case, size/mtime/inode (any write changes
    # them); their content is checksummed once over the whole table (test_models_unchanged)
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino)
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def model_checksums(models: dict[str, Path]) -> dict[str, str]:
    return _checksums(*{p.parent for p in models.values()})


@pytest.fixture
def workdir(assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    work = tmp_path / "work"
    shutil.copytree(assets, work, symlinks=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("TILESEG_CACHE", str(work / "cache"))
    monkeypatch.delenv("TILESEG_SCHEDULER", raising=False)
    yield work


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Case, workdir: Path, models: dict[str, Path],
                       model_checksums: dict[str, str],
                       capfd: pytest.CaptureFixture[str]) -> None:
    argv = [arg.format(**{k: str(v) for k, v in models.items()})
            for arg in shlex.split(case.argv)]
    model_folders = {p.parent for p in models.values()}
    before, models_before = _checksums(workdir), _signatures(*model_folders)
    capfd.readouterr()
    result = CliRunner().invoke(cli, argv, env=dict(case.env) or None)
    native = capfd.readouterr()  # what C libraries wrote straight to file descriptors 1 and 2
    stderr = result.stderr + native.err
    everything = result.output + native.out + native.err
    assert result.exit_code == case.code, (result.exit_code, everything)
    escaped = result.exception
    assert escaped is None or isinstance(escaped, SystemExit), repr(escaped)
    assert "Traceback" not in everything, everything
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) <= 2, stderr
    if case.code != 0:
        assert lines and lines[0].startswith("Error: "), stderr
    after = _checksums(workdir)
    changed = sorted(path for path, digest in before.items()
                     if after.get(path) != digest
                     and os.path.relpath(path, workdir.resolve()) not in case.may_change)
    assert not changed, f"changed or removed: {changed}"
    models_after = _signatures(*model_folders)
    assert all(models_after.get(p) == s for p, s in models_before.items()), "a model changed"
    made = [name for name in case.absent if (workdir / name).exists()]
    assert not made, f"written though the command failed before any work: {made}"


def test_models_unchanged_after_the_table(models: dict[str, Path],
                                          model_checksums: dict[str, str]) -> None:
    # runs after the table (same module, defined later): the shared models' content is intact
    assert _checksums(*{p.parent for p in models.values()}) == model_checksums


def test_the_table_covers_every_command() -> None:
    commands = {shlex.split(c.argv)[0] for c in CASES}
    assert {"predict", "info", "vectorize", "evaluate", "train", "batch", "sample",
            "model"} <= commands
    assert len(CASES) >= 80 and len({c.id for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------- issue 21 models


class _Payload:
    """Unpickled, this would leave ``payload-ran`` in the working folder."""

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, ("touch payload-ran",))


def _issue21_models(root: Path, meta: dict) -> dict[str, Path]:
    """Checkpoints, weights, ONNX files and MLM items, good and broken (tiny networks)."""
    import warnings

    from tileseg.models.loaded import ModelSpec, build_model

    root.mkdir()
    spec = ModelSpec("Unet", "resnet18", in_channels=3, classes=3, extra={"encoder_depth": 3,
                                                                         "decoder_channels": (16, 8, 4)})
    net = build_model(spec).eval()
    task = {"model": "unet", "backbone": "resnet18", "in_channels": 3, "num_classes": 3,
            "task": "multiclass"}

    def checkpoint(name: str, hparams: dict, module: torch.nn.Module = net, **more: object) -> Path:
        folder = root / name.split(".")[0]
        folder.mkdir()
        state = {f"model.{k}": v for k, v in module.state_dict().items()}
        torch.save({"state_dict": state, "hyper_parameters": hparams, **more}, folder / name)
        (folder / "tileseg.json").write_text(json.dumps(meta))
        return folder / name

    # TorchGeo builds the default U-Net: these are full-depth resnet18 U-Nets
    unet = build_model(ModelSpec("Unet", "resnet18", in_channels=3, classes=3)).eval()
    unet4 = build_model(ModelSpec("Unet", "resnet18", in_channels=4, classes=3)).eval()
    ckpt = checkpoint("good.ckpt", task, unet)
    cut = root / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 3])
    (root / "bare").mkdir()
    torch.save(net.state_dict(), root / "bare" / "weights.pth")
    torch.save({"state_dict": unet.state_dict(), "extra": _Payload()}, root / "payload.pth")

    def onnx(name: str, module: torch.nn.Module, bands: int = 3,
             size: tuple[int, int] | None = None, outputs: int = 1) -> Path:
        folder = root / name
        folder.mkdir()
        dims = {0: "b"} if size else {0: "b", 2: "h", 3: "w"}
        names = ["logits", "extra"][:outputs]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.zeros(1, bands, *(size or (32, 32))),),
                              str(folder / "net.onnx"), dynamo=False, opset_version=17,
                              input_names=["x"], output_names=names,
                              dynamic_axes={n: dims for n in ["x", *names]})
        (folder / "tileseg.json").write_text(json.dumps(
            {**meta, "in_channels": bands, "network": {"input_multiple": 2}}))
        return folder / "net.onnx"

    class Two(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x * 2

    conv = torch.nn.Conv2d(3, 3, 3, padding=1).eval()
    good_onnx = onnx("onnx", conv)
    onnx_cut = root / "cut.onnx"
    onnx_cut.write_bytes(good_onnx.read_bytes()[:300])
    item_remote = root / "remote.json"
    item = {"type": "Feature", "stac_version": "1.1.0", "id": "m", "geometry": None,
            "properties": {"datetime": None, "mlm:name": "m", "mlm:architecture": "Unet",
                           "mlm:tasks": ["semantic-segmentation"],
                           "mlm:input": [{"name": "x", "input": {
                               "shape": [-1, 3, -1, -1],
                               "dim_order": ["batch", "channel", "height", "width"],
                               "data_type": "float32"}}],
                           "mlm:output": [{"name": "y", "tasks": ["semantic-segmentation"]}]},
            "assets": {"model": {"href": "https://example.com/net.onnx", "roles": ["mlm:model"],
                                 "mlm:artifact_type": "onnx"}}}
    item_remote.write_text(json.dumps(item))
    item["assets"]["model"]["href"] = "gone.onnx"  # type: ignore[index]
    (root / "gone.json").write_text(json.dumps(item))
    return {
        "ckpt": ckpt,
        "payload_ckpt": checkpoint("payload.ckpt", task, unet, extra=_Payload()),
        "payload_pth": root / "payload.pth",
        "cut_ckpt": cut,
        "ckpt_4_bands": checkpoint("four.ckpt", {**task, "in_channels": 4}, unet4),
        "ckpt_multilabel": checkpoint("multilabel.ckpt", {**task, "task": "multilabel",
                                                          "num_labels": 3}, unet),
        "bare_weights": root / "bare" / "weights.pth",
        "onnx": good_onnx,
        "onnx_two_outputs": onnx("onnx2", Two(), outputs=2),
        "onnx_4_bands": onnx("onnx4", torch.nn.Conv2d(4, 3, 1).eval(), bands=4),
        "onnx_oblong": onnx("onnx_oblong", conv, size=(32, 16)),
        "onnx_cut": onnx_cut,
        "item_remote": item_remote,
        "item_gone": root / "gone.json",
    }
