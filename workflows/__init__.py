"""Ready-to-adapt job definitions for scheduled tileseg batch runs (see workflows/README.md)."""
