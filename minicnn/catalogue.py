"""The layer catalogue, generated from the registry: every layer type, its parameters with
Caffe's defaults, its bottoms and tops, its formula (the class docstring) and the backends of
the ops it calls.

    minicnn layers                  # a table in the terminal
    minicnn layers --markdown       # docs/layers.md (a test keeps that file current)
"""

import inspect
import re

from minicnn import layers as _layers  # noqa: F401  (registers every layer)
from minicnn import ops
from minicnn.layer import LAYERS, Layer
from minicnn.ops import Op


def _count(exact, low, high):
    if exact is not None:
        return str(exact)
    if low is not None and high is not None:
        return f"{low}-{high}" if low != high else str(low)
    if low is not None:
        return f"{low}+"
    return "any"


def _ops_of(cls):
    """The Op objects whose names appear in the source of the methods the layer class runs:
    its own or inherited, and a base's version only where the one above calls super() (a
    method a subclass replaces does not count)."""
    pieces = []
    for name, _ in inspect.getmembers(cls, inspect.isfunction):
        for c in cls.__mro__:
            f = c.__dict__.get(name)
            if inspect.isfunction(f) and f.__module__.startswith("minicnn.layers"):
                pieces.append(inspect.getsource(f))
                if "super()" not in pieces[-1]:
                    break
    source = "".join(pieces)
    found = {}
    for name in ops.__all__:
        op = getattr(ops, name)
        if isinstance(op, Op) and re.search(rf"\b{name}\b", source):
            found[name] = op
    return found


def _default(field):
    if field.repeated:
        return "(repeated)"
    if field.is_message:
        return "(message)"
    value = field.default
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and field.kind != "enum":
        return f'"{value}"'
    return f"{value:g}" if isinstance(value, float) else str(value)


def layer_entries(builtin_only=True):
    """One dict per registered layer type (aliases folded into their class); with
    ``builtin_only``, minicnn's own layers and not those a program registered."""
    entries = {}
    for type_name, cls in sorted(LAYERS.items()):
        if builtin_only and not cls.__module__.startswith("minicnn."):
            continue
        entry = entries.setdefault(cls, {"type": cls.type, "aliases": [], "class": cls})
        if type_name != cls.type:
            entry["aliases"].append(type_name)
    out = []
    for cls, entry in sorted(entries.items(), key=lambda kv: kv[1]["type"]):
        found = _ops_of(cls)
        kinds = sorted({kind for op in found.values() for kind in op.declared},
                       key=["ref", "cpu", "cuda"].index)
        params = []
        if cls.param_field:
            from minicnn.proto.caffe_pb2 import LayerParameter
            message = LayerParameter.DESCRIPTOR.fields_by_name[cls.param_field].message
            params = [(f.name, f.type_name, _default(f)) for f in message.fields]
        doc = inspect.cleandoc(cls.__doc__ or "")
        if not cls.exact_num_bottom == 0 and cls.max_num_bottom != 0:
            backward = "no" if cls.backward is Layer.backward else "yes"
        else:
            backward = "-"                                   # data layers have no bottoms
        entry.update(backward=backward,
            bottoms=_count(cls.exact_num_bottom, cls.min_num_bottom, cls.max_num_bottom),
            tops=_count(cls.exact_num_top, cls.min_num_top, cls.max_num_top),
            param_field=cls.param_field, params=params, doc=doc,
            ops=sorted(found), backends=kinds or ["numpy"],
            module=cls.__module__, loss=cls.is_loss)
        out.append(entry)
    return out


def markdown():
    entries = layer_entries()
    lines = ["# Layer catalogue", "",
             "Generated from minicnn's layer registry by `minicnn layers --markdown` "
             "(tests/test_catalogue.py checks that this file is current). Every layer runs in "
             "float32 and float64. Backends: \"ref\" is the NumPy reference op in "
             "`minicnn/ops/` (the specification), \"cpu\" a compiled CPU path, \"cuda\" the GPU "
             "path; \"numpy\" layers only move or reshape data, with no op of their own.", "",
             "| Type | Bottoms | Tops | Backward | Parameters | Backends |",
             "|---|---|---|---|---|---|"]
    for e in entries:
        name = e["type"] + (f" (also {', '.join(e['aliases'])})" if e["aliases"] else "")
        lines.append(f"| [{name}](#{e['type'].lower()}) | {e['bottoms']} | {e['tops']} | "
                     f"{e['backward']} | {e['param_field'] or '-'} | "
                     f"{', '.join(e['backends'])} |")
    for e in entries:
        lines += ["", f"## {e['type']}", ""]
        where = f"`{e['module']}.{e['class'].__name__}`"
        if e["aliases"]:
            where += " (also registered as " + ", ".join(f"`{a}`" for a in e["aliases"]) + ")"
        lines += [where + ("; a loss (top 0 weighs 1 by default)" if e["loss"] else ""), ""]
        lines += ["```text", e["doc"] or "(no description)", "```", ""]
        lines.append(f"Bottoms: {e['bottoms']}. Tops: {e['tops']}. Backward: {e['backward']}. "
                     f"Backends: "
                     f"{', '.join(e['backends'])}"
                     + (f" (ops: {', '.join(f'`{o}`' for o in e['ops'])})" if e["ops"] else "")
                     + ".")
        if e["params"]:
            lines += ["", f"`{e['param_field']}`:", "", "| Field | Type | Default |",
                      "|---|---|---|"]
            lines += [f"| {n} | {t} | {d} |" for n, t, d in e["params"]]
    return "\n".join(lines) + "\n"


def table(builtin_only=False):
    header = ("type", "bottoms", "tops", "backward", "parameters", "backends")
    rows = [(e["type"], e["bottoms"], e["tops"], e["backward"], e["param_field"] or "-",
             ", ".join(e["backends"])) for e in layer_entries(builtin_only)]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [header] + rows)
