"""From pixels to blended logits: the network's forward pass over tiles, and the mosaic graph
(where the tiles go: :mod:`tileseg.tiling`).

``device``  device, precision and batch size, resolved on the worker
``engine``  torch or ONNX Runtime: the cached ONNX export, a user's ONNX file
``tta``     test-time augmentation: flips and turns, averaged
``infer``   a :class:`Runtime` and the batches of tiles of one chunk through it
``mosaic``  the dask graph: one infer and one finalize task per chunk
``describe`` a model as ``tileseg model info`` shows it, with the engines that run it here
"""
