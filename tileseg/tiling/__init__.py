"""Where the tiles go and how their overlaps add up: plain numpy geometry, no I/O.

``grid``   cores, halos, tiles and chunks on the model's divisor grid (:class:`Rect`)
``blend``  the weights that sum overlapping tiles' logits into one seamless mosaic
"""
