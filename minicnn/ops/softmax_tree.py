"""Darknet's softmax tree (YOLO9000's WordTree, Redmon & Farhadi 2017): a hierarchical softmax
over groups of sibling classes, and the decoding that walks the tree.

A tree is its list of parents, one per node (class), as a Darknet .tree file gives them, one
"name parent" line per node (tree.c read_tree; a line without a parent has parent -1). Darknet
derives the rest, and so does ``SoftmaxTree``:

  groups       the runs of consecutive nodes with the same parent, in file order (a parent whose
               children are not consecutive has several groups); group_offset, group_size;
               when the first node's parent is not -1 there is an empty group 0 before it
  group[i]     the group of node i
  child[p]     the group of p's children (the last such run), -1 for a leaf
  leaf[i]      no node names i as its parent

Forward (forward_softmax_layer's tree branch; the region layer's softmax_tree kernel): one
softmax per group over its entries, at every other position; temperature 1. Backward, per group,
dx = y * (dy - sum_group(dy * y)) (Darknet itself has no backward for it: its [softmax] passes the
cross-entropy delta through, its [region] computes the class delta directly).

Decoding (tree.c): ``hierarchy_predictions`` turns each node's conditional probability into an
absolute one by multiplying by its parent's, in node order (so a parent listed after its child
would not yet be absolute: Darknet's order, kept); ``hierarchy_top_prediction`` walks from group
0: in the current group the entry with the largest (absolute) value, first on ties, strictly
above 0; if p * max > thresh (p the product of the maxima taken so far: Darknet multiplies the
already absolute values again, kept) it goes down to that node's children, or returns the node
if it is a leaf; otherwise it returns the best of group 0 when still there, else the parent of
the current group. Both run in the array's dtype (float32 as Darknet).

Impls: ref (the class groups are runs along one axis; NumPy's reduceat does each run at once).
"""

import numpy as np

from minicnn.ops._dispatch import Op

softmax_tree_forward = Op("softmax_tree_forward")
softmax_tree_backward = Op("softmax_tree_backward")


class SoftmaxTree:
    """The groups, children and leaves of a tree given by its parents (Darknet's read_tree)."""

    def __init__(self, parents):
        parent = np.asarray(list(parents), np.int64).reshape(-1)
        n = len(parent)
        if n == 0:
            raise ValueError("a softmax tree needs at least one node")
        bad = np.flatnonzero((parent < -1) | (parent >= n))
        if len(bad):
            raise ValueError(f"node {int(bad[0])} names parent {int(parent[bad[0]])}, outside "
                             f"-1..{n - 1} (the tree has {n} nodes)")
        offsets, sizes = [], []
        group = np.zeros(n, np.int64)
        child = np.full(n, -1, np.int64)
        last, size = -1, 0
        for i, p in enumerate(parent.tolist()):
            if p != last:                       # a new run of siblings: the last one ends
                offsets.append(i - size)
                sizes.append(size)
                size, last = 0, p
            group[i] = len(offsets)
            if p >= 0:
                child[p] = len(offsets)
            size += 1
        offsets.append(n - size)
        sizes.append(size)
        self.n, self.parent, self.group, self.child = n, parent, group, child
        self.group_offset = np.array(offsets, np.int64)
        self.group_size = np.array(sizes, np.int64)
        self.leaf = np.ones(n, bool)
        self.leaf[parent[parent >= 0]] = False
        keep = self.group_size > 0
        self.starts, self.sizes = self.group_offset[keep], self.group_size[keep]

    @property
    def groups(self):
        return len(self.group_offset)

    def group_reduce(self, ufunc, z):
        """``ufunc`` (np.maximum, np.add) reduced over each group along z's last axis (tree.n
        entries), the result repeated back over the group's entries: same shape as z."""
        return np.repeat(ufunc.reduceat(z, self.starts, axis=-1), self.sizes, axis=-1)

    @classmethod
    def read(cls, path):
        """A Darknet .tree file: per line a name and (optionally) the parent's index."""
        parents = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f.read().splitlines():
                words = line.split()
                try:
                    parents.append(int(words[1]) if len(words) > 1 else -1)
                except ValueError:
                    parents.append(-1)          # sscanf's %d fails: the parent stays -1
        return cls(parents)


def _moved(a, axis):
    return np.moveaxis(a, axis, -1)


# --- reference -----------------------------------------------------------------------------------

@softmax_tree_forward.impl("ref")
def _softmax_tree_forward_ref(x, *, tree, axis=1):
    """One softmax per group of ``tree`` along ``axis`` (x.shape[axis] == tree.n)."""
    z = _moved(x, axis)
    e = np.exp(z - tree.group_reduce(np.maximum, z))   # the group's max: exp cannot overflow
    y = e / tree.group_reduce(np.add, e)
    return np.ascontiguousarray(np.moveaxis(y, -1, axis))


@softmax_tree_backward.impl("ref")
def _softmax_tree_backward_ref(dy, y, *, tree, axis=1):
    """dx from the top's diff and the top (each group's softmax Jacobian)."""
    g, p = _moved(dy, axis), _moved(y, axis)
    dot = tree.group_reduce(np.add, g * p)
    return np.ascontiguousarray(np.moveaxis(p * (g - dot), -1, axis))


# --- decoding (tree.c) ---------------------------------------------------------------------------

def hierarchy_predictions(p, tree, only_leaves=False):
    """Absolute probabilities from conditional ones, p (..., tree.n), in Darknet's node order."""
    p = np.array(p, copy=True)
    for j, parent in enumerate(tree.parent.tolist()):
        if parent >= 0:
            p[..., j] *= p[..., parent]
    if only_leaves:
        p[..., ~tree.leaf] = 0
    return p


def hierarchy_top_prediction(p, tree, thresh):
    """The node Darknet's hierarchy_top_prediction picks from absolute probabilities p (n,)."""
    dt = p.dtype.type
    prob, group = dt(1), 0
    while True:
        offset, size = int(tree.group_offset[group]), int(tree.group_size[group])
        values = p[offset:offset + size]
        best = int(np.argmax(values)) if size else 0
        top = values[best] if size and values[best] > 0 else dt(0)
        best = offset + best if size and values[best] > 0 else 0
        if prob * top > dt(thresh):
            prob = prob * top
            group = int(tree.child[best])
            if group < 0:
                return best
        elif group == 0:
            return best
        else:
            return int(tree.parent[offset])
