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
OTHER_LAYER_COLOUR, BLOB_COLOUR = "#6495ED", "#E0E0E0"


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


def net_to_dot(net_param, rankdir="LR", phase="TRAIN", display_lrm=False):
    """A graphviz.Digraph of ``net_param`` (phase TRAIN, TEST, or ALL for every layer)."""
    try:
        import graphviz
    except ImportError:
        raise MinicnnError("drawing needs the graphviz Python package: "
                           "pip install graphviz (and Graphviz's dot program)") from None
    net_param = upgrade_net(net_param.copy())
    if phase != "ALL":
        net_param = filter_net(net_param, caffe_pb2.NetState(phase=phase))
    dot = graphviz.Digraph(net_param.name or "net", graph_attr={"rankdir": rankdir},
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
        dot.node(node, label, shape="box", style="filled",
                 fillcolor=LAYER_COLOURS.get(layer.type, OTHER_LAYER_COLOUR))
        for bottom in layer.bottom:
            dot.edge(blob_node(bottom), node)
        for top in layer.top:
            dot.edge(node, blob_node(top, new=top in layer.bottom))
    return dot


RANKDIRS = ("LR", "TB", "BT", "RL")


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


def draw_net(model, path, *args, **kwargs):
    """Write a picture of the net in ``model`` (a prototxt path or NetParameter) to ``path``:
    draw_net(model, path, rankdir="LR", phase="TRAIN", display_lrm=False).

    pycaffe's form is taken too, told by its second argument being a rank direction:
    ``caffe.draw.draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False)``
    returns the picture's bytes, and phase None (its default) draws every phase."""
    if isinstance(path, str) and path in RANKDIRS:
        return _draw_net_bytes(model, path, *args, **kwargs)
    return _draw_net_file(model, path, *args, **kwargs)


def _net_param(model):
    return model if isinstance(model, caffe_pb2.NetParameter) else read_prototxt(model)


def _draw_net_bytes(caffe_net, rankdir, ext="png", phase=None, display_lrm=False):
    dot = net_to_dot(_net_param(caffe_net), rankdir, phase or "ALL", display_lrm)
    return _picture(dot, str(ext).lstrip(".").lower(), f"a .{ext} picture")


def _draw_net_file(model, path, rankdir="LR", phase="TRAIN", display_lrm=False):
    dot = net_to_dot(_net_param(model), rankdir, phase, display_lrm)
    extension = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    if extension in ("dot", "gv"):
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
    layers of every phase."""
    return draw_net(caffe_net, filename, rankdir=rankdir, phase=phase or "ALL",
                    display_lrm=display_lrm)
