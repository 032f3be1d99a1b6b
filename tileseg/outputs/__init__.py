"""Destinations: where tileseg writes, on a disk or an object store, and how."""
