"""Layer: Caffe's layer protocol in Python, and the registry of layer types.

A layer turns bottom blobs into top blobs (``forward``) and top diffs into bottom diffs and
parameter diffs (``backward``). Subclasses override four methods, as in Caffe:

    layer_setup(bottom, top)                  read parameters, create self.blobs (once)
    reshape(bottom, top)                      give the tops their shapes (every new input shape)
    forward(bottom, top)                      top[i].data from bottom[j].data
    backward(top, propagate_down, bottom)     bottom[j].diff (assigned) and blobs[k].diff (added)

Bottom diffs are *assigned*, parameter diffs are *accumulated*: only a solver (or you) zeroes
parameter diffs. Why the difference: a blob that feeds several layers gets a Split layer (the
Net inserts it), whose backward sums its tops' diffs, so every bottom diff has exactly one
writer; a parameter can be used many times before an update (weights shared by name between
layers, iter_size passes per step), and its gradient is the sum over those uses.
``propagate_down[j]`` says whether bottom j needs a diff at all (labels and input data do not):
backward may skip that work. A layer only unpacks blobs and parameters and calls the pure
functions in ``minicnn.ops``, where the math is.

A layer also works on its own, built from the keyword fields of its prototxt block:

    conv = ConvolutionLayer(num_output=8, kernel_size=3, weight_filler={"type": "xavier"})
    y = conv(x)                          # NumPy in, NumPy out
    dx = conv.backprop(dy)               # dL/dx; dL/dW is now in conv.blobs[0].diff
"""

import numpy as np

from minicnn import cuda
from minicnn.blob import Blob, blob_proto_to_array, legacy_shape_matches
from minicnn.errors import LayerError, LayerNotSetUp, MinicnnError, NetError
from minicnn.fillers import fill
from minicnn.proto.caffe_pb2 import FillerParameter, LayerParameter
from minicnn.proto.upgrade import upgrade_layer
from minicnn.rng import get_rng

LAYERS = {}                      # Caffe type name -> Layer subclass


def register(type_name, *aliases):
    """Class decorator: make a Layer subclass the implementation of Caffe type ``type_name``."""
    def decorate(cls):
        for name in (type_name, *aliases):
            if name in LAYERS:
                raise ValueError(f"layer type '{name}' is registered twice")
            LAYERS[name] = cls
        cls.type = type_name
        return cls
    return decorate


def layer_type_list():
    """Every registered layer type, sorted (pycaffe's caffe.layer_type_list)."""
    return sorted(LAYERS)


def layer_class(type_name):
    cls = LAYERS.get(type_name)
    if cls is None:
        raise NetError(f"unknown layer type '{type_name}'; minicnn supports: "
                       f"{', '.join(sorted(LAYERS))}")
    return cls


def create_layer(param, phase=None):
    """The layer for a LayerParameter, by its type (Caffe's LayerRegistry::CreateLayer). Forks
    that gave one type name to different layers are told apart by the registered class's
    variant_for (SSD's and happynear's Normalize, by their parameter blocks)."""
    return layer_class(param.type).variant_for(param)(param, phase=phase)


def check_not_empty(bottom):
    """Blobs with a zero dimension have no values to compute on: say so, not NumPy."""
    for i, blob in enumerate(bottom):
        if blob.count == 0:
            raise LayerError(f"bottom {i} is empty (shape {blob.shape}): no layer computes on "
                             "blobs with a zero dimension")


class Layer:
    type = None                  # set by @register
    param_field = None           # the layer's own parameter message, e.g. "convolution_param"

    # Blob counts (None = no constraint), as Caffe's ExactNumBottomBlobs() and friends.
    exact_num_bottom = min_num_bottom = max_num_bottom = None
    exact_num_top = min_num_top = max_num_top = None
    is_loss = False              # top[0] gets loss_weight 1 unless the prototxt says otherwise
    # the bottom read as whole-number indices (class labels, Embed's ids), if any: `minicnn
    # time` gives it zeros, as Caffe's time runs on zero-filled blobs
    index_bottom = None
    # False when the Net will never run this layer's backward (inference): forward may then
    # skip copies it keeps only for backward. Standalone layers always keep them.
    backward_needed = True
    # Parameter blobs whose solver step this layer's backward can take in the same pass as
    # their gradient (minicnn.solver.ParamStep): the solver puts them in self.param_steps
    # ({blob index: step}, assigned whole) for one backward at a time. InnerProduct's weights.
    steppable_params = ()
    param_steps = {}
    # True for layers that compute with NumPy only: a Net on the GPU runs them on host copies
    # of their blobs (data sources and Python layers do so, see minicnn.net.runs_on_host).
    host_only = False
    # A GPU forward may leave a check of its inputs to a kernel (labels that are not classes)
    # rather than wait for the GPU mid-step to read them: deferred_flag is then a device array
    # that turns nonzero if the check failed. The Net reads it with the loss, once the GPU has
    # caught up (settle_deferred), and the layer's raise_deferred says what was wrong.
    deferred_flag = None
    # Attributes a layer counts up as it runs (iterations, images seen) and that change what it
    # computes next: a solver's snapshot keeps them, so a resumed run continues them exactly.
    counters = ()
    # Blob data that backward reads as it is when backward runs, not from a copy forward kept:
    # "top" (Softmax reads y), "bottom" (ReLU reads x, which is y when it computes in place). A
    # later layer computing in place on such a blob overwrites that data before this backward
    # runs; the Net warns as it builds such a net (Net._warn_overwritten_backward_data).
    backward_reads_data = ()
    # The same for Caffe's layer of this type, where it differs (None: the same): Caffe's
    # Sigmoid reads y from its top, which minicnn keeps a copy of, so there only Caffe's
    # gradient comes from the overwritten data.
    caffe_backward_reads_data = None
    # backward_reads_sign_only: True when all this backward needs of that data is whether each
    # value is > 0 (ReLU's mask). in_place_keeps_sign: True when this layer, computing in place,
    # leaves whether each value is > 0 as it was wherever its backward passes a diff on (ReLU;
    # Dropout, whose zeros get none). Such a later layer changes nothing such a backward reads.
    backward_reads_sign_only = False
    in_place_keeps_sign = False
    # False for a layer that, computing in place, leaves the data as it was (Dropout in the
    # TEST phase): then no backward reading that blob is affected.
    in_place_changes_data = True

    @classmethod
    def variant_for(cls, param):
        """The class that implements ``param``: this one, unless forks share the type name."""
        return cls

    def __init__(self, layer_param=None, phase=None, **fields):
        param = layer_param
        if param is None:
            param = LayerParameter(type=self.type or "")
        elif not isinstance(param, LayerParameter):
            raise TypeError("layer_param must be a LayerParameter; pass prototxt fields as "
                            "keywords")
        self.param = param                   # the LayerParameter (Caffe's layer_param_)
        self._set_fields(fields)
        upgrade_layer(param)                 # ceil_mode, hole: as a Net's upgrade does
        if not param.HasField("name"):
            param.name = self.type or type(self).__name__
        if phase is not None:
            param.phase = phase
        self.blobs = [self._blob_from_proto(b) for b in param.blobs]   # weights in the message
        self.param_propagate_down = []
        self.loss_weights = []
        self._rng = None                 # None: the global generator (minicnn.rng)
        self.source_dir = None           # where relative data paths are also looked for
        self.dtype = None
        self._standalone = None          # (bottom blobs, top blobs) when driven by arrays

    def _set_fields(self, fields):
        own = getattr(self.param, self.param_field) if self.param_field else None
        for name, value in fields.items():
            if own is not None and name in type(own).DESCRIPTOR.fields_by_name:
                target = own
            elif name in LayerParameter.DESCRIPTOR.fields_by_name:
                target = self.param
            else:
                where = f"{self.param_field} or LayerParameter" if own is not None \
                    else "LayerParameter"
                raise TypeError(f"{type(self).__name__}: '{name}' is not a field of {where}")
            field = type(target).DESCRIPTOR.fields_by_name[name]
            if field.repeated and not field.array and (
                    isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__")):
                value = [value]                   # kernel_size=3 means kernel_size: 3 once
            setattr(target, name, value)

    @property
    def rng(self):
        return self._rng if self._rng is not None else get_rng()

    @rng.setter
    def rng(self, generator):
        self._rng = generator

    @property
    def name(self):
        return self.param.name

    @property
    def phase(self):
        return self.param.phase

    @property
    def type_param(self):
        """The parameter message of this layer type (e.g. its ConvolutionParameter)."""
        return getattr(self.param, self.param_field)

    def __repr__(self):
        return f"<{type(self).__name__} '{self.name}'>"

    # --- the protocol subclasses implement ---
    def layer_setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__} must implement reshape")

    def forward(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__} must implement forward")

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise LayerError(f"layer '{self.name}' ({self.type}) has no backward")

    def settle_deferred(self, bottom):
        """Read and clear deferred_flag; raise_deferred if its check failed."""
        flag, self.deferred_flag = self.deferred_flag, None
        if flag is not None and int(flag.reshape(-1)[0]):
            self.raise_deferred(bottom)

    def raise_deferred(self, bottom):
        """Raise the LayerError that a failed deferred check stands for."""
        raise LayerError(f"{self.name}: a check of its inputs on the GPU failed")

    def canonical_axis(self, blob, axis, field="axis"):
        """Caffe's CanonicalAxisIndex for a bottom: -1 is the last axis; out of range is a
        LayerError naming the parameter."""
        n = len(blob.shape)
        if not -n <= axis < n:
            raise LayerError(f"{field} {axis} is out of range for a bottom of shape {blob.shape} "
                             f"({n} axes)")
        return axis % n if n else 0

    def default_num_tops(self):
        """How many tops the layer gets when used without a Net: as many as the LayerParameter
        names, else the number it requires (Caffe's AutoTopBlobs)."""
        if self.param.top:
            return len(self.param.top)
        if self.exact_num_top is not None:
            return self.exact_num_top
        return self.min_num_top if self.min_num_top is not None else 1

    def allow_force_backward(self, bottom_index):
        """Whether force_backward may ask this layer for a diff of bottom ``bottom_index``."""
        return True

    # --- setup, as Caffe's Layer::SetUp ---
    def setup(self, bottom, top):
        self._check_blob_counts(bottom, top)
        check_not_empty(bottom)
        if bottom:
            self.dtype = bottom[0].dtype
        elif self.dtype is None:
            self.dtype = top[0].dtype if top else np.dtype(np.float32)
        self.layer_setup(bottom, top)
        self.reshape(bottom, top)
        self._set_loss_weights(top)
        while len(self.param_propagate_down) < len(self.blobs):
            self.param_propagate_down.append(True)
        self._set_up = True

    def __getattr__(self, name):
        """Only for a name that normal lookup did not find. Setup makes a layer's state
        (negative_slope, the pooling geometry, a kept mask), so a forward or backward driven by
        hand before setup would meet a bare AttributeError deep in the layer: say what is
        missing instead."""
        state = self.__dict__
        if name.startswith("__") or state.get("_set_up") or "param" not in state:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        raise LayerNotSetUp(f"layer '{state['param'].name}' ({self.type}) has no {name!r} yet: "
                            "setup(bottom, top) makes it; call it before forward and backward "
                            "(or call the layer on arrays, layer(x), which sets it up)")

    def _check_blob_counts(self, bottom, top):
        for kind, blobs, exact, lo, hi in (
                ("bottom", bottom, self.exact_num_bottom, self.min_num_bottom, self.max_num_bottom),
                ("top", top, self.exact_num_top, self.min_num_top, self.max_num_top)):
            n = len(blobs)
            if exact is not None and n != exact:
                raise LayerError(f"{self.type} takes exactly {exact} {kind} blob(s), got {n}")
            if lo is not None and n < lo:
                raise LayerError(f"{self.type} takes at least {lo} {kind} blob(s), got {n}")
            if hi is not None and n > hi:
                raise LayerError(f"{self.type} takes at most {hi} {kind} blob(s), got {n}")

    def _set_loss_weights(self, top):
        weights = list(self.param.loss_weight)
        if not weights and self.is_loss and top:
            weights = [1.0]
        if len(weights) > len(top):
            raise LayerError(f"{len(weights)} loss_weight values for {len(top)} top blob(s)")
        self.loss_weights = weights + [0.0] * (len(top) - len(weights))

    def loss_weight(self, top_index):
        return self.loss_weights[top_index] if top_index < len(self.loss_weights) else 0.0

    # --- parameters ---
    def init_param(self, index, shape, filler=None, what="weights"):
        """Make sure blobs[index] exists with ``shape``: filled by ``filler`` (a FillerParameter
        or a dict of its fields) if new, checked if loaded from a model. Call in order (index 0,
        1, ...) from layer_setup."""
        shape = tuple(int(d) for d in shape)
        if index < len(self.blobs):
            blob = self.blobs[index]
            if blob.shape != shape and not legacy_shape_matches(blob.shape, shape):
                raise LayerError(f"{what} (blob {index}) should have shape {shape}, but the "
                                 f"given one has shape {blob.shape}")
            if blob.shape != shape or blob.dtype != self.dtype:
                self.blobs[index] = Blob.from_array(blob.data.reshape(shape), self.dtype)
            return self.blobs[index]
        if index != len(self.blobs):
            raise AssertionError("init_param must be called in blob order")
        if filler is None:
            filler = FillerParameter()                  # Caffe's default: constant 0
        elif isinstance(filler, dict):                  # {"type": "gaussian", "std": 0.1}, as
            filler = FillerParameter(**filler)          # the layers' keyword fields take it
        blob = Blob(shape, self.dtype)
        blob.data[...] = fill(filler, shape, self.dtype, self.rng)
        self.blobs.append(blob)
        return blob

    def _blob_from_proto(self, proto):
        return Blob.from_array(blob_proto_to_array(proto))

    # --- standalone use on arrays ---
    def __call__(self, *arrays):
        """Forward on NumPy arrays: sets the layer up on first use; returns top data
        (one array, or a tuple for several tops). Errors name the layer and the bottoms'
        shapes, as a Net's do."""
        bottom = [self._bottom_from(i, a) for i, a in enumerate(arrays)]
        try:
            if self._standalone is None:
                dtype = bottom[0].dtype if bottom else (self.dtype or np.float32)
                top = [Blob((), dtype) for _ in range(self.default_num_tops())]
                self.setup(bottom, top)
            else:
                old_bottom, top = self._standalone
                if bottom and bottom[0].dtype != self.dtype:
                    raise LayerError(f"it was set up for {self.dtype} bottoms (its first call) "
                                     f"and is now given {bottom[0].dtype}: cast the input, or "
                                     "make a new layer for the other dtype")
                if [b.shape for b in bottom] != [b.shape for b in old_bottom]:
                    self.reshape(bottom, top)
            self._standalone = (bottom, top)
            self.forward(bottom, top)
            self.settle_deferred(bottom)
        except MinicnnError as e:
            self._reraise_naming_the_layer(e, self._describe(bottom))
        return top[0].data if len(top) == 1 else tuple(t.data for t in top)

    def _describe(self, bottom):
        """The start of an error about this layer driven by hand: its name, type and bottoms."""
        shapes = ", ".join(str(b.shape) for b in bottom)
        return f"layer '{self.name}' ({self.type}" + (f"; bottoms {shapes})" if bottom else ")")

    @staticmethod
    def _reraise_naming_the_layer(error, where):
        """A layer's error raised again with ``where`` (the layer, its bottoms) in front, as the
        Net does. Errors that already say where they come from (a data file's line: DataError,
        PrototxtError, ...) keep their type and message."""
        if type(error) in (MinicnnError, NetError, LayerError):
            raise LayerError(f"{where}: {error}") from None
        raise error

    def _bottom_from(self, i, array):
        """A Blob for the array given as bottom ``i`` of ``__call__`` (ints and bools become
        float32, or the dtype the layer was set up for; anything that is not real numbers, or
        floats other than float32 and float64 (a Net's two dtypes), is refused, naming the
        layer)."""
        values = array if cuda.is_device_array(array) else np.asarray(array)
        if values.dtype.kind not in "biuf" or (values.dtype.kind == "f" and values.dtype
                                               not in (np.float32, np.float64)):
            raise LayerError(f"layer '{self.name}' ({self.type}): bottom {i} holds "
                             f"{values.dtype} values (shape {values.shape}); layers compute on "
                             "real numbers (float32 or float64)")
        dtype = None if values.dtype.kind == "f" or self._standalone is None else self.dtype
        return Blob.from_array(values, dtype)

    def backprop(self, *top_diffs):
        """Backward after ``__call__``: takes d(loss)/d(top) for each top (none for a loss layer:
        its loss_weight is used) and returns d(loss)/d(bottom) (None where not computed)."""
        if self._standalone is None:
            raise LayerError(f"layer '{self.name}' ({self.type}): call the layer on inputs "
                             "before backprop (backprop runs backward through that forward)")
        bottom, top = self._standalone
        where = self._describe(bottom)
        if top_diffs and len(top_diffs) != len(top):
            raise LayerError(f"{where}: it has {len(top)} top(s) but {len(top_diffs)} diffs "
                             "were given")
        propagate_down = [self.allow_force_backward(i) for i in range(len(bottom))]
        if not top_diffs and not any(self.loss_weight(i) for i in range(len(top))) and \
                (any(propagate_down) or self.blobs):
            raise LayerError(f"{where}: it is not a loss layer (no loss_weight), so backprop "
                             f"needs d(loss)/d(top) for each of its {len(top)} top(s), e.g. "
                             "backprop(np.ones_like(y))")
        for i, t in enumerate(top):
            if top_diffs:
                diff = np.asarray(top_diffs[i], dtype=t.dtype)
                if diff.shape != t.shape:
                    raise LayerError(f"{where}: the diff for top {i} has shape {diff.shape}, "
                                     f"but the top has shape {t.shape}")
                t.diff[...] = diff
            else:
                t.diff[...] = self.loss_weight(i)
        try:
            self.backward(top, propagate_down, bottom)
        except MinicnnError as e:
            self._reraise_naming_the_layer(e, where)
        diffs = [b.diff if down else None for b, down in zip(bottom, propagate_down)]
        return diffs[0] if len(diffs) == 1 else tuple(diffs)
