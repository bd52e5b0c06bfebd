"""Draw a net as a graph picture, as Caffe's python/draw_net.py does.

    minicnn draw models/lenet/lenet_train_test.prototxt lenet.png --rankdir TB --phase TRAIN

Layers are boxes (coloured by kind, with their main parameters), blobs are octagons, and an
in-place layer gets a fresh node for the blob it rewrote, so the picture stays a left-to-right
(or top-to-bottom) flow. The output format follows the file extension: .png, .svg, .pdf, or
.dot/.gv for the Graphviz source (the only one that does not need Graphviz's `dot` program).
"""

import os

from minicnn.errors import MinicnnError
from minicnn.net import filter_net
from minicnn.proto import caffe_pb2, read_prototxt, upgrade_net
from minicnn.proto.wire import atomic_write

LAYER_COLOURS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                 "SPP": "#FF9900", "InnerProduct": "#CC33FF"}
OTHER_LAYER_COLOUR, IN_PLACE_LAYER_COLOUR, BLOB_COLOUR = "#6495ED", "#90EE90", "#E0E0E0"

# pycaffe's node styles (caffe.draw's names), as pydot keyword arguments.
LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": OTHER_LAYER_COLOUR, "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": IN_PLACE_LAYER_COLOUR, "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": BLOB_COLOUR, "style": "filled"}


def _details(layer, display_lrm):
    """The short parameter lines under a layer's name."""
    lines = []
    if layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        lines.append(f"num_output: {p.num_output}")
        for name in ("kernel_size", "stride", "pad", "dilation"):
            if getattr(p, name):
                lines.append(f"{name}: {'x'.join(map(str, getattr(p, name)))}")
        if p.group != 1:
            lines.append(f"group: {p.group}")
    elif layer.type == "Pooling":
        p = layer.pooling_param
        lines.append(f"{p.pool} " + ("global" if p.global_pooling else
                                     f"{p.kernel_size or p.kernel_h}/{p.stride}"))
    elif layer.type == "InnerProduct":
        lines.append(f"num_output: {layer.inner_product_param.num_output}")
    if display_lrm and layer.param:
        lines.append("lr_mult: " + ", ".join(f"{p.lr_mult:g}" for p in layer.param))
        lines.append("decay_mult: " + ", ".join(f"{p.decay_mult:g}" for p in layer.param))
    return lines


def _in_place(layer):
    """A one-bottom one-top layer that rewrites its bottom (pycaffe's "neuron layer" node)."""
    return len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]


def net_to_dot(net_param, rankdir="LR", phase="TRAIN", display_lrm=False, label_edges=False):
    """A graphviz.Digraph of ``net_param`` (phase TRAIN, TEST, or ALL for every layer; 0 and 1
    are TRAIN and TEST, and None is ALL, as pycaffe's phase argument). ``label_edges`` writes
    pycaffe's get_edge_label on the edges out of each layer."""
    try:
        import graphviz
    except ImportError:
        raise MinicnnError("drawing needs the graphviz Python package: "
                           "pip install graphviz (and Graphviz's dot program)") from None
    if rankdir not in RANKDIRS:                   # Graphviz would ignore it and draw TB
        raise DrawError(f"rankdir {rankdir!r}: one of {', '.join(RANKDIRS)}")
    net_param = upgrade_net(net_param.copy())
    if phase is None:
        phase = "ALL"
    if phase != "ALL":
        net_param = filter_net(net_param, caffe_pb2.NetState(phase=phase))
    dot = graphviz.Digraph(net_param.name or "Net", graph_attr={"rankdir": rankdir},
                           node_attr={"fontname": "Helvetica", "fontsize": "10"})
    version, count = {}, [0]                 # blob name -> its current node id

    def blob_node(name, new=False):
        if new or name not in version:        # an in-place top is drawn as a new node
            count[0] += 1
            version[name] = f"blob{count[0]}"
            dot.node(version[name], name, shape="octagon", style="filled",
                     fillcolor=BLOB_COLOUR)
        return version[name]

    for i, layer in enumerate(net_param.layer):
        node = f"layer{i}"
        label = "\n".join([layer.name, f"({layer.type})", *_details(layer, display_lrm)])
        colour = IN_PLACE_LAYER_COLOUR if _in_place(layer) else \
            LAYER_COLOURS.get(layer.type, OTHER_LAYER_COLOUR)
        dot.node(node, label, shape="box", style="filled", fillcolor=colour)
        edge_label = get_edge_label(layer).strip('"') if label_edges else ""
        for bottom in layer.bottom:
            dot.edge(blob_node(bottom), node)
        for top in layer.top:
            dot.edge(node, blob_node(top, new=top in layer.bottom),
                     **({"label": edge_label} if edge_label else {}))
    return dot


RANKDIRS = ("LR", "TB", "BT", "RL")


# --- pycaffe's caffe.draw helpers ---------------------------------------------------------------

class _PoolingTypes(dict):
    """Pooling method number -> name, as pycaffe's dict; also looked up by the enum value a
    minicnn message holds (``d[layer.pooling_param.pool]``, which is the name "MAX")."""

    def __missing__(self, key):
        if isinstance(key, str) and key in self.values():
            return str(key)
        raise KeyError(key)


def get_pooling_types_dict():
    """pycaffe's caffe.draw.get_pooling_types_dict: {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}."""
    return _PoolingTypes((int(v), str(v)) for v in caffe_pb2.PoolingParameter.PoolMethod.values())


def get_edge_label(layer):
    """pycaffe's label for the edges out of ``layer``: "Batch N" for Data, num_output for
    Convolution, Deconvolution and InnerProduct, else '""' (pydot's empty label)."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


LEARNING_TYPES = ("Convolution", "Deconvolution", "InnerProduct")


def get_layer_lr_mult(layer):
    """(weights' lr_mult, bias's lr_mult) of a Convolution, Deconvolution or InnerProduct
    layer, 1.0 where no param gives one; ValueError for other types or more than two params
    (pycaffe's caffe.draw.get_layer_lr_mult)."""
    if layer.type not in LEARNING_TYPES:
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    if len(layer.param) > 2:
        raise ValueError(f"layer '{layer.name}' has {len(layer.param)} param specs; "
                         "a learning rate multiplier pair needs at most 2")
    mults = [float(p.lr_mult) for p in layer.param] + [1.0, 1.0]
    return mults[0], mults[1]


def get_layer_label(layer, rankdir, display_lrm=False):
    """pycaffe's node label for ``layer``: name, (type), for Convolution, Deconvolution and
    Pooling the first kernel size, stride and pad, with display_lrm the lr mults of a learning
    layer; joined by a space for rankdir TB/BT, else by a literal backslash-n (Graphviz's line
    break), in double quotes (the pydot form)."""
    separator = " " if rankdir in ("TB", "BT") else r"\n"
    if layer.type == "Pooling":
        kind = f"({layer.type} {get_pooling_types_dict()[layer.pooling_param.pool]})"
    else:
        kind = f"({layer.type})"
    parts = [layer.name, kind]
    if layer.type == "Pooling":
        p = layer.pooling_param
        kernel, stride, pad = p.kernel_size, p.stride, p.pad
    elif layer.type in ("Convolution", "Deconvolution"):
        p = layer.convolution_param
        kernel, stride, pad = [v[0] if len(v) else default for v, default in
                               ((p.kernel_size, 1), (p.stride, 1), (p.pad, 0))]
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        parts.append(separator.join([f"kernel size: {kernel:d}", f"stride: {stride:d}",
                                     f"pad: {pad:d}"]))
    if display_lrm and layer.type in LEARNING_TYPES:
        lrm = get_layer_lr_mult(layer)
        if any(lrm):
            parts.append("lr mult: %.1f, %.1f" % lrm)
    return '"%s"' % separator.join(parts)


def choose_color_by_layertype(layertype):
    """A layer's fill colour by its type (pycaffe's caffe.draw.choose_color_by_layertype;
    SPP takes Pooling's)."""
    return LAYER_COLOURS.get(layertype, OTHER_LAYER_COLOUR)


class PydotGraph:
    """What pycaffe's get_pydot_graph returns, for the calls scripts make on a pydot.Dot:
    ``create(format="png")`` and ``create_png()`` (the picture's bytes), ``write(path,
    format="raw")`` and ``write_png(path)``, ``to_string()`` (the Graphviz source). Built on
    the graphviz package; ``digraph`` is its graphviz.Digraph."""

    def __init__(self, digraph):
        self.digraph = digraph

    def get_name(self):
        return self.digraph.name

    def to_string(self):
        return self.digraph.source

    __str__ = to_string

    def create(self, prog=None, format="ps", encoding=None):
        """The graph drawn as ``format`` (bytes); "raw", "dot" and "gv" give the source."""
        if prog not in (None, "dot"):
            raise MinicnnError(f"minicnn draws with Graphviz's dot program, not {prog!r}")
        extension = str(format).lstrip(".").lower()
        return _picture(self.digraph, "dot" if extension == "raw" else extension,
                        f"a .{extension} picture")

    def write(self, path, prog=None, format="raw", encoding=None):
        picture = self.create(prog, format)
        with atomic_write(path, "wb") as f:
            f.write(picture)
        return True

    def __getattr__(self, name):
        """create_png(), write_svg(path), ...: pydot's methods for each format."""
        for verb in ("create", "write"):
            if name.startswith(verb + "_"):
                method, extension = getattr(self, verb), name[len(verb) + 1:]
                if verb == "create":
                    return lambda prog=None, encoding=None: method(prog, extension)
                return lambda path, prog=None, encoding=None: method(path, prog, extension)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """pycaffe's caffe.draw.get_pydot_graph: the graph of ``caffe_net`` (a NetParameter or a
    prototxt path) with layers of ``phase`` (TRAIN, TEST, 0, 1; None for every layer), as a
    PydotGraph (pydot's create, write, create_png, write_png, to_string). The picture is
    minicnn's: an in-place layer's top is a fresh blob node, so the graph has no cycles."""
    return PydotGraph(net_to_dot(_net_param(caffe_net), rankdir, phase, display_lrm,
                                 label_edges))


def _picture(dot, extension, where):
    """The picture of ``dot`` in the format ``extension`` (bytes; the source for dot/gv)."""
    if extension in ("dot", "gv"):
        return dot.source.encode()
    import graphviz
    try:            # piped, not rendered: render writes its source to the path less the extension
        return dot.pipe(format=extension)
    except graphviz.ExecutableNotFound:
        raise MinicnnError("drawing needs Graphviz's 'dot' program, which is not installed: "
                           "apt-get install graphviz (Debian/Ubuntu) or brew install graphviz "
                           "(or write the .dot source instead)") from None
    except (graphviz.CalledProcessError, ValueError) as e:
        raise MinicnnError(f"Graphviz could not write {where}: {e}") from None


def draw_net(model, path=None, *args, **kwargs):
    """Write a picture of the net in ``model`` (a prototxt path or NetParameter) to ``path``:
    draw_net(model, path, rankdir="LR", phase="TRAIN", display_lrm=False).

    pycaffe's form is taken too, told by its second argument being a rank direction:
    ``caffe.draw.draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False)``
    returns the picture's bytes, and phase None (its default) draws every phase."""
    if path is None and "rankdir" in kwargs:                 # draw_net(net, rankdir="TB")
        return _draw_net_bytes(model, *args, **kwargs)
    if isinstance(path, str) and path in RANKDIRS:
        return _draw_net_bytes(model, path, *args, **kwargs)
    if path is None:
        raise TypeError("draw_net needs a picture path (minicnn's form) or a rankdir "
                        "(pycaffe's form: draw_net(caffe_net, 'LR', ext='png'))")
    return _draw_net_file(model, path, *args, **kwargs)


def _net_param(model):
    if isinstance(model, caffe_pb2.NetParameter):
        return model
    if not (isinstance(model, (str, bytes)) or hasattr(model, "__fspath__")):
        raise DrawTypeError(f"draw: the net is a prototxt path or a NetParameter, not "
                        f"{type(model).__name__}" + (" (draw the prototxt it was made from)"
                                                     if hasattr(model, "blobs") else ""))
    return read_prototxt(model)


class DrawError(MinicnnError, ValueError):
    """A drawing argument that cannot be drawn (a ValueError too, as pycaffe's own are)."""


class DrawTypeError(MinicnnError, TypeError):
    """A net given as what draw cannot read (not a path nor a NetParameter)."""


def _draw_net_bytes(caffe_net, rankdir, ext="png", phase=None, display_lrm=False):
    return get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm).create(
        format=ext)


def _draw_net_file(model, path, rankdir="LR", phase="TRAIN", display_lrm=False):
    dot = net_to_dot(_net_param(model), rankdir, phase, display_lrm)
    extension = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    if extension in ("dot", "gv", "raw"):
        with atomic_write(path, "w") as f:
            f.write(dot.source)
        return path
    if not extension:
        raise MinicnnError(f"give the picture a file extension (.png, .svg, .pdf or .dot): {path}")
    picture = _picture(dot, extension, path)
    with atomic_write(path, "wb") as f:
        f.write(picture)
    return path


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """pycaffe's caffe.draw.draw_net_to_file: ``phase`` None (pycaffe's default) draws the
    layers of every phase; a .raw (or .dot) file gets the Graphviz source."""
    return draw_net(caffe_net, filename, rankdir=rankdir,
                    phase="ALL" if phase is None else phase, display_lrm=display_lrm)
