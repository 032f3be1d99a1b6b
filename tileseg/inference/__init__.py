"""From pixels to blended logits: the tile grid, the network's forward pass, the mosaic graph.

``grid``    cores, halos, tiles and chunks on the model's divisor grid (:class:`Rect`)
``blend``   the weights that sum overlapping tiles' logits into one seamless mosaic
``device``  device, precision and batch size, resolved on the worker
``engine``  torch or ONNX Runtime: the cached ONNX export, a user's ONNX file
``tta``     test-time augmentation: flips and turns, averaged
``infer``   a :class:`Runtime` and the batches of tiles of one chunk through it
``mosaic``  the dask graph: one infer and one finalize task per chunk
"""
