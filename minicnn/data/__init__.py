"""Training data: Caffe's Datum records in LMDB, images and list files, the data transformer
(crop, mirror, mean, scale), a deterministic background prefetcher, and dataset preparation.

The data layers that use these live in ``minicnn/layers/data.py``. Pillow, lmdb and h5py are
imported only when a function needs them, so ``import minicnn`` works without them.
"""
