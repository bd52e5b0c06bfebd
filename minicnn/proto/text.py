"""Protobuf text format (prototxt): parse into messages and write them back.

    net = parse_text(open("lenet.prototxt").read(), "NetParameter", path="lenet.prototxt")
    print(to_text(net))

The grammar is protobuf's: ``name: value`` for scalars, ``name { ... }`` (or ``name: { ... }``,
``name < ... >``) for messages, a repeated field is repeated (or written ``name: [a, b]``), enums
are bare names, strings take C escapes and adjacent strings concatenate, ``#`` starts a comment,
and ``,`` or ``;`` may end a field. Errors name file:line:column, the message and the field, and
suggest the nearest known field name for a typo.
"""

import difflib
import os
import re
from bisect import bisect_right

import numpy as np

from minicnn.errors import PrototxtError
from minicnn.proto.schema import INT_RANGES, MESSAGES

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\f\v\n]+|\#[^\n]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>0[xX][0-9A-Fa-f]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?[fF]?)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<symbol>[{}<>\[\]:,;-])
""", re.VERBOSE)

_LETTER = re.compile(r"[A-Za-z_]")
_CLOSING = {"{": "}", "<": ">"}
_BOOL_WORDS = {"true": True, "True": True, "t": True, "false": False, "False": False, "f": False}
_SIMPLE_ESCAPES = {"n": 10, "t": 9, "r": 13, "a": 7, "b": 8, "f": 12, "v": 11,
                   "\\": 92, "'": 39, '"': 34, "?": 63}


class _Token:
    __slots__ = ("kind", "text", "pos")

    def __init__(self, kind, text, pos):
        self.kind, self.text, self.pos = kind, text, pos


class _Parser:
    def __init__(self, text, path, merge=False):
        self.text, self.path = text, path
        self.merge = merge         # protobuf's Merge: a singular field given again, last wins
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.stack = []            # messages being parsed, for "in layer 'x'" context
        self.layer_starts = []     # (layer message, position of its '{'), for layer_lines
        self.top_fields = {}       # top-level field name -> position of its first use
        self.field_positions = None   # {id(message): {field name: [positions]}} when asked for
        self.i = 0
        self.tokens = []
        self.tokens = self._tokenize(text)

    # --- tokens ---
    def _tokenize(self, text):
        tokens, pos, n = [], 0, len(text)
        while pos < n:
            m = _TOKEN.match(text, pos)
            if m is None:
                ch = text[pos]
                if ch in "\"'":
                    self.fail("string is not closed on this line", pos)
                self.fail(f"unexpected character {ch!r}", pos)
            kind = m.lastgroup
            if kind == "number" and _LETTER.match(text, m.end()):
                # protobuf's tokenizer: "Need space between number and identifier" (else
                # num_output: 0x1bias_term would read 0x1b, then a field 'ias_term')
                word = _TOKEN.match(text, m.end()).group()
                self.fail(f"a number must be followed by a space or a symbol, not a letter: "
                          f"'{m.group()}{word}'", pos)
            if kind != "space":
                tokens.append(_Token(kind, m.group(), pos))
            pos = m.end()
        return tokens

    def where(self, pos):
        line = bisect_right(self.line_starts, pos)
        return line, pos - self.line_starts[line - 1] + 1

    def fail(self, message, pos=None):
        if pos is None:
            pos = self.tokens[self.i].pos if self.i < len(self.tokens) else len(self.text)
        line, col = self.where(pos)
        raise PrototxtError(message + self._context(), self.path, line, col)

    def _context(self):
        for msg in reversed(self.stack):
            if type(msg).DESCRIPTOR.name in ("LayerParameter", "V1LayerParameter") \
                    and msg.HasField("name"):
                return f" (in layer '{msg.name}')"
        return ""

    def _layer(self):
        """The innermost LayerParameter being parsed, or None."""
        for msg in reversed(self.stack):
            if type(msg).DESCRIPTOR.name == "LayerParameter":
                return msg
        return None

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def next(self, expecting="a value"):
        tok = self.peek()
        if tok is None:
            self.fail(f"unexpected end of file, expected {expecting}")
        self.i += 1
        return tok

    def accept(self, symbol):
        tok = self.peek()
        if tok is not None and tok.kind == "symbol" and tok.text == symbol:
            self.i += 1
            return True
        return False

    # --- messages ---
    def parse_message(self, msg, closing=None, open_pos=0):
        desc = type(msg).DESCRIPTOR
        seen, arrays = {}, {}
        self.stack.append(msg)
        while True:
            tok = self.peek()
            if tok is None:
                if closing:
                    line, _ = self.where(open_pos)
                    self.fail(f"unexpected end of file: the {desc.name} opened on line {line} "
                              f"is missing its '{closing}'")
                break
            if tok.kind == "symbol" and tok.text == closing:
                self.i += 1
                break
            if tok.kind != "ident":
                what = f"a field name or '{closing}'" if closing else "a field name"
                self.fail(f"expected {what} in {desc.name}, got '{tok.text}'")
            self.i += 1
            field = desc.fields_by_name.get(tok.text)
            if field is None:
                self.fail(_unknown_field_message(desc, tok.text, msg, self._layer()), tok.pos)
            if len(self.stack) == 1:
                self.top_fields.setdefault(field.name, tok.pos)
            if self.field_positions is not None:
                self.field_positions.setdefault(id(msg), {}).setdefault(field.name, []).append(
                    tok.pos)
            if not field.repeated and not self.merge:
                if field.name in seen:
                    self.fail(f"field '{field.name}' of {desc.name} is set twice (first on line "
                              f"{self.where(seen[field.name])[0]}); it is not repeated", tok.pos)
                seen[field.name] = tok.pos
            if field.is_message:
                self.accept(":")
                if field.repeated and self.accept("["):
                    if not self.accept("]"):
                        while True:                 # [ {...}, {...} ]: commas, as protobuf
                            self._parse_child(msg, field)
                            if self.accept("]"):
                                break
                            if not self.accept(","):
                                self.fail("expected ',' or ']' in the list")
                else:
                    self._parse_child(msg, field)
            else:
                if not self.accept(":"):
                    self.fail(f"expected ':' after field '{field.name}'")
                if self.accept("["):
                    if not field.repeated:
                        self.fail(f"field '{field.name}' of {desc.name} is not repeated; "
                                  "a list [...] is not allowed")
                    values = []
                    if not self.accept("]"):
                        while True:
                            values.append(self.parse_scalar(field))
                            if self.accept("]"):
                                break
                            if not self.accept(","):
                                self.fail("expected ',' or ']' in the list")
                else:
                    values = [self.parse_scalar(field)]
                if field.array:
                    arrays.setdefault(field.name, []).extend(values)
                elif field.repeated:
                    getattr(msg, field.name).extend(values)
                else:
                    setattr(msg, field.name, values[0])
            if not self.accept(","):
                self.accept(";")
        for name, values in arrays.items():        # after what the message held (merging)
            setattr(msg, name, np.concatenate([getattr(msg, name), values]))
        msg._touch()
        self.stack.pop()

    def _parse_child(self, msg, field):
        tok = self.next("'{'")
        if tok.kind != "symbol" or tok.text not in _CLOSING:
            self.fail(f"expected '{{' to open {field.message.name} '{field.name}', "
                      f"got '{tok.text}'", tok.pos)
        child = getattr(msg, field.name).add() if field.repeated else getattr(msg, field.name)
        if len(self.stack) == 1 and field.name in ("layer", "layers"):
            self.layer_starts.append((child, tok.pos))
        self.parse_message(child, _CLOSING[tok.text], tok.pos)

    # --- scalars ---
    def parse_scalar(self, field):
        tok = self.next(f"a value for '{field.name}'")
        negative = False
        if tok.kind == "symbol" and tok.text == "-":
            negative, tok = True, self.next(f"a number after '-' for '{field.name}'")
        kind, t = field.kind, field.type_name
        written = ("-" if negative else "") + tok.text   # str() fails on ints of 4300+ digits
        if kind == "enum":
            if tok.kind == "ident" and not negative:
                if tok.text not in field.enum.values:
                    close = difflib.get_close_matches(tok.text, field.enum.values, n=1)
                    hint = f"; did you mean '{close[0]}'?" if close else ""
                    if field.name == "engine" and tok.text.startswith("MKL"):
                        hint = "; " + _INTEL_ENGINE
                    self.fail(f"'{tok.text}' is not a value of field '{field.name}' (enum "
                              f"{field.enum.name}: {', '.join(field.enum.values)}){hint}", tok.pos)
                return field.enum.members[tok.text]
            if tok.kind == "number":
                number = self._integer(tok, negative, field)
                if number not in field.enum.names:
                    self.fail(f"{written} is not a value of field '{field.name}' "
                              f"(enum {field.enum.name})", tok.pos)
                return field.enum.names[number]
            self.fail(f"expected an enum name for field '{field.name}', got '{tok.text}'", tok.pos)
        if t in INT_RANGES:
            if tok.kind != "number":
                self.fail(f"expected an integer for field '{field.name}' ({t}), "
                          f"got '{tok.text}'", tok.pos)
            value = self._integer(tok, negative, field)
            lo, hi = INT_RANGES[t]
            if not lo <= value <= hi:
                self.fail(f"{written} is out of range for field '{field.name}' ({t}: "
                          f"{lo} to {hi})", tok.pos)
            return value
        if t in ("float", "double"):
            if tok.kind == "number":
                text = tok.text
                if text[0] == "0" and len(text) > 1 and (text[1].isdigit() or text[1] in "xX"):
                    # protobuf's tokenizer makes 010 an octal and 0x10 a hex integer, and its
                    # text parsers refuse both for a float field (C++: "Expect a decimal
                    # number"; protobuf 2's read them as integers, 010 as 8)
                    self.fail(f"'{text}' for field '{field.name}' ({t}): a float takes a decimal "
                              "number (a leading 0 or 0x makes an octal or hex integer, which "
                              "protobuf refuses here)", tok.pos)
                value = float(text.rstrip("fF"))
            elif tok.kind == "ident" and tok.text.lower() in ("inf", "infinity", "nan"):
                value = float("nan") if tok.text.lower() == "nan" else float("inf")
            else:
                self.fail(f"expected a number for field '{field.name}' ({t}), "
                          f"got '{tok.text}'", tok.pos)
            value = -value if negative else value
            if t == "float":
                with np.errstate(over="ignore"):
                    value = float(np.float32(value))
            return value
        if t == "bool":
            if not negative and tok.kind == "ident" and tok.text in _BOOL_WORDS:
                return _BOOL_WORDS[tok.text]
            if not negative and tok.kind == "number" and tok.text in ("0", "1"):
                return tok.text == "1"
            self.fail(f"expected true or false for field '{field.name}', got '{tok.text}'", tok.pos)
        # string or bytes: one or more adjacent quoted strings
        if tok.kind != "string" or negative:
            self.fail(f"expected a quoted string for field '{field.name}', got '{tok.text}'",
                      tok.pos)
        raw = self._unescape(tok)
        while self.peek() is not None and self.peek().kind == "string":
            raw += self._unescape(self.next())
        if t == "bytes":
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"string for field '{field.name}' is not valid UTF-8", tok.pos)

    def _integer(self, tok, negative, field):
        text = tok.text
        try:
            if text.lower().startswith("0x"):
                value = int(text, 16)
            elif len(text) > 1 and text[0] == "0" and text.isdigit():
                value = int(text, 8)
            else:
                value = int(text)
        except ValueError:
            self.fail(f"expected an integer for field '{field.name}', got '{text}'", tok.pos)
        return -value if negative else value

    def _unescape(self, tok):
        body, out, k = tok.text[1:-1], bytearray(), 0
        while k < len(body):
            ch = body[k]
            if ch != "\\":
                if "\ud800" <= ch <= "\udfff":   # only in a str, e.g. read with surrogateescape
                    self.fail(f"string holds {ch!r}, a lone surrogate, not text", tok.pos + 1 + k)
                out += ch.encode("utf-8")
                k += 1
                continue
            k += 1
            esc = body[k]
            if esc in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[esc])
                k += 1
            elif esc in "xX":
                digits = re.match(r"[0-9A-Fa-f]{1,2}", body[k + 1:])
                if not digits:
                    self.fail("\\x must be followed by hex digits", tok.pos + k + 1)
                out.append(int(digits.group(), 16))
                k += 1 + len(digits.group())
            elif esc in "01234567":
                digits = re.match(r"[0-7]{1,3}", body[k:]).group()
                if int(digits, 8) > 255:
                    self.fail(f"octal escape \\{digits} is larger than a byte", tok.pos + k + 1)
                out.append(int(digits, 8))
                k += len(digits)
            elif esc in "uU":
                k = self._unicode_escape(tok, body, k, out)
            else:
                self.fail(f"unknown escape '\\{esc}' in string", tok.pos + k + 1)
        return bytes(out)

    def _unicode_escape(self, tok, body, k, out):
        """protobuf's \\uXXXX and \\UXXXXXXXX (a code point, appended as UTF-8; a UTF-16 pair
        \\uD83D\\uDE00 is one code point); ``k`` is at the u. Returns the index after it."""
        esc, width = body[k], 4 if body[k] == "u" else 8
        digits = body[k + 1:k + 1 + width]
        if not re.fullmatch(f"[0-9A-Fa-f]{{{width}}}", digits):
            self.fail(f"\\{esc} must be followed by {width} hex digits", tok.pos + k + 1)
        code, k = int(digits, 16), k + 1 + width
        if code > 0x10FFFF:
            self.fail(f"\\{esc}{digits} is past the last Unicode code point (10FFFF)",
                      tok.pos + k - width)
        trail = re.match(r"\\u([Dd][C-Fc-f][0-9A-Fa-f]{2})", body[k:])
        if 0xD800 <= code < 0xDC00 and trail:
            code = 0x10000 + ((code - 0xD800) << 10 | (int(trail.group(1), 16) - 0xDC00))
            k += 6
        # a lone surrogate: the three bytes protobuf writes too (not UTF-8: a string refuses it)
        out += chr(code).encode("utf-8", "surrogatepass")
        return k


# A layer type two forks both define, each with its own parameters: a file from the other fork
# names fields minicnn's has not. The news is whose layer the file holds, not a guessed spelling.
_SAME_NAME_OTHER_FORK = {
    "BNParameter": (
        {"bn_mode", "scale_filler", "shift_filler", "var_eps", "moving_average", "decay"},
        "minicnn's BN is the PSPNet/yjxiong fork's layer (bn_param: slope_filler, bias_filler, "
        "momentum, eps, frozen); this file's BN is another fork's layer of the same name, "
        "which minicnn does not implement: SegNet's caffe-segnet and ENet (bn_mode, "
        "scale_filler, shift_filler; bn_mode: INFERENCE is y = scale * x + shift per channel, "
        "a Scale layer with bias_term: true) or an early PSPNet/DeepLab revision (scale_filler, "
        "shift_filler, var_eps, moving_average, decay)"),
}


# Intel Caffe's engines, in its copies of the model zoo's files: BVLC Caffe refuses them too,
# and minicnn picks its own backends whatever a layer's engine says.
_INTEL_ENGINE = ("MKL2017 and MKLDNN are Intel Caffe's engines (a string 'engine' on the layer, "
                 "or these values in its parameters): minicnn chooses its own backends, so "
                 "delete the line")


def _unknown_field_message(desc, name, msg=None, layer=None):
    text = f"{desc.name} has no field named '{name}'"
    if desc.name == "LayerParameter" and name == "engine":
        return text + "; " + _INTEL_ENGINE
    fields, note = _SAME_NAME_OTHER_FORK.get(desc.name, ((), ""))
    if name in fields:
        return text + "; " + note
    if desc.name == "LayerParameter" and name.endswith("_param") and msg is not None \
            and msg.HasField("type") and not _known_layer_type(msg.type):
        # a fork's layer (ShuffleChannel, PSROIPooling, ...): its type is the news, not a
        # guessed spelling of one of our parameters
        return text + f": the layer's type '{msg.type}' is not one minicnn implements " \
                      "(a Caffe fork's layer?)"
    if desc.name != "LayerParameter" and layer is not None and layer.HasField("type") \
            and not _known_layer_type(layer.type):
        # the fork's own fields in a standard block (SSD's AnnotatedData: transform_param's
        # resize_param): the layer's type is the news here too
        return text + f"; the layer's type '{layer.type}' is not one minicnn implements " \
                      "(a Caffe fork's layer, with the fork's fields?)"
    close = difflib.get_close_matches(name, desc.fields_by_name, n=1, cutoff=0.6)
    if close:
        return text + f"; did you mean '{close[0]}'?"
    if desc.name in ("LayerParameter", "V1LayerParameter"):
        homes = [f.name for f in desc.fields
                 if f.is_message and f.name.endswith("_param") and name in f.message.fields_by_name]
        own = _own_param_field(msg.type) if msg is not None and msg.HasField("type") else None
        if own in homes:                  # the layer's own block first (a ReLU's relu_param)
            homes.remove(own)
            homes.insert(0, own)
        if homes:
            return text + f"; it belongs inside {' or '.join(homes[:3])} {{ ... }}"
        if name.endswith("_param"):
            return text + " (a layer parameter of a Caffe fork that minicnn does not know)"
    return text


def _own_param_field(name):
    """The parameter block of layer type ``name`` (relu_param for ReLU), None if unknown."""
    from minicnn.layer import LAYERS

    cls = LAYERS.get(name) if isinstance(name, str) else None
    return getattr(cls, "param_field", None)


def _known_layer_type(name):
    # the layer registry, imported here because minicnn.layer imports this module's package
    from minicnn.layer import LAYERS

    return name in LAYERS


def parse_text(text, message_type="NetParameter", path="<string>", into=None, merge=False):
    """Parse prototxt ``text`` into a new message of ``message_type`` (or into message ``into``,
    whose repeated fields it extends). A field that is not repeated may be given once, as in
    Caffe's files, or again with ``merge`` (the last value wins: protobuf's text_format.Merge).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PrototxtError(f"file is not UTF-8 text (bad byte at offset {e.start})",
                                path, 1, 1) from None
    text = text.lstrip("\ufeff")
    msg = into if into is not None else MESSAGES[message_type].cls()
    _Parser(text, path, merge).parse_message(msg)
    return msg


def layer_lines(path):
    """[(layer message, the line its ``layer {`` (or V1 ``layers {``) opens on)] in file order
    for the net prototxt at ``path``; [] when it cannot be read. For the errors a Net finds
    after parsing (an unknown layer type, bad parameters), which name the line too; a train_val
    file has layers of one name in both phases, told apart by their include/exclude rules."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8").lstrip("\ufeff")
        parser = _Parser(text, path)
        parser.parse_message(MESSAGES["NetParameter"].cls())
    except (OSError, UnicodeDecodeError, PrototxtError):
        return []
    return [(layer, parser.where(pos)[0]) for layer, pos in parser.layer_starts]


def v0_layer_lines(path):
    """For the errors of Caffe's V0 upgrade, which come after parsing: per top-level ``layers``
    entry of the net prototxt at ``path``, in file order, (the line it opens on, {field name:
    [lines]} of the entry itself (bottom, top), {field name: [lines]} of its V0 ``layer {}``);
    [] when it cannot be read."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8").lstrip("\ufeff")
        parser = _Parser(text, path)
        parser.field_positions = {}
        parser.parse_message(MESSAGES["NetParameter"].cls())
    except (OSError, UnicodeDecodeError, PrototxtError):
        return []

    def lines(msg):
        return {name: [parser.where(pos)[0] for pos in positions]
                for name, positions in parser.field_positions.get(id(msg), {}).items()}
    return [(parser.where(pos)[0], lines(entry), lines(entry.layer))
            for entry, pos in parser.layer_starts if type(entry).DESCRIPTOR.name ==
            "V1LayerParameter"]


def field_lines(path, message_type):
    """{field name: the line it is first set on} for the top-level fields of the prototxt at
    ``path`` ({} when it cannot be read): for errors about values found after parsing (a
    solver's rms_decay out of range) to name the line, as parse errors do."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8").lstrip("\ufeff")
        parser = _Parser(text, path)
        parser.parse_message(MESSAGES[message_type].cls())
    except (OSError, UnicodeDecodeError, PrototxtError):
        return {}
    return {name: parser.where(pos)[0] for name, pos in parser.top_fields.items()}


def read_prototxt(path, message_type="NetParameter"):
    """Read a prototxt file. Errors name the file, line, column and field."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PrototxtError(f"cannot read file: {e.strerror}", path, 0, 0) from None
    return parse_text(data, message_type, path=path)


# --- writer ------------------------------------------------------------------------------------

def format_float(value, double=False):
    """The shortest text that reads back as the same float32 (or float64) value."""
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    text = repr(float(value)) if double else str(np.float32(value))
    return text[:-2] if text.endswith(".0") else text


_NAMED_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _quote(value):
    """A quoted, escaped string: text stays readable, control characters and raw bytes go octal."""
    if isinstance(value, str):
        chars = (_NAMED_ESCAPES.get(ch) or (f"\\{ord(ch):03o}" if ord(ch) < 0x20 or ch == "\x7f"
                                            else ch) for ch in value)
    else:
        chars = (_NAMED_ESCAPES.get(chr(b)) or (chr(b) if 0x20 <= b < 0x7F else f"\\{b:03o}")
                 for b in value)
    return '"' + "".join(chars) + '"'


def _format_scalar(field, value):
    if field.kind == "enum":
        return value if isinstance(value, str) else str(value)
    t = field.type_name
    if t == "bool":
        return "true" if value else "false"
    if t in ("string", "bytes"):
        return _quote(value)
    if t in ("float", "double"):
        return format_float(value, double=(t == "double"))
    return str(value)


def to_text(msg, indent=0):
    """The message as prototxt, fields in field-number order as protobuf prints them."""
    pad, lines = "  " * indent, []
    for field, value in msg.ListFields():
        items = value if (field.repeated or field.array) else [value]
        for item in items:
            if field.is_message:
                lines.append(f"{pad}{field.name} {{")
                body = to_text(item, indent + 1)
                if body:
                    lines.append(body.rstrip("\n"))
                lines.append(f"{pad}}}")
            else:
                lines.append(f"{pad}{field.name}: {_format_scalar(field, item)}")
    return "\n".join(lines) + ("\n" if lines else "")


def write_prototxt(msg, path):
    """Write ``msg`` as prototxt; the file appears whole or not at all (write, then rename)."""
    from minicnn.proto.wire import atomic_write
    with atomic_write(path, "w") as f:
        f.write(to_text(msg))
