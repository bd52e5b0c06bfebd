"""Size-bucketed batches: batches whose images all have one size, for nets that take any size
(SPP-net's multi-size training) without resizing or cropping.

    plan = SizeBuckets([(28, 28), (28, 40), (28, 28), ...], batch_size=8)
    plan.batches_per_epoch                   # sum over sizes of ceil(count / batch_size)
    plan.epoch(np.random.default_rng([seed, epoch]))   # [index array per batch], or epoch(None)

An epoch serves every sample once, in batches of one size. Each size's samples (in list order,
or permuted with ``rng``) are cut into batches of ``batch_size``; a size whose count is not a
multiple of it fills its last batch by starting over from its own first samples (so every batch
is full and a few samples of that size are seen twice in the epoch). The batches are then served
size by size in order of first appearance, or all shuffled together with ``rng``. The plan is a
pure function of the sizes, the batch size and the generator, as the data layers' determinism
needs (see minicnn.layers.data).
"""

import numpy as np

__all__ = ["SizeBuckets", "image_size"]


class SizeBuckets:
    """The samples of each (height, width), in order of first appearance."""

    def __init__(self, sizes, batch_size):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)
        groups = {}
        for i, size in enumerate(sizes):
            groups.setdefault(tuple(int(s) for s in size), []).append(i)
        if not groups:
            raise ValueError("no samples to put into size buckets")
        self.sizes = list(groups)
        self.members = [np.asarray(groups[s], np.int64) for s in self.sizes]
        self.batches_per_epoch = sum(-(-len(m) // self.batch_size) for m in self.members)

    def epoch(self, rng=None):
        """The batches of one epoch: a list of index arrays of length batch_size."""
        batches = []
        for members in self.members:
            if rng is not None:
                members = members[rng.permutation(len(members))]
            count = -(-len(members) // self.batch_size) * self.batch_size
            cycled = members[np.arange(count) % len(members)]   # the last batch starts over
            batches += list(cycled.reshape(-1, self.batch_size))
        if rng is not None:
            batches = [batches[k] for k in rng.permutation(len(batches))]
        return batches

    def __repr__(self):
        counts = ", ".join(f"{h}x{w}: {len(m)}" for (h, w), m in zip(self.sizes, self.members))
        return f"<SizeBuckets batch {self.batch_size}, {self.batches_per_epoch} batches; {counts}>"


def image_size(path):
    """(height, width) of an image file, read from its header (the pixels are not decoded)."""
    from minicnn.data.errors import DataError, need
    image_module = need("PIL.Image", "Pillow")
    try:
        with image_module.open(path) as image:
            width, height = image.size
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the image: {e}", path) from None
    return height, width
