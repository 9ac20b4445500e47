"""OneHotEncoder and LabelEncoder as plain ai.onnx: each cell compared with the category list (Equal, or
TfIdfVectorizer's unigram counts for strings, which Equal takes only from opset 19), following onnxruntime."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnxfuse.lower.base import Builder, Context, Lowered, attributes, refuse
from onnxfuse.lower.linear import typed

STRING, INT64, FLOAT = TensorProto.STRING, TensorProto.INT64, TensorProto.FLOAT
DTYPES = {STRING: object, INT64: np.int64, FLOAT: np.float32, TensorProto.DOUBLE: np.float64}


def matches(b: Builder, value: str, keys: np.ndarray) -> str:
    """A bool tensor of the value's shape plus one last axis: cell == keys[k]."""
    if keys.dtype != object:
        grown = b.op("Unsqueeze", [value, b.const(np.array([-1], dtype=np.int64), "axes")])
        equal = b.op("Equal", [grown, b.const(keys, "keys")])
        if keys.dtype.kind != "f" or not np.isnan(keys).any():
            return equal
        both_nan = b.op("And", [b.op("IsNaN", [grown]), b.const(np.isnan(keys), "nan_keys")])
        return b.op("Or", [equal, both_nan])
    column = b.op("Reshape", [value, b.const(np.array([-1, 1], dtype=np.int64), "shape")])
    counts = b.op("TfIdfVectorizer", [column], mode="TF", min_gram_length=1, max_gram_length=1, max_skip_count=0,
                  ngram_counts=[0], ngram_indexes=list(range(len(keys))), pool_strings=list(keys))  # fmt: skip
    shape = b.op("Concat", [b.op("Shape", [value]), b.const(np.array([len(keys)], dtype=np.int64), "count")], axis=0)
    return b.greater(b.op("Reshape", [counts, shape]), b.const(np.float32(0)))


def one_hot_encoder(node: onnx.NodeProto, context: Context) -> Lowered:
    """One float column per category, 1 where the cell (numbers truncated to int64) is that category. With
    zeros=0 onnxruntime fails on an unknown category; the rewrite gives its row of zeros."""
    b, attrs = Builder(context, node), attributes(node)
    ints, strings = attrs.get("cats_int64s") or [], attrs.get("cats_strings") or []
    kind = context.elem_type(node.input[0])
    if bool(ints) == bool(strings) or kind is None or (kind == STRING) != bool(strings):
        raise refuse(context, node, "categories that are not exactly one list matching the input's type")
    categories = np.asarray(strings or ints, dtype=object if strings else np.int64)
    if len(set(categories.tolist())) != len(categories):
        raise refuse(context, node, "repeated categories")
    cells = node.input[0] if kind in (STRING, INT64) else b.op("Cast", [node.input[0]], to=INT64)
    b.op("Cast", [matches(b, cells, categories)], outputs=[node.output[0]], to=FLOAT)
    return b.result()


def label_encoder(node: onnx.NodeProto, context: Context) -> Lowered:
    """Each cell's value for the first equal key, else the default (ml opset 1's classes_strings: a string's
    index, an index's string)."""
    b = Builder(context, node)
    keys, values, default = _mapping(node, context)
    kind = context.elem_type(node.input[0])
    if kind is None or keys.dtype != DTYPES.get(kind):
        raise refuse(context, node, f"keys of type {keys.dtype} for an input of type {kind}")
    keys, values = _first_of_each_key(keys, values)
    if not keys.size:
        raise refuse(context, node, "no keys")
    found = b.op("Cast", [matches(b, node.input[0], keys)], to=FLOAT)
    hit = b.greater(b.reduce("ReduceMax", found, [-1], keepdims=0), b.const(np.float32(0)))
    first = b.op("ArgMax", [found], axis=-1, keepdims=0)
    index = b.op("Where", [hit, first, b.const(np.int64(len(keys)), "default_index")])
    table = b.const(np.append(values, np.asarray([default], dtype=values.dtype)).astype(values.dtype), "values")
    b.op("Gather", [table, index], outputs=[node.output[0]])
    return b.result()


def _first_of_each_key(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's map keeps the first value of a repeated key (NaN keys count as one key)."""
    seen: set = set()
    keep = []
    for key in keys.tolist():
        token = None if isinstance(key, float) and np.isnan(key) else key
        keep.append(token not in seen)
        seen.add(token)
    return keys[np.asarray(keep, dtype=bool)], values[np.asarray(keep, dtype=bool)]


def _mapping(node: onnx.NodeProto, context: Context) -> tuple[np.ndarray, np.ndarray, Any]:
    """(keys, values, default) of either LabelEncoder form, with the spec's defaults."""
    attrs = attributes(node)
    if "classes_strings" in attrs:  # ml opset 1: one list, read either way
        classes = np.asarray(attrs["classes_strings"], dtype=object)
        indices = np.arange(len(classes), dtype=np.int64)
        if context.elem_type(node.input[0]) == STRING:  # the last index of a repeated string wins
            return classes[::-1], indices[::-1], attrs.get("default_int64", -1)
        return indices, classes, attrs.get("default_string", "_Unused")
    keys, values = _typed(attrs, "keys"), _typed(attrs, "values")
    if keys is None or values is None or len(keys) != len(values):
        raise refuse(context, node, "keys and values that are not two lists of one length")
    if "keys_floats" in attrs and np.isnan(keys).any():
        raise refuse(context, node, "a NaN key in keys_floats (ml opset 4 matches NaN cells to it, 2 and 3 do "
                                    "not, and the rule does not see the ml opset)")  # fmt: skip
    if "default_tensor" in attrs:
        return keys, values, numpy_helper.to_array(attrs["default_tensor"]).ravel()[0]
    fallback = {object: ("default_string", "_Unused"), np.int64: ("default_int64", -1)}
    name, value = fallback.get(values.dtype.type if values.dtype != object else object, ("default_float", -0.0))
    return keys, values, attrs.get(name, value)


def _typed(attrs: dict, prefix: str) -> np.ndarray | None:
    if f"{prefix}_tensor" in attrs:
        return numpy_helper.to_array(attrs[f"{prefix}_tensor"]).ravel()
    for suffix, dtype in (("strings", object), ("int64s", np.int64), ("floats", np.float32)):
        if f"{prefix}_{suffix}" in attrs:
            return np.asarray(attrs[f"{prefix}_{suffix}"], dtype=dtype)
    return None


RULES = {"OneHotEncoder": typed(one_hot_encoder), "LabelEncoder": typed(label_encoder)}
