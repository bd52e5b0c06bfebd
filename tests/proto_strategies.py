"""Hypothesis strategies that draw random messages of any type in minicnn's schema."""

import numpy as np
from hypothesis import strategies as st

from minicnn.proto.schema import INT_RANGES, MESSAGES

_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
_DOUBLE = st.floats(allow_nan=True, allow_infinity=True)


def scalar_values(field):
    if field.kind == "enum":
        return st.sampled_from(list(field.enum.values))
    t = field.type_name
    if t in INT_RANGES:
        lo, hi = INT_RANGES[t]
        return st.integers(lo, hi)
    return {"bool": st.booleans(), "float": _FLOAT32, "double": _DOUBLE, "string": _TEXT,
            "bytes": st.binary(max_size=12)}[t]


@st.composite
def messages(draw, type_name="NetParameter", depth=2, max_fields=4):
    """A random message: a few of its fields, sub-messages down to ``depth`` levels."""
    desc = MESSAGES[type_name]
    fields = [f for f in desc.fields if depth > 0 or not f.is_message]
    chosen = draw(st.lists(st.sampled_from(fields), max_size=max_fields, unique_by=id)) \
        if fields else []
    msg = desc.cls()
    for field in chosen:
        if field.is_message:
            child = messages(field.message.name, depth - 1, max_fields)
            if field.repeated:
                getattr(msg, field.name).extend(draw(st.lists(child, min_size=1, max_size=2)))
            else:
                setattr(msg, field.name, draw(child))
        elif field.array:
            values = draw(st.lists(_FLOAT32 if field.type_name == "float" else _DOUBLE,
                                   min_size=1, max_size=6))
            setattr(msg, field.name, np.array(values))
        elif field.repeated:
            getattr(msg, field.name).extend(draw(st.lists(scalar_values(field), min_size=1,
                                                          max_size=3)))
        else:
            setattr(msg, field.name, draw(scalar_values(field)))
    msg._touch()                                  # an empty sub-message is still "present"
    return msg


message_types = st.sampled_from(sorted(MESSAGES))
