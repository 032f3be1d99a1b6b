"""Reading rasters: what a run reads, pixel by pixel, and the proof it is still the same.

``raster``       open a raster (a file, a subdataset, a URL, a stack), check it, read windows
``stack``        several single-band files on one grid (a GDAL VRT built in memory)
``remote``       rasters over HTTP and on object stores through GDAL: timeouts, retries
``pinning``      the version of what a run read (size, mtime, ETag), checked per chunk
``gdal_native``  the few GDAL calls rasterio does not wrap (error handler, object headers)
``subdatasets``  one raster inside a container file (NetCDF, HDF5, GeoPackage...)
``datasets``     opening a raster with GDAL the way tileseg always does
"""

# The raster dtypes tileseg reads (a model's default scaling has one for each:
# tileseg.models.metadata.DEFAULT_SCALE)
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
