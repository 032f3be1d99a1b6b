"""The model: a network and what it says about its input and classes.

``loaded``      :class:`LoadedModel` and :func:`load_model` (eval mode, metadata attached),
                building networks by name, the per-process cache of what is built from them
``metadata``    ``tileseg.json``: classes, colours, normalization, input dtype and pixel size
``registry``    how chunk tasks reach the model: a path each worker loads, or an object
                registered in this process
``formats/``    what users hold: smp folders, TorchGeo checkpoints, plain weights, ONNX files,
                STAC MLM items (read and written)
``landcover/``  the bundled land-cover model (package data, not code)
"""

from pathlib import Path

BUNDLED_MODEL = Path(__file__).parent / "landcover"  # used when no model is given
