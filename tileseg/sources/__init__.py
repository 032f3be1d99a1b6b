"""Reading rasters: what a run reads, pixel by pixel, and the proof it is still the same.

``raster``       open a raster (a file, a subdataset, a URL, a stack), check it, read windows
``stack``        several single-band files on one grid (a GDAL VRT built in memory)
``remote``       rasters over HTTP and on object stores through GDAL: timeouts, retries
``pinning``      the version of what a run read (size, mtime, ETag), checked per chunk
``gdal_native``  the few GDAL calls rasterio does not wrap (error handler, object headers)
``subdatasets``  one raster inside a container file (NetCDF, HDF5, GeoPackage...)
"""
