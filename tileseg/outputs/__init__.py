"""Destinations: where tileseg writes, on a disk or an object store, and how it may.

The rest of tileseg parses a destination once (:func:`tileseg.outputs.location.location`) and
asks the resulting :class:`~tileseg.outputs.location.Location` to act; only this package knows
whether a place is a path or an object (docs/architecture.md counts the exceptions).

``location``       one place, on a disk (:class:`LocalLocation`) or a store (:class:`StoreLocation`):
                   exists, read, write atomically, replace only tileseg's own, lock, staging
``paths``          before any work: no output is an input or inside one; folders take files
``ownership``      tileseg's marks, which prove what it wrote and may replace or delete
``staging``        a run's ``DST.partial`` on a disk: check, lock, prepare or resume, publish
``store_staging``  the same on a store: a prefix, completion marked, one upload at the end
``workdir``        what each chunk task saved (pieces, done records), as files or objects
``runlock``        one run per destination on a disk: ``flock`` on ``DST.lock``
``store``          the object-store client (obstore): requests, timeouts, the lease lock object
``store_objects``  single-object outputs on a store: checked copies, conditional uploads
``liveness``       whether a store lock's holder provably died on this machine
``diskspace``      local writes whole or not at all (:func:`atomic_file`); a full disk, one line
``mask``           the mask format: class lists in GeoTIFF tags and Zarr attributes
``mask_files``     the Zarr mosaic the tasks fill, and the GeoTIFF/COG made from it
``crop``           an area of interest's output, cut from the window's Zarr
``styles``         colour tables, GDAL and QGIS sidecars, GeoPackage layer styles
``stac_item``      the output's STAC item
``naming``         default output names (``scene.tif`` -> ``scene.mask.tif``)
"""
