"""The Softmax layer and Darknet's SoftmaxTree (the loss built on Softmax, SoftmaxWithLoss, is in
loss.py)."""

from minicnn import ops
from minicnn.errors import LayerError
from minicnn.layer import Layer, register


@register("Softmax")
class SoftmaxLayer(Layer):
    """Caffe `Softmax`: exp(x) / sum exp(x) along softmax_param.axis (default 1, the channels),
    independently at every other position. Safe in place: backward reads only the top."""
    backward_reads_data = ("top",)
    param_field = "softmax_param"
    exact_num_bottom = exact_num_top = 1

    def reshape(self, bottom, top):
        self.axis = self.canonical_axis(bottom[0], self.param.softmax_param.axis,
                                        "softmax_param.axis")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = ops.softmax_forward(bottom[0].data, axis=self.axis)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.softmax_backward(top[0].diff, top[0].data, axis=self.axis)


@register("SoftmaxTree")
class SoftmaxTreeLayer(Layer):
    """Darknet's [softmax] with a tree (YOLO9000's darknet9000.cfg, 9k.tree): a softmax over each
    group of sibling classes instead of over all of them, along softmax_tree_param.axis (default
    1, the channels), at every other position (minicnn.ops.softmax_tree has the tree's rules).
    softmax_tree_param.parent: each class's parent (-1 at the top), in the .tree file's order;
    the groups are the runs of equal parents, as Darknet's read_tree makes them. The tree lives
    in the prototxt, so a converted net needs no .tree file beside it. Darknet computes the
    same per group on its CPU and GPU paths for a C x 1 x 1 input (the only shape
    ``minicnn convert darknet`` writes it for). Backward: each group's softmax Jacobian. Safe in
    place: backward reads only the top."""
    param_field = "softmax_tree_param"
    exact_num_bottom = exact_num_top = 1
    backward_reads_data = ("top",)
    host_only = True                    # per-group reductions (NumPy's reduceat); no kernel yet

    def layer_setup(self, bottom, top):
        from minicnn.ops.softmax_tree import SoftmaxTree
        p = self.param.softmax_tree_param
        try:
            self.tree = SoftmaxTree(p.parent)
        except ValueError as e:
            raise LayerError(f"softmax_tree_param.parent: {e}") from None

    def reshape(self, bottom, top):
        self.axis = self.canonical_axis(bottom[0], self.param.softmax_tree_param.axis,
                                        "softmax_tree_param.axis")
        if bottom[0].shape[self.axis] != self.tree.n:
            raise LayerError(f"the bottom (shape {bottom[0].shape}) has "
                             f"{bottom[0].shape[self.axis]} entries along axis {self.axis}, but "
                             f"the tree has {self.tree.n} nodes (softmax_tree_param.parent)")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        top[0].data[...] = ops.softmax_tree_forward(bottom[0].data, tree=self.tree,
                                                    axis=self.axis)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = ops.softmax_tree_backward(top[0].diff, top[0].data,
                                                            tree=self.tree, axis=self.axis)
