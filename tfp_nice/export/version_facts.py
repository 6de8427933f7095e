"""Version facts of an export: the TensorFlow that wrote it, its ops, the oldest server.

A SavedModel loads only in a TensorFlow (Serving) that registers every op of its graph,
with every attribute its nodes set: an older server fails with ``Op type not registered``
(serving #411/#1155) or ``NodeDef mentions attribute ... which is not in the op definition``
(tfjs #8260, a TF 2.16 export in TF 2.9). :func:`collect` lists the ops of the graph *and*
of its function library (TF2 exports keep the signature bodies and the saver there) and the
non-default attributes set on them, and looks each up in :data:`OP_SINCE`. TF Serving
``X.Y`` is built on TensorFlow ``X.Y``, so the newest release found is the oldest TF
Serving release that can load the export.

How :data:`OP_SINCE` was checked (TensorFlow 2.0 is the floor: every op or attribute at
``"2.0"`` is in TF 2.0's ``tf.raw_ops``, most since 1.x): the versioned ``tf.raw_ops`` API
reference (``tensorflow.org/versions/r2.N/api_docs/python/tf/raw_ops/OP``), which documents
each op's signature as of that release:

* ``VarHandleOp`` gained ``debug_name`` after 2.13 (absent from the r2.13 page, present in
  r2.15; r2.14 unconfirmed, so 2.15);
* ``DisableCopyOnRead`` (used by TF's saver functions) is on the r2.11 pages and is not
  registered in TF 2.9 (tfjs #8260);
* ``StatelessRandomGetKeyCounter`` / ``StatelessRandomUniformV2`` / ``StatelessRandomNormalV2``
  (``tf.random.stateless_*``, EasyRec #373) are on the r2.5 pages.
* ``Cumsum``, ``LogicalOr``, ``OneHot``, ``Pow``, ``Softmax`` (TF 1.x core ops) and
  ``UpperBound`` (``tf.searchsorted``, added in TF 1.13; on the r2.4 pages) come with spline
  couplings and class labels; they predate 2.0, so they are listed at the 2.0 floor.
* ``MatrixBandPart``, ``MatrixTriangularSolve`` and ``Squeeze`` (TF 1.x core ops) come with
  Glow's LU-factored 1x1 convolution, at the 2.0 floor; ``MatrixDiagV3`` (``tf.linalg.diag``
  with ``align``) is on the r2.2 C++ API pages (``tensorflow::ops::MatrixDiagV3``), so 2.2.

Releases are the first *confirmed*, so the oldest release reported errs late, never early.
An op or attribute not in the table is reported in ``unknown_ops`` (the tests require none
for the models the package builds: add new ops here with their source).

Example:
  >>> oldest_release(["MatMul", "StatelessRandomUniformV2"])["release"]
  '2.5'
"""

from __future__ import annotations

import os

import tensorflow as tf

__all__ = ["OP_SINCE", "collect", "graph_ops", "oldest_release"]

_TF_2_0 = """Abs AddN AddV2 All Assert AssignVariableOp BiasAdd BiasAddGrad BitwiseAnd
BitwiseXor BroadcastArgs BroadcastGradientArgs BroadcastTo Cast ConcatV2 Const Conv2D
EnsureShape Equal Exp Fill Floor FloorDiv GatherV2 Greater GreaterEqual Identity IdentityN If
InvertPermutation IsFinite Less LessEqual Log Log1p LogicalAnd MatMul Max Maximum
MergeV2Checkpoints Min Minimum Mul Neg NextAfter NoOp Pack PadV2 Placeholder Prod Range
ReadVariableOp RealDiv Relu ReluGrad Reshape RestoreV2 RightShift Round SaveV2 Select SelectV2
Shape ShardedFilename Sigmoid Size Slice Softplus Split SplitV Sqrt Square SquaredDifference
StatefulPartitionedCall StatelessWhile StaticRegexFullMatch StridedSlice StringJoin Sub Sum Tanh
TensorListFromTensor TensorListGetItem TensorListReserve TensorListSetItem TensorListStack Tile
Transpose VarHandleOp ZerosLike Cumsum LogicalOr OneHot Pow Softmax UpperBound MatrixBandPart
MatrixTriangularSolve Squeeze"""

#: The first TensorFlow release (>= 2.0) registering each op (``"Op"``) or a later
#: attribute of an op (``"Op.attr"``) that tfp_nice exports use (module docstring).
OP_SINCE: dict[str, str] = {
    **{op: "2.0" for op in _TF_2_0.split()},
    "MatrixDiagV3": "2.2",
    "StatelessRandomGetKeyCounter": "2.5",
    "StatelessRandomUniformV2": "2.5",
    "StatelessRandomNormalV2": "2.5",
    "DisableCopyOnRead": "2.11",
    "VarHandleOp.debug_name": "2.15",
}


def graph_ops(saved_model_dir: str) -> list[str]:
    """The sorted op names of ``saved_model.pb`` (graph and function-library nodes), plus
    ``"Op.attr"`` for each attribute :data:`OP_SINCE` lists that a node sets."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops: set[str] = set()
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        for node in [*graph.node, *(n for f in graph.library.function for n in f.node_def)]:
            ops.add(node.op)
            ops.update(f"{node.op}.{a}" for a in node.attr if f"{node.op}.{a}" in OP_SINCE)
    return sorted(ops)


def _key(release: str) -> tuple[int, ...]:
    return tuple(int(p) for p in release.split("."))


def oldest_release(ops) -> dict:
    """The oldest TensorFlow (Serving) release that registers every op in ``ops``.

    Returns ``{"release": "X.Y" or None, "newest_ops": [...], "unknown_ops": [...]}``;
    ``release`` is ``None`` when an op is not in :data:`OP_SINCE`.
    """
    ops = sorted(set(ops))
    unknown = [op for op in ops if op not in OP_SINCE]
    known = [op for op in ops if op in OP_SINCE]
    if unknown or not known:
        return {"release": None, "newest_ops": [], "unknown_ops": unknown}
    newest = max((OP_SINCE[op] for op in known), key=_key)
    return {"release": newest, "newest_ops": [op for op in known if OP_SINCE[op] == newest],
            "unknown_ops": []}


def collect(saved_model_dir: str) -> dict:
    """The version facts of the SavedModel in ``saved_model_dir`` (for the metadata JSON)."""
    ops = graph_ops(saved_model_dir)
    oldest = oldest_release(ops)
    return {
        "written_by_tensorflow": tf.__version__,
        "ops": ops,
        "oldest_tensorflow_serving": oldest["release"],
        "limited_by_ops": oldest["newest_ops"],
        "unknown_ops": oldest["unknown_ops"],
        "op_history": "tfp_nice.export.version_facts.OP_SINCE: the first TensorFlow release "
                      "(>= 2.0) whose versioned tf.raw_ops reference documents each op and "
                      "attribute",
        "reproducibility": "samples are reproducible for a given seed within one TensorFlow "
                           "version (TF's stateless random ops may change across versions)",
    }
