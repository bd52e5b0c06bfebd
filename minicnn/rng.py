"""The random number generator used by fillers and random layers (Dropout), like Caffe's RNG.

``set_random_seed(seed)`` makes a run reproducible (Caffe's ``Caffe::set_random_seed``, the
solver's ``random_seed``). The draws are NumPy's, not Caffe's Boost ones, so a seeded minicnn run
repeats itself exactly but does not repeat a seeded Caffe run.
"""

import numpy as np

_rng = np.random.default_rng()


def set_random_seed(seed):
    """Reseed the generator of fillers, Dropout and the data layers' shuffles and augmentation
    (Caffe's Caffe::set_random_seed): the same seed repeats a run exactly."""
    global _rng
    _rng = np.random.default_rng(seed)


def get_rng():
    return _rng
