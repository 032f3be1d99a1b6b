"""tileseg's version: the one place it is written (``pyproject.toml`` reads it from here).

Modules that need it import it from here, never from the package root: the root's
``__init__`` names the whole public API, so importing it from inside the package would make
every such module depend on all the others.
"""

__version__ = "0.1.0"
