"""Net: a graph of layers wired by blob names, built from a NetParameter as Caffe builds it.

    net = minicnn.Net("deploy.prototxt", "weights.caffemodel", minicnn.TEST)
    out = net.forward(data=images)            # {output name: array}
    net.blobs["conv1"].data, net.params["conv1"][0].diff

Building a net, in Caffe's order:
 1. upgrade old formats (V1 ``layers``, ``input:`` fields) and keep the layers whose
    include/exclude rules match the net state (phase, level, stages);
 2. insert a Split layer wherever one blob feeds several layers: each consumer gets its own copy
    of the diff, and the Split's backward sums them (so no layer ever accumulates into a bottom);
 3. create each layer from the registry by type, connect its bottoms and tops (a top with the
    same name as the bottom at its index is in place), and set it up, which infers shapes;
 4. share parameter blobs that have the same ``param { name }``;
 5. decide which layers need backward: those between a loss and a parameter with lr_mult != 0
    (or everything, with force_backward), minus bottoms switched off by propagate_down.
"""

import functools
import itertools
import os
import sys
import warnings
from collections import OrderedDict, defaultdict

import numpy as np

from minicnn import cuda, fusion
from minicnn.blob import (
    Blob,
    array_to_blob_proto,
    blob_proto_shape,
    blob_proto_to_array,
    legacy_shape_matches,
)
from minicnn.errors import MinicnnError, NetError, WireFormatError
from minicnn.layer import check_not_empty, create_layer
from minicnn.native import lib
from minicnn.proto import caffe_pb2
from minicnn.proto.text import layer_lines, read_prototxt
from minicnn.proto.upgrade import upgrade_net
from minicnn.proto.wire import read_binary, write_binary

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST          # "TRAIN" == 0, "TEST" == 1
_PHASES = {TRAIN: TRAIN, TEST: TEST, 0: TRAIN, 1: TEST, "train": TRAIN, "test": TEST}


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path):
    """Whether the file is HDF5: its signature at offset 0, 512, 1024, 2048, ... (after a user
    block), where H5Fis_hdf5 looks for it. False for unreadable files (the reader says why)."""
    try:
        with open(path, "rb") as f:
            offset = 0
            while True:
                f.seek(offset)
                head = f.read(len(HDF5_SIGNATURE))
                if len(head) < len(HDF5_SIGNATURE):
                    return False
                if head == HDF5_SIGNATURE:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except (OSError, TypeError):
        return False


def _log_to_stderr(message):
    print(message, file=sys.stderr, flush=True)


def _abs_mean(values):
    """Caffe's asum / count of a blob's data or diff (debug_info), on either device."""
    if values.size == 0:
        return float("nan")
    xp = cuda.array_module(values)
    return float(xp.abs(values).sum(dtype=np.float64)) / values.size


def _phase_key(phase):
    return phase.lower() if isinstance(phase, str) else phase


def is_phase(value):
    try:
        return _phase_key(value) in _PHASES
    except TypeError:                  # unhashable: an array, a list
        return False


def _some(names, limit=8):
    """'a, b, c' or 'a, b, ... (40 in all)': a list of names for an error message."""
    names = [f"'{n}'" for n in names]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} in all)"


def as_phase(phase):
    if not is_phase(phase):
        raise ValueError(f"phase must be minicnn.TRAIN or minicnn.TEST, not {phase!r}")
    return _PHASES[_phase_key(phase)]


# --- 1. filtering by net state -----------------------------------------------------------------

def state_meets_rule(state, rule):
    """Caffe's StateMeetsRule: phase, level range, all stages present, no not_stage present."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    if any(stage not in state.stage for stage in rule.stage):
        return False
    return not any(stage in state.stage for stage in rule.not_stage)


def filter_net(net_param, state, where=lambda name: ""):
    """The layers of ``net_param`` that the net ``state`` includes (Caffe's FilterNet).
    ``where(layer name)`` begins an error ("file:line: ")."""
    out = caffe_pb2.NetParameter()
    out.MergeFrom(net_param)
    out.ClearField("layer")
    for layer in net_param.layer:
        if layer.include and layer.exclude:
            raise NetError(f"{where(layer.name)}layer '{layer.name}' has both include and "
                           "exclude rules; give one or the other")
        if layer_included(layer, state):
            out.layer.append(layer.copy())
    return out


def layer_included(layer, state):
    """Whether the net ``state`` keeps ``layer`` (its include rules, else its exclude rules)."""
    if layer.include:
        return any(state_meets_rule(state, rule) for rule in layer.include)
    return not any(state_meets_rule(state, rule) for rule in layer.exclude)


# --- 2. splits ---------------------------------------------------------------------------------

def split_layer_name(layer_name, blob_name, top_index):
    return f"{blob_name}_{layer_name}_{top_index}_split"


def split_blob_name(layer_name, blob_name, top_index, split_index):
    return f"{blob_name}_{layer_name}_{top_index}_split_{split_index}"


def insert_splits(net_param, where=lambda layer_name: ""):
    """A copy of ``net_param`` with Split layers on fan-out (Caffe's InsertSplits).

    A top counts one use per consuming bottom, plus one if it carries a nonzero loss_weight; a
    top used more than once gets a Split whose tops (named as Caffe names them, e.g.
    ``data_input_0_split_1``) feed the consumers in order. A bottom no earlier layer produces
    is an error, prefixed by ``where(layer name)`` (the Net's "file:line: ").
    """
    layers = list(net_param.layer)
    last_producer = {}                     # blob name -> (layer index, top index)
    source = {}                            # (layer index, bottom index) -> producer
    uses = defaultdict(int)                # producer -> number of consumers
    loss_weight_of = {}
    for i, layer in enumerate(layers):
        for j, name in enumerate(layer.bottom):
            if name not in last_producer:
                raise NetError(f"{where(layer.name)}layer '{layer.name}' ({layer.type}): bottom "
                               f"'{name}' is not produced by any layer before it"
                               + _known(last_producer))
            source[i, j] = last_producer[name]
            uses[last_producer[name]] += 1
        for j, name in enumerate(layer.top):
            last_producer[name] = (i, j)
        for j, weight in enumerate(list(layer.loss_weight)[:len(layer.top)]):
            loss_weight_of[i, j] = weight
            if weight:
                uses[i, j] += 1
    out = caffe_pb2.NetParameter()
    out.MergeFrom(net_param)
    out.ClearField("layer")
    next_split = defaultdict(int)
    for i, layer in enumerate(layers):
        layer = layer.copy()
        for j, name in enumerate(layer.bottom):
            producer = source[i, j]
            if uses[producer] > 1:
                layer.bottom[j] = split_blob_name(layers[producer[0]].name, name, producer[1],
                                                  next_split[producer])
                next_split[producer] += 1
        out.layer.append(layer)
        producer = out.layer[len(out.layer) - 1]
        for j, name in enumerate(layer.top):
            n_uses = uses[i, j]
            if n_uses <= 1:
                continue
            split = out.layer.add(name=split_layer_name(layer.name, name, j), type="Split",
                                  bottom=[name])
            split.top.extend(split_blob_name(layer.name, name, j, k) for k in range(n_uses))
            weight = loss_weight_of.get((i, j), 0.0)
            if weight:                     # the first split top carries the loss, and the
                split.loss_weight.extend([weight] + [0.0] * (n_uses - 1))   # layer none (as
                producer.ClearField("loss_weight")       # Caffe: all its tops' weights go)
                next_split[i, j] += 1
    return out


def _in_place_blobs(bottoms, tops):
    """The blobs a layer computes in place: a top named as the bottom at its index."""
    return {b for b, t in zip(bottoms, tops) if b == t}


def _known(blobs):
    names = list(blobs)
    return f"; known blobs: {', '.join(names)}" if names else "; no blob is produced before it"


def _automatic_name(blobs):
    """Caffe's name for the top it gives a loss layer that names none, made unique here."""
    name, k = "(automatic)", 1
    while name in blobs:
        name, k = f"(automatic){k}", k + 1
    return name


def _items(value, real):
    """A host copy of a batch's first ``real`` items; a 0-axis blob (a loss) as one value."""
    value = np.array(cuda.to_host(value))
    return value[None] if value.ndim == 0 else value[:real]


# --- which layers compute on the host in a GPU net ------------------------------------------------

def runs_on_host(layer):
    """Whether a GPU net runs ``layer`` on host copies of its blobs: data sources (no bottoms;
    not Input, whose tops the caller fills, nor Parameter, whose top is its own blob), layers
    that say so (``host_only``, e.g. Python layers, which compute with NumPy), and layers that
    call an op without a CUDA version."""
    if getattr(layer, "host_only", False):
        return True
    if layer.type in ("Input", "Parameter"):
        return False
    if not layer.param.bottom:
        return True
    return not _cuda_ready(type(layer))


@functools.lru_cache(maxsize=None)
def _cuda_ready(cls):
    from minicnn.catalogue import _ops_of
    return all("cuda" in op.declared for op in _ops_of(cls).values())


# --- the Net -----------------------------------------------------------------------------------

class Net:
    """A Caffe net. ``Net(model, weights=None, phase=TEST)``; pycaffe's positional forms
    ``Net(model, phase)`` and ``Net(model, weights, phase)`` work too.

    ``model`` is a prototxt path or a NetParameter; ``weights`` a .caffemodel path (copied by
    layer name, as ``copy_from``). ``phase``, ``level`` and ``stages`` override the net state
    the NetParameter carries (whose phase defaults to TEST), and ``force_backward`` its field
    of that name (True: every layer computes its diffs, as for a saliency map of a deploy net
    without a loss, whose backward computes nothing otherwise). ``dtype`` is float32 (Caffe's
    Net<float>) or float64 (Net<double>, for gradient checks). ``source_dir`` is where data
    layers look for relative paths after the current directory (default: the prototxt's folder).
    ``source_file`` names the prototxt a NetParameter ``model`` was read from (a solver's net
    file), so that errors found while building the net name its file and line.

    ``device`` puts the net on a GPU: "cuda:0" (or "cuda", 0), "cpu"; None follows
    minicnn.set_mode_gpu()/set_mode_cpu() (the CPU by default). The net is built on the host,
    then every blob moves to the device and stays there; data layers (and layers marked
    ``host_only``, Python layers among them, and layers whose ops have no CUDA version) compute
    on host copies of their blobs, which the net copies across around them (see
    ``runs_on_host``; docs/cuda.md lists them).
    """

    def __init__(self, model, *args, weights=None, phase=None, level=None, stages=(),
                 dtype=np.float32, source_dir=None, device=None, source_file=None,
                 force_backward=None):
        if len(args) == 1:
            if is_phase(args[0]) and phase is None:
                phase = args[0]
            else:
                weights = args[0]
        elif len(args) == 2:
            weights, phase = args
        elif args:
            raise TypeError("Net(model, [weights], [phase]) takes at most 3 positional arguments")
        if weights is not None and not isinstance(weights, (str, os.PathLike,
                                                            caffe_pb2.NetParameter)):
            raise TypeError(f"Net(model, weights, phase): weights must be a file path or a "
                            f"NetParameter, not {weights!r}; the phase is minicnn.TRAIN or "
                            "minicnn.TEST")
        if stages is None:                # pycaffe's default
            stages = ()
        elif isinstance(stages, str):     # one stage, not its letters
            stages = (stages,)
        if isinstance(model, caffe_pb2.NetParameter):
            param, self.source = model.copy(), os.fspath(source_file or "<NetParameter>")
        else:
            self.source = os.fspath(model)
            param = read_prototxt(self.source, "NetParameter")
            if source_dir is None:
                source_dir = os.path.dirname(os.path.abspath(self.source))
        self.source_dir = source_dir
        bare_inputs = [] if param.HasField("input_dim") or param.HasField("input_shape") \
            else list(param.input)                # the upgrade drops them, as Caffe does
        param = upgrade_net(param, None if isinstance(model, caffe_pb2.NetParameter)
                            else self.source, source_file=source_file)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, not {self.dtype}")

        state = caffe_pb2.NetState()
        state.MergeFrom(param.state)
        if phase is not None:
            state.phase = as_phase(phase)
        if level is not None:
            state.level = level
        state.stage.extend(s for s in stages if s not in state.stage)
        self.state = state
        self.name = param.name
        self._force_backward = bool(param.force_backward if force_backward is None
                                    else force_backward)
        try:
            self.net_param = insert_splits(
                filter_net(param, state, lambda name: self._where(name, any_state=True)),
                self._where)
        except NetError as e:
            if not any(f"bottom '{name}' is not produced" in str(e) for name in bare_inputs):
                raise
            raise NetError(f"{e} (the net's input {', '.join(map(repr, bare_inputs))} has no "
                           "input_shape or input_dim: Caffe drops input names without a shape, "
                           "as a legacy caffemodel holds them; give each input its shape)"
                           ) from None
        self.device, self._mirrors = None, {}
        self._mode_warned = device is not None    # device="cpu" chosen: no set_mode_gpu note
        # Caffe's debug_info: each layer's mean |value| logged after its forward and backward
        # (a solver sets it on its display iterations); lines go to debug_log (stderr).
        self.debug_info = bool(param.debug_info)
        self.debug_log = _log_to_stderr
        self._fusions = None              # minicnn/fusion.py's plan, made at the first forward
        self._fusions_debug = False       # the plan was made for debug_info (no fusions)
        self._fused_backwards = None      # its training chains by their last layer
        self._build()
        if weights is not None:
            self.copy_from(weights)
        device = cuda.resolve_device(device)
        if device is not None:
            self._to_device(device)

    @property
    def phase(self):
        return self.state.phase

    @property
    def force_backward(self):
        return self._force_backward

    @force_backward.setter
    def force_backward(self, value):
        # which layers run a backward is settled as the net is built (Caffe's Init)
        if bool(value) != self._force_backward:
            raise NetError("force_backward is fixed when the net is built: pass "
                           f"Net(..., force_backward={bool(value)}) or set it in the prototxt")

    # --- 3-5. building -----------------------------------------------------------------------
    def _build(self):
        self.layers, self._layer_names = [], []
        self.blobs = OrderedDict()                 # name -> Blob
        self.bottom_vecs, self.top_vecs = [], []   # per layer: [Blob]
        self.bottom_names, self.top_names = OrderedDict(), OrderedDict()
        self._bottom_lists, self._top_lists = [], []   # per layer index (names may repeat)
        self.inputs = []
        blob_need_backward = {}
        self.layer_need_backward, self.bottom_need_backward = [], []
        available = []                             # produced, not yet consumed (net outputs)
        seen_names = set()
        for layer_param in self.net_param.layer:
            if not layer_param.HasField("phase"):
                layer_param.phase = self.phase
            name, ltype = layer_param.name, layer_param.type
            if name in seen_names:
                warnings.warn(f"two layers are named '{name}'; weights are copied by layer name, "
                              "so only one of them can receive them", stacklevel=3)
            seen_names.add(name)
            if layer_param.propagate_down and len(layer_param.propagate_down) != \
                    len(layer_param.bottom):
                raise NetError(f"{self._where(name)}layer '{name}': propagate_down must be "
                               f"given 0 or {len(layer_param.bottom)} times (once per bottom)")
            try:
                layer = create_layer(layer_param)
            except MinicnnError as e:
                raise NetError(f"{self._where(name)}layer '{name}': {e}") from None
            bottoms, need_backward, bottom_need = [], False, []
            for j, blob_name in enumerate(layer_param.bottom):
                if blob_name not in self.blobs:
                    raise NetError(f"{self._where(name)}layer '{name}' ({ltype}): unknown bottom "
                                   f"blob '{blob_name}'" + _known(self.blobs))
                if blob_name in available:
                    available.remove(blob_name)
                bottoms.append(self.blobs[blob_name])
                need = blob_need_backward[blob_name]
                if layer_param.propagate_down:   # Caffe 1.0: decides alone, true forces it
                    need = layer_param.propagate_down[j]    # (2015's took need && it)
                bottom_need.append(need)
                need_backward |= blob_need_backward[blob_name]
            tops, top_names = [], list(layer_param.top)
            n_named = len(top_names)
            if layer.is_loss:       # Caffe's AutoTopBlobs: a loss layer with no top gets one
                needed = max(layer.min_num_top or 0, layer.exact_num_top or 0)
                while len(top_names) < needed:
                    top_names.append(_automatic_name(self.blobs))
            for j, blob_name in enumerate(top_names):
                in_place = j < len(layer_param.bottom) and layer_param.bottom[j] == blob_name
                if in_place:
                    blob = self.blobs[blob_name]
                elif blob_name in self.blobs:
                    raise NetError(f"{self._where(name)}layer '{name}' ({ltype}): top blob "
                                   f"'{blob_name}' is already produced by another layer (tops "
                                   "may only reuse the name of the bottom at the same index, for "
                                   "in-place computation)")
                else:
                    blob = self.blobs[blob_name] = Blob((), self.dtype)
                    blob_need_backward[blob_name] = False
                if ltype == "Input":
                    self.inputs.append(blob_name)
                tops.append(blob)
                if j < n_named:     # an automatic top is no net output (as in Caffe)
                    available.append(blob_name)
            layer.dtype = self.dtype
            layer.source_dir = self.source_dir
            self._setup_layer(layer, bottoms, tops)
            if len(layer_param.param) > len(layer.blobs):
                raise NetError(f"{self._where(name)}layer '{name}' ({ltype}): "
                               f"{len(layer_param.param)} param specs for {len(layer.blobs)} "
                               "parameter blob(s); too many params specified (give at most one "
                               "per blob: weights, then bias)")
            for k in range(len(layer.blobs)):
                spec = layer_param.param[k] if k < len(layer_param.param) else None
                lr = spec.lr_mult if spec is not None else 1.0
                layer.param_propagate_down[k] = lr != 0        # Caffe 1.0 (2015's: > 0)
                need_backward |= lr != 0
            self.layers.append(layer)
            self._layer_names.append(name)
            self.bottom_vecs.append(bottoms)
            self.top_vecs.append(tops)
            self.bottom_names[name] = list(layer_param.bottom)
            self.top_names[name] = top_names
            self._bottom_lists.append(list(layer_param.bottom))
            self._top_lists.append(top_names)
            self.layer_need_backward.append(need_backward)
            self.bottom_need_backward.append(bottom_need)
            if need_backward:
                for blob_name in top_names:
                    blob_need_backward[blob_name] = True
        self.outputs = sorted(dict.fromkeys(available))   # Caffe keeps them in a std::set
        self._prune_backward()
        for layer, need in zip(self.layers, self.layer_need_backward):
            layer.backward_needed = need        # lets a layer skip keeping state for backward
        self._warn_overwritten_backward_data()
        self._warn_in_place_on_split_tops()
        self._share_params()
        self.blob_loss_weights = OrderedDict((n, 0.0) for n in self.blobs)
        for layer, names in zip(self.layers, self._top_lists):
            for j, blob_name in enumerate(names):
                if layer.loss_weight(j):
                    self.blob_loss_weights[blob_name] = layer.loss_weight(j)

    def _setup_layer(self, layer, bottoms, tops):
        try:
            layer.setup(bottoms, tops)
        except MinicnnError as e:
            raise NetError(f"{self._describe(layer, bottoms)}: {e}") from None

    def _where(self, layer_name, any_state=False):
        """'file:line: ' of the layer in the prototxt this net was read from ('' if none): the
        first layer of that name this net's state keeps (train_val's two "data" layers), or
        with ``any_state`` the first of that name."""
        if self.source == "<NetParameter>":
            return ""
        for layer, line in layer_lines(self.source):
            name = layer.name
            if not name and type(layer).DESCRIPTOR.name == "V1LayerParameter":
                name = layer.layer.name                 # a V0 layer names itself in 'layer'
            if name == layer_name and (any_state or layer_included(layer, self.state)):
                return f"{self.source}:{line}: "
        return ""

    def _describe(self, layer, bottoms):
        """The start of an error about ``layer`` (setup, forward, backward): where the prototxt
        defines it, its name and type, and its bottoms' names and shapes."""
        param = layer.param
        inputs = ", ".join(f"{n} {b.shape}" for n, b in zip(param.bottom, bottoms))
        return f"{self._where(param.name)}layer '{param.name}' ({param.type}" + \
            (f"; bottoms {inputs})" if inputs else ")")

    def _prune_backward(self):
        """Caffe's rule: a layer needs backward only if it leads to a loss; force_backward asks
        every layer for every diff it allows."""
        under_loss, skip_backprop = set(), set()
        top_lists, bottom_lists = self._top_lists, self._bottom_lists
        for i in reversed(range(len(self.layers))):
            layer, top_names = self.layers[i], top_lists[i]
            contributes, skip_down = False, True
            for j, name in enumerate(top_names):
                if layer.loss_weight(j) or name in under_loss:
                    contributes = True
                if name not in skip_backprop:
                    skip_down = False
                if contributes and not skip_down:
                    break
            if self.layer_need_backward[i] and skip_down:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(self.bottom_need_backward[i])
            if not contributes:
                self.layer_need_backward[i] = False
            for j, name in enumerate(bottom_lists[i]):
                if contributes:
                    under_loss.add(name)
                else:
                    self.bottom_need_backward[i][j] = False
                if not self.bottom_need_backward[i][j]:
                    skip_backprop.add(name)
        if self._force_backward:
            for i, layer in enumerate(self.layers):
                self.layer_need_backward[i] = True
                self.bottom_need_backward[i] = [
                    need or layer.allow_force_backward(j)
                    for j, need in enumerate(self.bottom_need_backward[i])]
                layer.param_propagate_down = [True] * len(layer.blobs)

    def _warn_overwritten_backward_data(self):
        """Warn where a layer whose backward runs reads a blob's data then (backward_reads_data:
        ReLU's x, which in place is its y) and a later layer computes in place on that blob:
        the backward reads that layer's output instead, and the gradient is wrong. Caffe
        computes the same and says nothing. Where only Caffe's layer reads the blob (Sigmoid's
        y: caffe_backward_reads_data), Caffe's gradient is the wrong one and minicnn's the true
        one. Later in-place layers that keep what is > 0 (Dropout) leave ReLU's mask alone."""
        for i, layer in enumerate(self.layers):
            if not (self.layer_need_backward[i] and any(self.bottom_need_backward[i])):
                continue                          # no diff is computed from the data
            here = layer.backward_reads_data
            caffe = here if layer.caffe_backward_reads_data is None \
                else layer.caffe_backward_reads_data
            sides = {"bottom": self._bottom_lists[i], "top": self._top_lists[i]}
            for blob in dict.fromkeys(sides["bottom"] + sides["top"]):
                read_here = [s for s in here if blob in sides[s]]
                read_caffe = [s for s in caffe if blob in sides[s]]
                if not (read_here or read_caffe):
                    continue
                k = self._later_in_place_writer(i, blob, layer.backward_reads_sign_only)
                if k is not None:      # warned from here: a solver's test net, which repeats
                    warnings.warn(      # its train net's message, adds no second line
                        self._overwrite_message(i, k, blob, read_here, read_caffe))

    def _warn_in_place_on_split_tops(self):
        """Warn where a layer computes in place on a top of a Split (one the prototxt names;
        the Net's own Splits feed no in-place layer): a Split's tops *are* its bottom's values
        (Caffe's ShareData), so the layer changes the bottom and the other tops as well, and
        every layer that reads them afterwards, forward or backward, sees its output. Caffe
        computes the same and says nothing."""
        split_of = {}
        for i, layer in enumerate(self.layers):
            if layer.type == "Split":
                split_of.update((name, i) for name in self._top_lists[i])
        for k, writer in enumerate(self.layers):
            if not writer.in_place_changes_data:
                continue
            for blob in _in_place_blobs(self._bottom_lists[k], self._top_lists[k]):
                i = split_of.get(blob)
                if i is None:
                    continue
                shared = [self._bottom_lists[i][0]] + [t for t in self._top_lists[i]
                                                       if t != blob]
                warnings.warn(
                    f"{self._where(writer.name)}layer '{writer.name}' ({writer.type}) computes in "
                    f"place on '{blob}', a top of Split '{self.layers[i].name}', whose tops share "
                    f"its bottom's values: it overwrites {_some(shared)} too, and the layers "
                    f"that read them see {writer.name}'s output (Caffe does the same); give "
                    f"{writer.name} a top of its own")

    def _later_in_place_writer(self, i, blob, sign_only):
        """The first layer after layer i that computes in place on ``blob`` and changes what a
        backward that reads it sees (with ``sign_only``: whether each value is > 0)."""
        for k in range(i + 1, len(self.layers)):
            writer = self.layers[k]
            if blob in _in_place_blobs(self._bottom_lists[k], self._top_lists[k]) \
                    and writer.in_place_changes_data \
                    and not (sign_only and writer.in_place_keeps_sign):
                return k
        return None

    def _overwrite_message(self, i, k, blob, read_here, read_caffe):
        reader, writer = self.layers[i], self.layers[k]
        a, b = reader.name, writer.name
        in_place = blob in _in_place_blobs(self._bottom_lists[i], self._top_lists[i])
        where_b = self._where(b).rstrip(": ")
        start = (f"{self._where(a)}layer '{a}' ({reader.type}, "
                 + (f"in place on '{blob}')" if in_place else f"top '{blob}')"))
        overwrites = (f"layer '{b}' ({writer.type}" + (f", {where_b}" if where_b else "")
                      + ") overwrites it in place afterwards")
        # out of place, a layer that reads only its bottom reads a blob nothing overwrites; one
        # that reads its top needs the later layer to leave that top alone
        fix = f"give {a} or {b} a top of its own" if in_place and "top" not in (
            read_here or read_caffe) else f"give {b} a top of its own"
        if read_here:
            return (f"{start} reads '{blob}' in its backward, but {overwrites}: {a}'s gradient "
                    f"is computed from {b}'s output" + (" (Caffe does the same)" if read_caffe
                                                         else "") + f"; {fix}")
        return (f"{start}: Caffe's {reader.type} reads '{blob}' in its backward, and "
                f"{overwrites}: Caffe computes {a}'s gradient from {b}'s output, minicnn from a "
                f"copy {a} kept (the true gradient), so training here differs from Caffe's; "
                f"{fix}")

    def _share_params(self):
        """Blobs with the same ``param { name }`` share data and diff with the first owner."""
        self.learnable_params, self.params_lr, self.params_weight_decay = [], [], []
        self._param_owner = []                       # per (layer, blob): learnable index
        has_lr, has_decay, owners = [], [], {}
        for layer in self.layers:
            specs = layer.param.param
            for k, blob in enumerate(layer.blobs):
                spec = specs[k] if k < len(specs) else caffe_pb2.ParamSpec()
                pname = spec.name
                if not pname or pname not in owners:
                    if pname:
                        owners[pname] = (layer, k, len(self.learnable_params))
                    self._param_owner.append(len(self.learnable_params))
                    self.learnable_params.append(blob)
                    self.params_lr.append(spec.lr_mult)
                    self.params_weight_decay.append(spec.decay_mult)
                    has_lr.append(spec.HasField("lr_mult"))
                    has_decay.append(spec.HasField("decay_mult"))
                    continue
                owner_layer, owner_k, index = owners[pname]
                owner = owner_layer.blobs[owner_k]
                permissive = spec.share_mode == "PERMISSIVE"
                if (owner.count != blob.count) if permissive else (owner.shape != blob.shape):
                    raise NetError(
                        f"{self._where(layer.name)}cannot share param '{pname}' owned by layer "
                        f"'{owner_layer.name}' with layer '{layer.name}': "
                        f"{'count' if permissive else 'shape'} mismatch (owner shape "
                        f"{owner.shape}, sharing layer shape {blob.shape})")
                blob.share_data(owner)
                self._param_owner.append(index)
                for attr, has, value in (("lr_mult", has_lr, self.params_lr),
                                         ("decay_mult", has_decay, self.params_weight_decay)):
                    if spec.HasField(attr):
                        if has[index] and getattr(spec, attr) != value[index]:
                            raise NetError(f"{self._where(layer.name)}shared param '{pname}' "
                                           f"has mismatched {attr} in layer '{layer.name}'")
                        has[index], value[index] = True, getattr(spec, attr)

    # --- pycaffe-style views -----------------------------------------------------------------
    @property
    def params(self):
        """Layer name -> list of its parameter blobs (weights, bias), for layers that have any."""
        return OrderedDict((layer.name, layer.blobs) for layer in self.layers if layer.blobs)

    @property
    def layer_dict(self):
        return OrderedDict(zip(self._layer_names, self.layers))

    @property
    def layer_names(self):
        return list(self._layer_names)

    @property
    def _blob_names(self):
        """The blob names in the order the net made them (pycaffe's ``net._blob_names``)."""
        return list(self.blobs)

    @property
    def _blobs(self):
        """The blobs in that order (pycaffe's ``net._blobs``)."""
        return list(self.blobs.values())

    @property
    def _inputs(self):
        """The inputs' indices among the blobs (pycaffe's ``net._inputs``)."""
        return [self._blob_names.index(name) for name in self.inputs]

    @property
    def _outputs(self):
        """The outputs' indices among the blobs (pycaffe's ``net._outputs``)."""
        return [self._blob_names.index(name) for name in self.outputs]

    def _bottom_ids(self, i):
        """Layer ``i``'s bottoms as indices among the blobs (pycaffe's ``net._bottom_ids``)."""
        return [self._blob_names.index(name) for name in self._bottom_lists[i]]

    def _top_ids(self, i):
        """Layer ``i``'s tops as indices among the blobs (pycaffe's ``net._top_ids``)."""
        return [self._blob_names.index(name) for name in self._top_lists[i]]

    @property
    def _blob_loss_weights(self):
        """Each blob's loss weight, in blob order (pycaffe's ``net._blob_loss_weights``)."""
        return [self.blob_loss_weights.get(name, 0.0) for name in self._blob_names]

    def _layer_index(self, name):
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise NetError(f"no layer named '{name}'; layers: "
                           f"{', '.join(self._layer_names)}") from None

    # --- running ------------------------------------------------------------------------------
    def _set_blobs(self, arrays, field):
        """Write ``arrays`` ({blob name: array}) into the blobs' data or diff. New shapes are
        allowed for net inputs' data: those blobs are reshaped and the net with them."""
        arrays = {name: value if cuda.is_device_array(value) else np.asarray(value)
                  for name, value in arrays.items()}
        reshaped = False
        for name, value in arrays.items():
            if name not in self.blobs:
                raise NetError(f"no blob named '{name}'; inputs: {', '.join(self.inputs)}; "
                               f"outputs: {', '.join(self.outputs)}")
            blob = self.blobs[name]
            if value.shape == blob.shape:
                continue
            if field == "data" and name in self.inputs:
                blob.reshape(value.shape)
                reshaped = True
            else:
                raise NetError(f"{field} for blob '{name}' has shape {value.shape}, but the blob "
                               f"has shape {blob.shape}" + (" (only net inputs are reshaped "
                                                            "automatically)" if field == "data"
                                                            else ""))
        if reshaped:
            self.reshape()
        for name, value in arrays.items():
            setattr(self.blobs[name], field, value)       # the Blob copies across devices

    def forward(self, blobs=None, start=None, end=None, **inputs):
        """Run forward; returns {name: data} of the net outputs (or of layer ``end``'s tops)
        plus any names in ``blobs``. Keyword arguments set input blobs first; an input of a new
        shape reshapes the net. The arrays returned are the blobs' own (as in pycaffe). A blob
        some layer of the run computes (a Data layer's "data") cannot be given: an error."""
        first = self._layer_index(start) if start is not None else 0
        last = self._layer_index(end) if end is not None else len(self.layers) - 1
        self._check_given("forward", inputs, range(first, last + 1), blobs)
        self._set_blobs(inputs, "data")
        self.forward_from_to(first, last)
        names = self._top_lists[last] if end is not None else self.outputs
        return {n: self.blobs[n].data for n in list(dict.fromkeys(list(names) + list(blobs or [])))}

    def _check_given(self, call, arrays, order, wanted):
        """Refuse arrays the run would overwrite before any layer reads them, which would be
        silently lost (pycaffe refuses any name but the inputs, or outputs for backward): a
        blob computed in ``order`` (layer indices as the run takes them) by a layer that does
        not also read it, e.g. data=... for a net whose Data layer makes "data", or a diff for
        a blob whose consumer's backward assigns it. And name unknown ``wanted`` blobs."""
        unknown = [n for n in list(arrays) + list(wanted or []) if n not in self.blobs]
        if unknown:
            raise NetError(f"{call}: no blob named {', '.join(map(repr, unknown))}; inputs: "
                           f"{', '.join(self.inputs) or 'none'}; outputs: "
                           f"{', '.join(self.outputs)}")
        # forward: a layer's tops are written, its bottoms read; backward the other way round
        writes, reads = ((self._top_lists, self._bottom_lists) if call == "forward"
                         else (self._bottom_lists, self._top_lists))
        for name in arrays:
            if call == "forward" and name in self.inputs:     # Input layers keep what is set
                continue
            for k in order:
                if name in reads[k]:
                    break
                if name in writes[k]:
                    field, ends, names = (("data", "inputs", self.inputs) if call == "forward"
                                          else ("diff", "outputs", self.outputs))
                    raise NetError(f"{call}: the {field} given for blob '{name}' would be "
                                   f"overwritten by layer '{self._layer_names[k]}' "
                                   f"({self.layers[k].type}) before any layer reads it; the "
                                   f"net's {ends}: {', '.join(names) or 'none'}")

    def forward_all(self, blobs=None, **inputs):
        """pycaffe's forward_all: run input arrays of N items through the net in batches of the
        first input's batch size; returns {name: N x ... copy} of the outputs and ``blobs``.
        A last, partial batch is padded with zeros, whose results are dropped. A blob with no
        batch axis (a loss) gives one value per batch."""
        if not inputs:
            raise NetError("forward_all needs the input arrays, e.g. forward_all(data=x)")
        outs = {}
        for chunk, real in self._batches(inputs):
            for name, value in self.forward(blobs, **chunk).items():
                outs.setdefault(name, []).append(_items(value, real))
        return {name: np.concatenate(parts) for name, parts in outs.items()}

    def forward_backward_all(self, blobs=None, diffs=None, **arrays):
        """pycaffe's forward_backward_all: forward and backward in batches. ``arrays`` holds N
        items for net inputs (forward) and for net outputs (their top diffs; loss tops not given
        start from their loss_weight). Returns ({name: N x ... copy} of the outputs and
        ``blobs``, {name: N x ... copy} of the input diffs and ``diffs``); the padding of a
        last, partial batch is dropped and a loss gives one value per batch, as in
        forward_all. A name that is neither an input nor an output is an error (pycaffe
        ignores it)."""
        if not arrays:
            raise NetError("forward_backward_all needs input or output arrays, e.g. "
                           "forward_backward_all(data=x)")
        unknown = [n for n in arrays if n not in self.inputs and n not in self.outputs]
        if unknown:
            raise NetError(f"forward_backward_all: {', '.join(unknown)} is neither a net input "
                           f"nor a net output; inputs: {', '.join(self.inputs)}; outputs: "
                           f"{', '.join(self.outputs)}")
        sizes = {name: len(np.asarray(value)) for name, value in arrays.items()}
        if len(set(sizes.values())) > 1:
            raise NetError("forward_backward_all: the arrays hold different numbers of items: "
                           + ", ".join(f"{n} {k}" for n, k in sizes.items()))
        forward = self._batches({n: v for n, v in arrays.items() if n in self.inputs})
        backward = self._batches({n: v for n, v in arrays.items() if n in self.outputs})
        all_outs, all_diffs = {}, {}
        for (f_chunk, f_real), (b_chunk, b_real) in itertools.zip_longest(
                forward, backward, fillvalue=({}, None)):
            real = f_real if f_real is not None else b_real
            for name, value in self.forward(blobs, **f_chunk).items():
                all_outs.setdefault(name, []).append(_items(value, real))
            for name, value in self.backward(diffs, **b_chunk).items():
                all_diffs.setdefault(name, []).append(_items(value, real))
        return ({name: np.concatenate(parts) for name, parts in all_outs.items()},
                {name: np.concatenate(parts) for name, parts in all_diffs.items()})

    def _batch(self, blobs):
        """pycaffe's Net._batch: yield {name: chunk} for chunks of ``blobs`` ({blob name: N x
        ... array}) in the net's batch size, the last padded with zeros to a full batch."""
        for chunk, _ in self._batches(blobs):
            yield chunk

    def _batches(self, arrays):
        """pycaffe's _batch: ({name: chunk}, items) for chunks of ``arrays`` ({blob name: N x
        ... array}) in the batch size of the first one's blob, a last, partial chunk padded
        with zeros to the batch size (``items``: how many are real)."""
        if not arrays:
            return
        arrays = {name: np.asarray(value) for name, value in arrays.items()}
        num = len(next(iter(arrays.values())))
        if any(len(value) != num for value in arrays.values()):
            raise NetError("the arrays hold different numbers of items: " +
                           ", ".join(f"{n} {len(v)}" for n, v in arrays.items()))
        first = next(iter(arrays))
        if first not in self.blobs:
            raise NetError(f"no blob named '{first}'; inputs: {', '.join(self.inputs)}")
        if not self.blobs[first].shape or not self.blobs[first].shape[0]:
            raise NetError(f"blob '{first}' of shape {self.blobs[first].shape} has no batch "
                           "axis to split the arrays along")
        batch = self.blobs[first].shape[0]
        for start in range(0, num, batch):
            chunk = {name: value[start:start + batch] for name, value in arrays.items()}
            real = len(chunk[first])
            if real < batch:
                chunk = {name: np.concatenate([v, np.zeros((batch - real, *v.shape[1:]), v.dtype)])
                         for name, v in chunk.items()}
            yield chunk, real

    def forward_from_to(self, first=0, last=None):
        """Run layers first..last (indices); return the loss (sum of loss_weight * top)."""
        return self._settle(*self._forward_layers(first, last))

    def _forward_layers(self, first=0, last=None):
        """Run layers first..last; (loss, layers with a deferred check). On a GPU the loss is a
        device scalar: _settle reads it, and the checks, once the work queued is done."""
        last = len(self.layers) - 1 if last is None else last
        loss = 0.0
        deferred = []
        if self.device is None and cuda.mode() == "GPU":
            self._warn_mode_changed()
        self._plan_fusions()
        i = first
        while i <= last:
            chain = self._fusions.get(i)
            if chain is not None and i + chain.count - 1 <= last:
                try:                      # BatchNorm + Scale (+ ReLU) at inference: one pass
                    check_not_empty(self.bottom_vecs[i])
                    if chain.run(self):
                        i += chain.count
                        continue
                except MinicnnError as e:
                    raise NetError(f"{self._describe(self.layers[i], self.bottom_vecs[i])}: "
                                   f"{e}") from None
            k, i = i, i + 1
            layer, bottoms, tops = self.layers[k], self.bottom_vecs[k], self.top_vecs[k]
            try:                          # Caffe reshapes before every forward: sizes may vary
                check_not_empty(bottoms)
                if k in self._mirrors:
                    self._host_forward(k)
                else:
                    layer.reshape(bottoms, tops)
                    layer.forward(bottoms, tops)
            except MinicnnError as e:
                raise NetError(f"{self._describe(layer, bottoms)}: {e}") from None
            if self.debug_info:
                self._forward_debug_info(k)
            if layer.deferred_flag is not None:
                deferred.append(k)
            for j, top in enumerate(tops):
                weight = layer.loss_weight(j)
                if weight:                # a device scalar on a GPU: not read here
                    loss = loss + weight * np.sum(top.data, dtype=np.float64)
        return loss, deferred

    def _warn_mode_changed(self):
        """Caffe reads its mode at every forward, so pycaffe's ``caffe.set_mode_gpu();
        net.forward()`` runs a net made in CPU mode on the GPU; here a net stays where it was
        made. Say so once, rather than let the CPU be timed as if it were the GPU."""
        if not self._mode_warned:
            self._mode_warned = True
            warnings.warn("this net was made in CPU mode and runs on the CPU: set_mode_gpu() "
                          "places the nets made after it on the GPU; make the net again (or "
                          "pass device='cuda') to run it there", stacklevel=5)

    def _settle(self, loss, deferred):
        """The loss as a float; then the checks that GPU layers left (deferred_flag), raised
        here if one failed. On a GPU the one point of a step that waits for the device."""
        self.loss = loss = float(loss)
        for k in deferred:
            try:
                self.layers[k].settle_deferred(self.bottom_vecs[k])
            except MinicnnError as e:
                raise NetError(f"{self._describe(self.layers[k], self.bottom_vecs[k])}: "
                               f"{e}") from None
        return loss

    def backward(self, diffs=None, start=None, end=None, **top_diffs):
        """Run backward; returns {name: diff} of the net inputs (or of layer ``end``'s bottoms)
        plus any names in ``diffs``. Keyword arguments set top diffs first (of any blob whose
        diff the run reads before computing it: an error otherwise); loss tops not given start
        from their loss_weight, other outputs from the diff they hold (zero unless written,
        e.g. ``net.blobs["prob"].diff[...] = g``, as in pycaffe). A net whose layers need no
        backward (no loss, no force_backward) computes nothing: a warning says so."""
        first = self._layer_index(start) if start is not None else len(self.layers) - 1
        last = self._layer_index(end) if end is not None else 0
        self._check_given("backward", top_diffs, range(first, last - 1, -1), diffs)
        self._seed_loss_diffs(skip=top_diffs)
        self._set_blobs(top_diffs, "diff")
        if not any(self.layer_need_backward[last:first + 1]):
            warnings.warn("backward: no layer here computes any diff, so every diff returned "
                          "stays as it was (zero): Caffe runs a layer's backward only if it "
                          "leads to a loss. For gradients of a net without a loss (a deploy "
                          "net), put force_backward: true in its prototxt (or pass "
                          "Net(..., force_backward=True))",
                          stacklevel=2)
        self.backward_from_to(first, last)
        if self.debug_info and start is None and end is None:
            self._params_debug_info()
        names = self._bottom_lists[last] if end is not None else self.inputs
        return {n: self.blobs[n].diff for n in list(dict.fromkeys(list(names) + list(diffs or [])))}

    def _seed_loss_diffs(self, skip=()):
        """Loss tops (but those in ``skip``) start the backward from their loss_weight."""
        for name, weight in self.blob_loss_weights.items():
            if weight and name not in skip:
                self.blobs[name].diff[...] = weight

    def _forward(self, start, end):
        """pycaffe's ``net._forward(start, end)``: layers start..end by index (both included);
        the loss."""
        self._check_range(f"_forward({start}, {end})", start, end, "start <= end")
        return self.forward_from_to(start, end)

    def _backward(self, start, end):
        """pycaffe's ``net._backward(start, end)``: the backward of layers start down to end by
        index (both included), the loss tops starting from their loss_weight as in backward()."""
        self._check_range(f"_backward({start}, {end})", end, start, "end <= start")
        self._seed_loss_diffs()
        self.backward_from_to(start, end)

    def _check_range(self, call, low, high, order):
        if not 0 <= low <= high < len(self.layers):
            raise NetError(f"{call}: layer indices need 0 <= {order} < {len(self.layers)} "
                           "(the number of layers)")

    def backward_from_to(self, first=None, last=0):
        first = len(self.layers) - 1 if first is None else first
        self._plan_fusions()
        i = first
        while i >= last:
            chain = self._fused_backwards.get(i)
            if chain is not None and chain.first >= last:
                try:                      # BatchNorm + Scale (+ ReLU) training chain: one call
                    if chain.run_backward(self):
                        i = chain.first - 1
                        continue
                except MinicnnError as e:
                    raise NetError(f"{self._describe(self.layers[i], self.bottom_vecs[i])}: "
                                   f"{e}") from None
            if self.layer_need_backward[i]:
                layer, bottoms = self.layers[i], self.bottom_vecs[i]
                try:
                    if i in self._mirrors:
                        self._host_backward(i)
                    else:
                        layer.backward(self.top_vecs[i], self.bottom_need_backward[i], bottoms)
                except MinicnnError as e:
                    raise NetError(f"{self._describe(layer, bottoms)}: {e}") from None
                if self.debug_info:
                    self._backward_debug_info(i)
            i -= 1

    def _plan_fusions(self):
        if self._fusions is None or self._fusions_debug != self.debug_info:
            self._fusions_debug = self.debug_info     # fused chains skip the tops it reports
            self._fusions = {} if self.debug_info else fusion.plan(self)
            self._fused_backwards = {c.first + c.count - 1: c for c in self._fusions.values()
                                     if hasattr(c, "run_backward")}

    # --- debug_info: Caffe's Net::ForwardDebugInfo / BackwardDebugInfo -------------------------
    def _param_display_name(self, k, j):
        """Caffe's param_display_names_: the param's name if it has one, else its index."""
        specs = self.layers[k].param.param
        return specs[j].name if j < len(specs) and specs[j].name else str(j)

    def _forward_debug_info(self, k):
        layer = self.layers[k]
        for name, top in zip(self._top_lists[k], self.top_vecs[k]):
            self.debug_log(f"    [Forward] Layer {layer.name}, top blob {name} data: "
                           f"{_abs_mean(top.data):.6g}")
        for j, blob in enumerate(layer.blobs):
            self.debug_log(f"    [Forward] Layer {layer.name}, param blob "
                           f"{self._param_display_name(k, j)} data: {_abs_mean(blob.data):.6g}")

    def _backward_debug_info(self, k):
        layer = self.layers[k]
        for name, blob, needed in zip(self._bottom_lists[k], self.bottom_vecs[k],
                                      self.bottom_need_backward[k]):
            if needed:
                self.debug_log(f"    [Backward] Layer {layer.name}, bottom blob {name} diff: "
                               f"{_abs_mean(blob.diff):.6g}")
        for j, blob in enumerate(layer.blobs):
            if j < len(layer.param_propagate_down) and layer.param_propagate_down[j]:
                self.debug_log(f"    [Backward] Layer {layer.name}, param blob {j} diff: "
                               f"{_abs_mean(blob.diff):.6g}")

    def _params_debug_info(self):
        """Net::Backward's summary: L1 and L2 norms of every learnable parameter."""
        sums = np.zeros(4)
        for blob in self.learnable_params:
            for n, values in enumerate((blob.data, blob.diff)):
                xp = cuda.array_module(values)
                sums[n] += float(xp.abs(values).sum(dtype=np.float64))
                sums[2 + n] += float((values.astype(np.float64) ** 2).sum())
        self.debug_log(f"    [Backward] All net params (data, diff): L1 norm = ({sums[0]:.6g}, "
                       f"{sums[1]:.6g}); L2 norm = ({np.sqrt(sums[2]):.6g}, "
                       f"{np.sqrt(sums[3]):.6g})")

    def forward_backward(self):
        """One forward and backward pass (loss tops seeded with their loss_weight); the loss.
        On a GPU the loss is read once the backward is queued, so the host never waits for the
        device between the two (and a failed deferred check raises before any update)."""
        pending = self._forward_layers()
        self.backward()
        return self._settle(*pending)

    def reshape(self):
        """Propagate new input shapes through every layer (Caffe's Net::Reshape)."""
        for i, (layer, bottoms, tops) in enumerate(zip(self.layers, self.bottom_vecs,
                                                        self.top_vecs)):
            try:
                if i in self._mirrors:
                    self._host_reshape(i)
                else:
                    layer.reshape(bottoms, tops)
            except MinicnnError as e:
                raise NetError(f"{self._describe(layer, bottoms)}: {e}") from None

    # --- on a GPU ------------------------------------------------------------------------------
    def _to_device(self, device):
        """Move the net to CUDA device ``device``: every blob of the net and the parameters of
        the layers that compute there (views keep sharing: shared weights, Split's aliases);
        layers that run on the host get host copies (mirrors) of their bottoms and tops."""
        moved = {}

        def move(array):
            if array is None or cuda.is_device_array(array):
                return array
            root = array if array.base is None or not isinstance(array.base, np.ndarray) \
                else array.base
            if id(root) not in moved:
                moved[id(root)] = (root, cuda.to_device(root, device))
            on_device = moved[id(root)][1]
            if array is root:
                return on_device
            if array.size == root.size and array.flags.c_contiguous and root.flags.c_contiguous:
                return on_device.reshape(array.shape)          # a reshaped view (shared weights)
            return cuda.to_device(array, device)

        self._mirrors = {}
        self._fusions = None
        for i, layer in enumerate(self.layers):
            if runs_on_host(layer):
                copies = {}

                def host(blob):
                    if id(blob) not in copies:
                        copies[id(blob)] = Blob.from_array(blob.data, blob.dtype)
                    return copies[id(blob)]
                self._mirrors[i] = ([host(b) for b in self.bottom_vecs[i]],
                                    [host(t) for t in self.top_vecs[i]])
        blobs = list(self.blobs.values())
        for i, layer in enumerate(self.layers):
            if i not in self._mirrors:
                blobs += layer.blobs
        for blob in blobs:
            if blob.device is None:
                blob.to_device(device, move)
        self.device = device

    def forward_layer(self, i, reshape=True):
        """Layer i's forward alone (its reshape first unless ``reshape`` is False), on host
        copies for a layer that runs on the host in a GPU net (minicnn time uses it)."""
        if i in self._mirrors:
            self._host_forward(i)
            return
        if reshape:
            self.layers[i].reshape(self.bottom_vecs[i], self.top_vecs[i])
        self.layers[i].forward(self.bottom_vecs[i], self.top_vecs[i])

    def backward_layer(self, i, propagate_down=None):
        """Layer i's backward alone (``propagate_down``: default, what the net needs)."""
        if i in self._mirrors:
            self._host_backward(i, propagate_down)
            return
        need = self.bottom_need_backward[i] if propagate_down is None else propagate_down
        self.layers[i].backward(self.top_vecs[i], need, self.bottom_vecs[i])

    def _host_reshape(self, i):
        hosts_in, hosts_out = self._mirrors[i]
        for blob, host in zip(self.bottom_vecs[i], hosts_in):
            host.reshape(blob.shape)
        self.layers[i].reshape(hosts_in, hosts_out)
        for blob, host in zip(self.top_vecs[i], hosts_out):
            blob.reshape(host.shape)

    def _host_forward(self, i):
        """A host layer's forward: bottoms to the host, compute, tops to the device."""
        hosts_in, hosts_out = self._mirrors[i]
        for blob, host in zip(self.bottom_vecs[i], hosts_in):
            host.reshape(blob.shape)
            host.data = blob.data
        self.layers[i].reshape(hosts_in, hosts_out)
        self.layers[i].forward(hosts_in, hosts_out)
        for blob, host in zip(self.top_vecs[i], hosts_out):
            blob.reshape(host.shape)
            blob.data = host.data                  # pinned, asynchronous (minicnn.cuda.assign)

    def _host_backward(self, i, propagate_down=None):
        hosts_in, hosts_out = self._mirrors[i]
        need = self.bottom_need_backward[i] if propagate_down is None else propagate_down
        for blob, host in zip(self.top_vecs[i], hosts_out):
            host.diff = blob.diff
        self.layers[i].backward(hosts_out, need, hosts_in)
        for blob, host, down in zip(self.bottom_vecs[i], hosts_in, need):
            if down:
                blob.diff = host.diff

    def clear_param_diffs(self, skip=()):
        """Zero every parameter's diff; ``skip``: indices into learnable_params to leave (their
        diffs will be written whole: Solver._layer_steps)."""
        native = []                 # host arrays, zeroed together on both cores (CaffeNet:
        device = []                 # 244 MB of diffs a step); device arrays, in one launch
        for param_id, blob in enumerate(self.learnable_params):
            if param_id in skip:
                continue
            d = blob.diff
            if lib is not None and type(d) is np.ndarray and d.flags.c_contiguous \
                    and d.flags.writeable:
                native.append(d)
            elif cuda.is_device_array(d) and d.flags.c_contiguous and d.dtype in cuda.CTYPES:
                device.append(d)
            else:
                d[...] = 0
        if native:
            lib.zero_fill(native)
        if device:
            cuda.zero_fill(device)

    def steppable_params(self):
        """(layer, k, param_id) for each parameter blob k a layer can take the solver's step of
        in its backward (Layer.steppable_params) and no other layer shares."""
        owners = {}
        found = []
        i = 0
        for layer in self.layers:
            for k in range(len(layer.blobs)):
                param_id = self._param_owner[i]
                owners[param_id] = owners.get(param_id, 0) + 1
                if k in layer.steppable_params:
                    found.append((layer, k, param_id))
                i += 1
        return [(layer, k, param_id) for layer, k, param_id in found if owners[param_id] == 1]

    def update(self, skip=()):
        """data -= diff for every learnable parameter (Caffe's Net::Update); the solver has
        already turned each diff into the step to take. ``skip``: indices into learnable_params
        that the solver has updated already."""
        for i, blob in enumerate(self.learnable_params):
            if i not in skip:
                blob.data[...] -= blob.diff

    def set_input_arrays(self, data, labels, layer=None):
        """Give a MemoryData layer (the first one, or the one named ``layer``) its arrays, as
        pycaffe's Net.set_input_arrays."""
        candidates = [m for m in self.layers if m.type == "MemoryData"
                      and (layer is None or m.name == layer)]
        if not candidates:
            raise NetError("set_input_arrays needs a MemoryData layer"
                           + (f" named '{layer}'" if layer else "") + " in the net")
        candidates[0].set_input_arrays(data, labels)

    # --- data positions (for exact resume) ---------------------------------------------------
    def data_state(self):
        """{layer name: state} of every layer that reads a data source (see layers/data.py)."""
        return {layer.name: layer.data_state() for layer in self.layers
                if hasattr(layer, "data_state")}

    def restore_data_state(self, states):
        layers = self.layer_dict
        for name, state in states.items():
            if name not in layers or not hasattr(layers[name], "restore_data_state"):
                raise NetError(f"the saved data position names layer '{name}', which is not a "
                               "data layer of this net")
            layers[name].restore_data_state(state)

    def layer_counters(self):
        """{layer name: {counter: value}} of the layers that count (Layer.counters)."""
        return {layer.name: {c: int(getattr(layer, c)) for c in layer.counters}
                for layer in self.layers if layer.counters}

    def restore_layer_counters(self, counters):
        layers = self.layer_dict
        for name, values in counters.items():
            layer = layers.get(name)
            for counter, value in values.items():
                if layer is None or counter not in layer.counters:
                    raise NetError(f"the saved counter '{counter}' names layer '{name}', which "
                                   "has no such counter in this net")
                setattr(layer, counter, int(value))

    def find_non_finite(self):
        """Where a forward pass first produced NaN or Inf: a message naming the parameter blob
        or the layer and top, or None. Re-runs the forward pass after the data layers."""
        for layer in self.layers:
            for k, blob in enumerate(layer.blobs):
                if not np.all(np.isfinite(blob.data)):
                    return f"parameter {k} of layer '{layer.name}' ({layer.type}) is not finite"
        for layer, tops in zip(self.layers, self.top_vecs):
            if not layer.param.bottom:                      # data layers: their batch is kept
                for j, blob in enumerate(tops):
                    if not np.all(np.isfinite(blob.data)):
                        return (f"the data '{layer.param.top[j]}' from layer '{layer.name}' is "
                                "not finite (check the data)")
        for i, layer in enumerate(self.layers):
            if not layer.param.bottom:
                continue
            self.forward_from_to(i, i)
            for j, blob in enumerate(self.top_vecs[i]):
                if not np.all(np.isfinite(blob.data)):
                    return (f"layer '{layer.name}' ({layer.type}) is the first whose output "
                            f"'{self._top_lists[i][j]}' is not finite")
        return None

    # --- weights --------------------------------------------------------------------------------
    def copy_from(self, weights, complete=False):
        """Copy weights from a .caffemodel path (or NetParameter; an HDF5 file, such as a
        .caffemodel.h5 snapshot, goes to ``load_hdf5``), matching layers by name.

        Layers of the model with no same-named layer here are ignored, and layers here that the
        model lacks keep their filler values (Caffe's CopyTrainedLayersFrom); a same-named layer
        with a different blob count or shape is an error: rename the layer to learn it afresh.
        With ``complete`` (a resume: the weights are this net's snapshot), a parameter of this
        net that the model lacks is an error too. Every blob is read and checked before any is
        copied: after an error the net is as it was.
        """
        if isinstance(weights, caffe_pb2.NetParameter):
            source, where = weights, "<NetParameter>"
            if source.layers:                    # V0/V1 layers: read as a file's would be
                source = upgrade_net(source.copy())
        elif _is_hdf5(weights):                  # Caffe's CopyTrainedLayersFrom tells by content
            return self.load_hdf5(weights, complete=complete)
        else:
            where = os.fspath(weights)
            keep = {"NetParameter": {"layer", "layers"},
                    "LayerParameter": {"name", "type", "blobs"},
                    "V1LayerParameter": {"name", "type", "blobs", "layer"},
                    "V0LayerParameter": {"name", "type", "blobs"}}     # 2014's, in "layer"
            try:
                source = read_binary(where, "NetParameter", keep=keep)
            except WireFormatError as e:
                if "solverstate" not in os.path.basename(where):
                    raise
                raise NetError(f"{e}; it looks like a solver state, not weights: fine-tune "
                               "from the .caffemodel beside it, or resume from this file "
                               "(--snapshot)") from None
            try:
                upgrade_net(source)
            except NetError as e:                # a V0 layer type Caffe does not know
                raise NetError(f"{where}: {e}") from None
        targets = self.layer_dict
        copies = []
        for src in source.layer:
            layer = targets.get(src.name)
            if layer is None:
                continue
            if len(layer.blobs) != len(src.blobs):
                raise NetError(f"{where}: layer '{src.name}' has {len(src.blobs)} blob(s) there "
                               f"but {len(layer.blobs)} here ({layer.type}); rename the layer to "
                               "learn its parameters from scratch")
            for k, (blob, proto) in enumerate(zip(layer.blobs, src.blobs)):
                shape = blob_proto_shape(proto)
                if shape != blob.shape and not legacy_shape_matches(shape, blob.shape):
                    raise NetError(
                        f"{where}: cannot copy param {k} of layer '{src.name}': shape mismatch, "
                        f"the model has {shape} but the net wants {blob.shape}. To learn this "
                        "layer's parameters from scratch rather than copying them, rename the "
                        "layer")
                try:
                    copies.append((blob, blob_proto_to_array(proto).reshape(blob.shape)))
                except MinicnnError as e:
                    raise NetError(f"{where}: layer '{src.name}' param {k}: {e}") from None
        self._check_some_copied(where, copies, [src.name for src in source.layer if src.blobs])
        if complete:
            self._check_all_copied(where, copies)
        for blob, values in copies:
            blob.data = values

    def _check_some_copied(self, where, copies, named):
        """Weights that fill none of this net's parameters are for another net (or empty):
        Caffe would go on with the fillers' values and say nothing; a fine-tuned net whose
        renamed last layer starts afresh still copies the rest."""
        if copies or not any(layer.blobs for layer in self.layers):
            return
        here = [layer.name for layer in self.layers if layer.blobs]
        there = (f"its layers with weights are {_some(named)}" if named
                 else "it holds no layer weights at all")
        raise NetError(f"{where}: no layer of this net gets weights from it ({there}; the net's "
                       f"layers with parameters are {_some(here)}): weights are matched by "
                       "layer name, so these are another net's")

    def _check_all_copied(self, where, copies):
        """copy_from(complete=True): every parameter blob of this net (a shared one through its
        owner) is among ``copies``. A snapshot's weights cut short at a layer's end (a copy
        that stopped) still parse, as weights for the layers before the cut."""
        copied = {id(blob) for blob, _ in copies}
        missing = [layer.name for layer, owns in zip(self.layers, self._owns_params())
                   if any(own and id(blob) not in copied for blob, own in zip(layer.blobs, owns))]
        if missing:
            raise NetError(f"{where}: no weights there for layer{'s' if len(missing) > 1 else ''}"
                           f" {_some(missing)} of this net; resuming would train "
                           f"{'them' if len(missing) > 1 else 'it'} from the filler's values "
                           "with the saved history. Is the file cut short, or another net's? "
                           "(To learn a new or renamed layer afresh, fine-tune from these "
                           "weights, --weights, instead of resuming)")

    def to_proto(self, write_diff=False):
        """The net as a NetParameter with every layer's blobs (Caffe's Net::ToProto)."""
        out = caffe_pb2.NetParameter()
        if self.name:
            out.name = self.name
        for layer in self.layers:
            param = layer.param.copy()
            param.ClearField("blobs")
            for blob in layer.blobs:
                param.blobs.append(array_to_blob_proto(blob.data,
                                                       blob.diff if write_diff else None))
            out.layer.append(param)
        return out

    def save(self, path, write_diff=False):
        """Write the weights as a .caffemodel (atomically: the old file survives a crash)."""
        write_binary(self.to_proto(write_diff), path)

    # --- weights in HDF5 (Caffe's ToHDF5 / CopyTrainedLayersFromHDF5) ---------------------------
    def _owns_params(self):
        """Per layer, per parameter blob: whether it is its own (not shared from an earlier
        layer by ``param { name }``)."""
        seen, owns, i = set(), [], 0
        for layer in self.layers:
            owns.append([])
            for _ in layer.blobs:
                owns[-1].append(self._param_owner[i] not in seen)
                seen.add(self._param_owner[i])
                i += 1
        return owns

    def save_hdf5(self, path, write_diff=False):
        """Write the weights as HDF5 in Caffe's layout (pycaffe's ``net.save_hdf5``): a group
        ``data`` with one group per layer, named as the layer, holding a dataset ``"0"``,
        ``"1"``, ... per parameter blob in the net's dtype (a blob shared from an earlier layer
        is left out there); with ``write_diff`` a group ``diff`` likewise, shared blobs
        included. Written atomically, as ``save``. h5py makes nested groups of a name with
        '/' (GoogLeNet's "inception_3a/1x1"); load_hdf5 finds them by the same path."""
        from minicnn.data.errors import need
        from minicnn.proto.wire import atomic_write
        h5py = need("h5py")
        names = self._layer_names
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise NetError(f"cannot save HDF5 weights: layers {', '.join(twice)} share a name, "
                           "and the file holds them by layer name")
        with atomic_write(path, "w+b") as f, h5py.File(f, "w") as h5:
            groups = [("data", False)] + ([("diff", True)] if write_diff else [])
            for group_name, diff in groups:
                group = h5.create_group(group_name)
                for layer, owns in zip(self.layers, self._owns_params()):
                    layer_group = group.create_group(layer.name)
                    for k, blob in enumerate(layer.blobs):
                        if owns[k] or diff:
                            values = cuda.to_host(blob.diff if diff else blob.data)
                            layer_group.create_dataset(str(k), data=values)

    def load_hdf5(self, path, complete=False):
        """Copy weights from an HDF5 file in Caffe's layout (see ``save_hdf5``; pycaffe's
        ``net.load_hdf5``), matching layers by name as ``copy_from`` does: layers of the file
        that the net lacks are ignored, layers it lacks keep their values, a blob missing from
        the file is allowed only if shared from an earlier layer, and a count or shape that
        differs is an error naming the layer and the shapes. Every dataset is read and checked
        before any is copied: after an error the net is as it was."""
        from minicnn.data.errors import need
        h5py = need("h5py")
        where = os.fspath(path)
        try:
            h5 = h5py.File(where, "r")
        except OSError as e:
            raise NetError(f"{where}: cannot read HDF5 weights ({e})") from None
        copies = []
        with h5:
            data = h5.get("data")
            if not isinstance(data, h5py.Group):
                raise NetError(f"{where}: no group 'data' of layer weights (Caffe's HDF5 "
                               "layout: data/<layer name>/0, 1, ...)")
            for layer, owns in zip(self.layers, self._owns_params()):
                group = data.get(layer.name)
                if not isinstance(group, h5py.Group):
                    continue
                stored = [k for k, v in group.items() if isinstance(v, h5py.Dataset)]
                if len(stored) > len(layer.blobs) or \
                        any(k not in [str(j) for j in range(len(layer.blobs))] for k in stored):
                    raise NetError(f"{where}: layer '{layer.name}' has datasets "
                                   f"{', '.join(sorted(stored))} there but {len(layer.blobs)} "
                                   f"blob(s) here ({layer.type}); rename the layer to learn its "
                                   "parameters from scratch")
                for k, blob in enumerate(layer.blobs):
                    if str(k) not in group:
                        if owns[k]:
                            raise NetError(f"{where}: layer '{layer.name}' has no dataset "
                                           f"'{k}' for its param {k} of shape {blob.shape} "
                                           f"({len(layer.blobs)} blob(s) here)")
                        continue                   # shared: its owner's dataset fills it
                    dataset = group[str(k)]
                    if dataset.shape != blob.shape:
                        raise NetError(
                            f"{where}: cannot copy param {k} of layer '{layer.name}': shape "
                            f"mismatch, the file has {dataset.shape} but the net wants "
                            f"{blob.shape}. To learn this layer's parameters from scratch "
                            "rather than copying them, rename the layer")
                    if dataset.dtype.kind != "f":
                        raise NetError(f"{where}: param {k} of layer '{layer.name}' is "
                                       f"{dataset.dtype}, not float or double")
                    copies.append((blob, np.asarray(dataset[()], dtype=self.dtype)))
            named = [name for name, group in data.items() if isinstance(group, h5py.Group)]
        self._check_some_copied(where, copies, named)
        if complete:
            self._check_all_copied(where, copies)
        for blob, values in copies:
            blob.data = values

    def share_with(self, other):
        """Use ``other``'s parameter blobs for same-named layers (Caffe's ShareTrainedLayersWith:
        how a solver's test nets see the train net's weights)."""
        theirs = other.layer_dict
        for layer in self.layers:
            source = theirs.get(layer.name)
            if source is None:
                continue
            if len(source.blobs) != len(layer.blobs):
                raise NetError(f"layer '{layer.name}': {len(source.blobs)} blobs in the other net,"
                               f" {len(layer.blobs)} here")
            for blob, src in zip(layer.blobs, source.blobs):
                if blob.shape != src.shape:
                    raise NetError(f"layer '{layer.name}': cannot share a blob of shape "
                                   f"{src.shape} as {blob.shape}")
                blob.share_data(src)

    def __repr__(self):
        return f"<Net '{self.name}' {self.phase}: {len(self.layers)} layers>"
