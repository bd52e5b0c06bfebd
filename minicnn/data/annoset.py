"""SSD's convert_annoset (weiliu89/caffe, tools/convert_annoset.cpp and util/io.cpp): a list of
``image annotation`` lines -> an LMDB or LevelDB of AnnotatedDatum records for AnnotatedData.

Annotations are VOC XML (``label_type="xml"``: size/width and size/height, then per <object> its
<name> mapped to a label by the LabelMap, <difficult>, and <bndbox> xmin ymin xmax ymax as
integers), COCO-style JSON (``"json"``: image.width/height, annotation[].category_id, bbox
x y w h, iscrowd as difficult) or text (``"txt"``: ``label xmin ymin xmax ymax`` per line, in
pixels). Boxes are stored normalized by the annotation's image size (the image's own size when
the file gives none), in groups per label in order of first appearance, each box numbered
within its group (instance_id). As in the fork: a missing annotation file gives a record with
no boxes; an object's ``difficult`` is the one read before its bndbox; the Datum label is -1;
keys are ``%08d_<image path>``.

``min_dim``/``max_dim`` (ReadImageToCVMat) take precedence over resize_height/resize_width:
an image whose shorter side is under min_dim is scaled up by min_dim / shorter side (float),
and if int(scale * longer side) then passes max_dim, the scale becomes max_dim / longer side;
a scale of 1 leaves it, any other goes through OpenCV's bilinear cv::resize by that factor
(cv2.resize with fx = fy = scale: size round(side * scale), and the sampling uses the factor,
not the rounded size's ratio). Boxes stay normalized by the original size, as in the fork (they
are relative, so the resize keeps them). An encoded record holds the file as it is only
when it is not resized (min_dim, max_dim, resize_height and resize_width 0) and matches
``encode_type`` by the fork's matchExt (``fork_match_ext``: "jpg" for .jpg and .jpeg files,
"png" for .png), whatever the file's colours; ``--encoded`` alone re-encodes every image in
its own format, as the fork's guessed encoding (".jpg", with the dot) never matches. An
image the factor would shrink to no row or column is skipped with a warning (OpenCV's resize
asserts in the fork).
"""

import json
import os
import warnings
import xml.etree.ElementTree as ET

import numpy as np

from minicnn.data.annotated import as_box, make_anno_datum
from minicnn.data.datum import decode_image, read_image
from minicnn.data.db import db_writer, remove_db, replace_db, root_joined
from minicnn.data.errors import DataError, need
from minicnn.data.imageset import _guess_encoding, _other_channels_message, native_differences

F = np.float32


def read_label_map(path):
    """{name: label} of a LabelMap prototxt (item { name label display_name }); names must be
    unique (the fork's MapNameToLabel with strict checking of names)."""
    from minicnn.proto import parse_text
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise DataError(f"cannot read the label map: {e.strerror or e}", path) from None
    label_map = parse_text(text, "LabelMap", path=path)
    out = {}
    for item in label_map.item:
        if item.name in out:
            raise DataError(f"the label map names {item.name!r} twice", path)
        out[item.name] = item.label
    return out


def _add_box(groups, label, box, difficult):
    """Append a box to its label's group (a new group at the end for a new label)."""
    for group_label, annos in groups:
        if group_label == label:
            annos.append((annos[-1][0] + 1 if annos else 0, box, difficult))
            return
    groups.append((label, [(0, box, difficult)]))


def _check_size(path, width, height, img_width, img_height):
    if height != img_height or width != img_width:
        warnings.warn(f"{path}: inconsistent image size (the annotation says {width} x "
                      f"{height}, the image is {img_width} x {img_height})", stacklevel=3)
    if width == 0 or height == 0:
        raise DataError("no valid image width/height", path)


def _check_box(path, x0, y0, x1, y1, width, height):
    """The fork's warnings on a box, in the annotation's pixels; the box is kept as it is."""
    box = f"({x0:g}, {y0:g}, {x1:g}, {y1:g})"
    if max(x0, x1) > width or max(y0, y1) > height or min(x0, y0, x1, y1) < 0:
        warnings.warn(f"{path}: bounding box {box} exceeds image boundary ({width} x {height})",
                      stacklevel=3)
    if x0 > x1 or y0 > y1:
        warnings.warn(f"{path}: bounding box {box} irregular (xmin > xmax or ymin > ymax)",
                      stacklevel=3)


def read_xml_annotation(path, img_height, img_width, name_to_label):
    """Groups (as minicnn.data.annotated.read_groups gives) of a VOC XML file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise DataError(f"cannot read the XML annotation: {e}", path) from None
    try:
        height = int(root.findtext("size/height"))
        width = int(root.findtext("size/width"))
    except (TypeError, ValueError):
        warnings.warn(f"{path}: no size/width and size/height: the image's size is used",
                      stacklevel=2)
        height, width = img_height, img_width
    _check_size(path, width, height, img_width, img_height)
    groups = []
    for obj in root:
        if obj.tag != "object":
            continue
        difficult, label, have = False, None, False
        for child in obj:
            if child.tag == "name":
                name = (child.text or "").strip()
                if name not in name_to_label:
                    raise DataError(f"unknown name {name!r} (not in the label map)", path)
                label, have = name_to_label[name], True
            elif child.tag == "difficult":
                difficult = (child.text or "").strip() == "1"
            elif child.tag == "bndbox":
                if not have:
                    raise DataError("an object's bndbox comes before its name", path)
                try:
                    x0, y0, x1, y1 = (int((child.findtext(k) or "0").strip())
                                      for k in ("xmin", "ymin", "xmax", "ymax"))
                except ValueError as e:
                    raise DataError(f"bndbox coordinates must be integers ({e})", path) from None
                _check_box(path, x0, y0, x1, y1, width, height)
                box = as_box(F(x0) / F(width), F(y0) / F(height), F(x1) / F(width),
                             F(y1) / F(height))
                _add_box(groups, label, box, difficult)
    return groups


def read_json_annotation(path, img_height, img_width, name_to_label):
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the JSON annotation: {e}", path) from None
    try:
        height, width = int(doc["image"]["height"]), int(doc["image"]["width"])
    except (KeyError, TypeError, ValueError):
        height, width = img_height, img_width
    _check_size(path, width, height, img_width, img_height)
    groups = []
    for obj in doc.get("annotation", []):
        name = str(obj["category_id"])
        if name not in name_to_label:
            raise DataError(f"unknown category_id {name!r} (not in the label map)", path)
        x, y, w, h = (F(v) for v in obj["bbox"])
        _check_box(path, x, y, x + w, y + h, width, height)
        box = as_box(x / F(width), y / F(height), (x + w) / F(width), (y + h) / F(height))
        _add_box(groups, name_to_label[name], box, bool(obj.get("iscrowd", 0)))
    return groups


def read_txt_annotation(path, height, width):
    groups = []
    try:
        with open(path, encoding="utf-8") as f:
            words = f.read().split()
    except OSError as e:
        raise DataError(f"cannot read the annotation: {e.strerror or e}", path) from None
    stop = None
    for k in range(0, len(words) - len(words) % 5, 5):      # the fork reads while it can
        try:
            label = int(words[k])
            x0, y0, x1, y1 = (F(v) for v in words[k + 1:k + 5])
        except ValueError:
            stop = k
            break
        _check_box(path, x0, y0, x1, y1, width, height)
        _add_box(groups, label, as_box(x0 / F(width), y0 / F(height), x1 / F(width),
                                       y1 / F(height)), False)
    if stop is None and len(words) % 5:
        stop = len(words) - len(words) % 5
    if stop is not None:                     # the fork's `infile >> label >> ...` stops quietly
        warnings.warn(f"{path}: reading stopped at {' '.join(words[stop:stop + 5])!r}, not "
                      f"'label xmin ymin xmax ymax' (an integer label, four numbers); "
                      f"{stop // 5} box(es) before it kept, the rest dropped (as the fork)",
                      stacklevel=2)
    return groups


def min_max_dim_scale(rows, cols, min_dim=0, max_dim=0):
    """The float32 factor ReadImageToCVMat scales an image of rows x cols by for min_dim and
    max_dim (1: left as it is)."""
    scale = F(1)
    short, long = min(rows, cols), max(rows, cols)
    if min_dim > 0 and short < min_dim:
        scale = F(min_dim) / F(short)
    if max_dim > 0 and int(F(scale * F(long))) > max_dim:
        scale = F(max_dim) / F(long)
    return scale


def fork_match_ext(path, encoding):
    """The fork's matchExt (its io.cpp): the path after its last dot (all of it without one)
    against the encoding, lower-cased; "jpg" matches "jpeg" too. convert_annoset's guessed
    encoding keeps the dot (".jpg"), so it never matches: without an encode_type the fork
    encodes every image again. (BVLC's matchExt keeps the dot on the extension instead.)"""
    ext, enc = path[path.rfind(".") + 1:].lower(), encoding.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def read_annoset_image(path, resize_height=0, resize_width=0, min_dim=0, max_dim=0,
                       is_color=True):
    """ReadImageToCVMat with the fork's min_dim/max_dim (which win over the fixed size)."""
    if min_dim <= 0 and max_dim <= 0:
        return read_image(path, resize_height, resize_width, is_color)
    chw = decode_image(path, is_color)
    scale = min_max_dim_scale(chw.shape[1], chw.shape[2], min_dim, max_dim)
    if scale == 1:
        return chw
    rows, cols = (int(np.rint(float(scale) * n)) for n in chw.shape[1:])
    if rows < 1 or cols < 1:                    # cv::resize asserts: the fork aborts there
        raise DataError(f"min_dim {min_dim} / max_dim {max_dim} scale this {chw.shape[1]} x "
                        f"{chw.shape[2]} image by {float(scale):g} to nothing", path)
    cv2 = need("cv2", "opencv-python")
    out = cv2.resize(np.ascontiguousarray(chw.transpose(1, 2, 0)), (0, 0), fx=float(scale),
                     fy=float(scale), interpolation=cv2.INTER_LINEAR)
    out = out.reshape(out.shape[0], out.shape[1], -1)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def annotated_record(image_path, anno_path, label_type="xml", name_to_label=None,
                     resize_height=0, resize_width=0, is_color=True, encoding="", min_dim=0,
                     max_dim=0, report=None):
    """An AnnotatedDatum of one image and its annotation file (ReadRichImageToAnnotatedDatum);
    ``report``: see image_anno_datum."""
    chw = read_annoset_image(image_path, resize_height, resize_width, min_dim, max_dim,
                             is_color)
    # GetImageSize: cv::imread's IMREAD_COLOR size (the EXIF orientation applied)
    native = decode_image(image_path, True)
    img_height, img_width = native.shape[1:]
    groups = []
    if not os.path.exists(anno_path):        # the fork stores the image without boxes, quietly
        warnings.warn(f"{anno_path}: annotation file not found: {image_path} is stored without "
                      "boxes (as the fork does)", stacklevel=3)
    else:
        if label_type == "xml":
            groups = read_xml_annotation(anno_path, img_height, img_width, name_to_label or {})
        elif label_type == "json":
            groups = read_json_annotation(anno_path, img_height, img_width, name_to_label or {})
        elif label_type == "txt":
            groups = read_txt_annotation(anno_path, img_height, img_width)
        else:
            raise DataError(f"unknown label_type {label_type!r} (xml, json or txt)")
    return image_anno_datum(image_path, chw, groups, -1, encoding,
                            (resize_height > 0 and resize_width > 0) or min_dim or max_dim,
                            report)


def image_anno_datum(image_path, chw, groups, label, encoding, resized, report=None):
    """The fork's ReadImageToDatum into an AnnotatedDatum: the file as it is (ReadFileToDatum)
    when it is encoded, not resized and ``fork_match_ext``, else ``chw``, encoded with
    ``encoding`` when one is given. For a file stored as it is, (path, native channels or 0,
    chw's channels, EXIF-turned) is appended to the list ``report`` (see
    imageset.native_differences)."""
    if encoding and not resized and fork_match_ext(image_path, encoding):
        anno = make_anno_datum(chw, groups, label, "")
        with open(image_path, "rb") as f:
            anno.datum.data = f.read()
        anno.datum.encoded = True
        if report is not None:
            report.append((image_path, *native_differences(anno.datum.data, chw),
                           chw.shape[0]))
        return anno
    return make_anno_datum(chw, groups, label, encoding)


def convert_annoset(root, list_file, db_path, anno_type="detection", label_type="xml",
                    label_map_file="", resize_height=0, resize_width=0, gray=False,
                    shuffle=False, encoded=False, encode_type="", check_size=False,
                    backend="lmdb", seed=None, overwrite=False, min_dim=0, max_dim=0):
    """SSD's convert_annoset: returns the number of records written. ``anno_type``
    "classification" stores ``image label`` lines as records without annotations. Negative
    min_dim/max_dim count as 0, as the fork's max(0, flag)."""
    from minicnn.rng import get_rng
    if anno_type not in ("detection", "classification"):
        raise DataError(f"unknown anno_type {anno_type!r} (detection or classification)")
    if (resize_height > 0) != (resize_width > 0):
        raise DataError("give both resize_height and resize_width, or neither")
    min_dim, max_dim = max(0, int(min_dim)), max(0, int(max_dim))
    name_to_label = {}
    if anno_type == "detection" and label_type in ("xml", "json"):
        if not label_map_file:
            raise DataError(f"label_type {label_type} needs a label_map_file (LabelMap "
                            "prototxt)")
        name_to_label = read_label_map(label_map_file)
    try:
        with open(list_file, encoding="utf-8") as f:
            words = f.read().split()
    except OSError as e:
        raise DataError(f"cannot read the list file: {e.strerror or e}", list_file) from None
    if len(words) % 2:
        raise DataError("the list file must hold pairs: image and annotation (or label)",
                        list_file)
    lines = list(zip(words[0::2], words[1::2]))
    if not lines:
        raise DataError("the list file names no images", list_file)
    if shuffle:
        rng = get_rng() if seed is None else np.random.default_rng(seed)
        lines = [lines[i] for i in rng.permutation(len(lines))]
    encoding = encode_type or ""
    db_path = os.fspath(db_path)
    if os.path.lexists(db_path) and not overwrite:
        raise DataError("already exists (remove it first)", db_path)
    tmp = f"{db_path}.tmp-{os.getpid()}"
    remove_db(tmp)
    count, size, stored = 0, None, []
    try:
        with db_writer(tmp, backend) as writer:
            for index, (name, second) in enumerate(lines):
                image_path = root_joined(root, name)
                # the fork's guess keeps the dot: ".png" (encoded again as "..png": png)
                enc = encoding or ("." + _guess_encoding(name) if encoded else "")
                try:
                    if anno_type == "detection":
                        anno = annotated_record(image_path, root_joined(root, second),
                                                label_type, name_to_label, resize_height,
                                                resize_width, not gray, enc, min_dim, max_dim,
                                                stored)
                    else:
                        image = read_annoset_image(image_path, resize_height, resize_width,
                                                   min_dim, max_dim, not gray)
                        resized = (resize_height > 0 and resize_width > 0) or min_dim or max_dim
                        anno = image_anno_datum(image_path, image, [], int(second), enc, resized,
                                                stored)
                        anno.ClearField("type")
                except DataError as e:
                    if e.path and e.path != image_path:     # a bad annotation file: stop
                        raise
                    warnings.warn(f"{list_file}: skipping {image_path}: {e.reason}",
                                  stacklevel=2)
                    continue
                except ValueError:
                    hint = ""
                    if os.path.splitext(second)[1].lower() in (".xml", ".json", ".txt"):
                        hint = (": anno_type classification reads `image label` lines; for "
                                "annotation files give anno_type detection (convert-annoset "
                                "--anno-type detection)")
                    raise DataError(f"label {second!r} of {name} is not an integer{hint}",
                                    list_file) from None
                if check_size and not anno.datum.encoded:
                    shape = (anno.datum.channels, anno.datum.height, anno.datum.width)
                    if size is None:
                        size = shape
                    elif shape != size:
                        raise DataError(f"image {image_path} is {shape}, the first one {size} "
                                        "(check_size)", list_file)
                writer.put(f"{index:08d}_{name}", anno.SerializeToString())
                count += 1
        if count == 0:                 # the fork writes an empty database and exits 0
            raise DataError(f"none of the {len(lines)} images could be read (see the warnings "
                            f"above; root folder {root!r}), so no database was written",
                            list_file)
        replace_db(tmp, db_path)
    except BaseException:
        remove_db(tmp)
        raise
    _warn_stored_files(stored, anno_type == "detection")
    return count


def _warn_stored_files(stored, boxes):
    """Warnings for the files stored as they are (``image_anno_datum``'s report) that
    AnnotatedData, decoding natively as the fork, reads otherwise than convert_annoset did:
    other channels (gray, alpha), or unrotated where imread applied an EXIF orientation."""
    other = [(path, channels, asked) for path, channels, _, asked in stored if channels]
    if other:
        warnings.warn(_other_channels_message(
            other, "convert_annoset", "--encoded without --encode-type encodes every image "
            "again instead"), stacklevel=3)
    turned = [path for path, _, turn, _ in stored if turn]
    if turned:
        more = f" (and {len(turned) - 1} more files)" if len(turned) > 1 else ""
        what = ("its boxes, where its annotation describes the upright image (as the fork's "
                "GetImageSize, cv::imread, does: one of the stored orientation gets an "
                "'inconsistent image size' warning), do not fall on its pixels" if boxes
                else "its pixels are not upright")
        warnings.warn(f"{turned[0]}{more} has an EXIF orientation and is stored unchanged: its "
                      "record decodes unrotated (AnnotatedData decodes an encoded record "
                      f"natively, as the fork: IMREAD_UNCHANGED ignores the orientation), so "
                      f"{what}; transform_param force_color (or force_gray) applies the "
                      "orientation, as does --encoded without --encode-type (every image "
                      "encoded again, upright)", stacklevel=3)
