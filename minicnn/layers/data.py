"""Layers that bring data into a net: Input (arrays you set), DummyData (filler-made blobs)."""

from minicnn.errors import LayerError
from minicnn.fillers import fill
from minicnn.layer import Layer, register
from minicnn.proto.caffe_pb2 import FillerParameter


@register("Input")
class InputLayer(Layer):
    """Caffe `Input`: tops you fill yourself (``net.blobs["data"].data[...] = x`` or
    ``net.forward(data=x)``). input_param gives one shape for all tops or one per top."""
    param_field = "input_param"
    exact_num_bottom = 0
    min_num_top = 1

    def layer_setup(self, bottom, top):
        shapes = self.param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise LayerError(f"input_param has {len(shapes)} shapes for {len(top)} tops: give "
                             "none, one, or one per top")
        for i, blob in enumerate(top):
            if shapes:
                blob.reshape(tuple(shapes[0 if len(shapes) == 1 else i].dim))

    def reshape(self, bottom, top):
        pass                              # the shapes are whatever the user sets

    def forward(self, bottom, top):
        pass


@register("DummyData")
class DummyDataLayer(Layer):
    """Caffe `DummyData`: tops filled by data_filler (constant 0 by default). Constant fillers
    are applied once; random ones every forward pass, as in Caffe."""
    param_field = "dummy_data_param"
    exact_num_bottom = 0
    min_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.param.dummy_data_param
        n = len(top)
        legacy = [len(p.num), len(p.channels), len(p.height), len(p.width)]
        if p.shape and any(legacy):
            raise LayerError("give dummy_data_param shapes either as shape or as num/channels/"
                             "height/width, not both")
        if p.shape:
            if len(p.shape) not in (1, n):
                raise LayerError(f"{len(p.shape)} shapes for {n} tops: give one or one per top")
            shapes = [tuple(p.shape[0 if len(p.shape) == 1 else i].dim) for i in range(n)]
        else:
            if any(k not in (1, n) for k in legacy):
                raise LayerError("num/channels/height/width must each be given once or once "
                                 "per top")
            pick = lambda vals, i: vals[0 if len(vals) == 1 else i]      # noqa: E731
            shapes = [(pick(p.num, i), pick(p.channels, i), pick(p.height, i), pick(p.width, i))
                      for i in range(n)]
        if len(p.data_filler) not in (0, 1, n):
            raise LayerError(f"{len(p.data_filler)} data_fillers for {n} tops: give none, one, "
                             "or one per top")
        fillers = list(p.data_filler) or [FillerParameter()]
        self.fillers = [fillers[0 if len(fillers) == 1 else i] for i in range(n)]
        for blob, shape, filler in zip(top, shapes, self.fillers):
            blob.reshape(shape)
            blob.data[...] = fill(filler, shape, blob.dtype, self.rng)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for blob, filler in zip(top, self.fillers):
            if filler.type != "constant":
                blob.data[...] = fill(filler, blob.shape, blob.dtype, self.rng)
