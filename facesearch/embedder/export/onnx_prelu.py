"""Rewrite tf2onnx's five-op spelling of Keras PReLU into a form a runtime runs faster.

tf2onnx converts each Keras `PReLU` into

    pos = Relu(x);  neg = Relu(Neg(x));  y = Add(pos, Mul(neg, c))      with c = -alpha

(Keras computes `relu(x) - alpha * relu(-x)`; tf2onnx folds the minus into the constant).
Two rewrites (`rewrite_prelu`), both computing the same function:

- "prelu": one `PRelu(x, slope=-c)` node (for x < 0, `-alpha * -x = alpha * x`); the graph reads
  as the model was written.
- "batchnorm": `y = x + (1 - alpha) * relu(-x)` (as `relu(x) = x + relu(-x)`), with the negation
  and the per-channel scale written as BatchNormalization nodes (mean 0, variance 1, epsilon 0:
  exactly `scale * x`). ONNX Runtime's CPU layout pass (NCHWc, at the default optimisation level
  on x86 CPUs with AVX2 or AVX-512) runs convolutions in a channel-blocked layout and keeps a tensor in it only
  through ops it knows: Conv, BatchNormalization (as a 1x1 depthwise conv), Relu, Add of two
  blocked tensors. Neg, a Mul by a constant and PRelu are not among them, so with tf2onnx's form
  or one PRelu node every PReLU converts its feature map out of the blocked layout and back
  (ReorderOutput / ReorderInput), on top of its own passes over the map. In this form
  the whole backbone stays blocked: the negation + Relu become one conv with a fused activation,
  and the scale + Add one conv that accumulates into x. On the exported MobileFaceNet
  (benchmarks/export_throughput.py --profile, 2-core AMD EPYC, ONNX Runtime 1.32, batch 32, one
  thread) a batch took 180 ms with tf2onnx's form, 106 of them in PReLUs (60) and the reorders
  around them (45); 152 ms with PRelu nodes (51 + 29); 92 ms in this form, all of it in
  convolutions: 1.8-1.9x the images per second of tf2onnx's form at batch 16 and 32, 1 and 2
  threads. OpenVINO recognises tf2onnx's five ops as one PReLU (its PReluFusion pass) and runs
  them as fast as a PRelu node; it has no such shortcut for this form, which runs at 0.74-0.89x there.

Only PReLUs whose slope varies along the channel axis alone (Keras `shared_axes=[1, 2]`, as in
MobileFaceNet, or a PReLU on a 2-d tensor) can take the "batchnorm" form; others stay as they were.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

PRELU_FORMS = ("batchnorm", "prelu", "tf2onnx")  # "tf2onnx": the five ops as converted


@dataclass(frozen=True)
class _Match:
    x: str                  # the PReLU input tensor
    y: str                  # the PReLU output tensor (the Add's output)
    slope: np.ndarray       # alpha, shaped to broadcast onto x as the graph lays it out
    nodes: tuple            # the nodes to remove: Relu, Neg, Relu, [Transpose], Mul, [Transpose], Add
    name: str


def fuse_prelu(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Replace every Relu/Neg/Relu/Mul/Add PReLU pattern by one `PRelu` node (`rewrite_prelu` "prelu")."""
    return rewrite_prelu(model, "prelu")


def rewrite_prelu(model: onnx.ModelProto, form: str) -> tuple[onnx.ModelProto, int]:
    """Rewrite every Relu/Neg/Relu/Mul/Add PReLU pattern into `form` (see the module docstring).

    Only patterns whose intermediate tensors feed nothing else, and whose slope is a constant
    that broadcasts onto the input (for "batchnorm": varies along axis 1 alone), are rewritten;
    anything else is left as it was. Initializers and `Neg` nodes that fed only the removed
    nodes are dropped.

    Args:
        model: an ONNX model (not modified).
        form: one of `PRELU_FORMS`; "tf2onnx" returns `model` itself.

    Returns:
        (the rewritten model, checked with `onnx.checker`, or `model` itself when nothing matched;
        the number of PReLUs rewritten).
    """
    if form not in PRELU_FORMS:
        raise ValueError(f"unknown PReLU form {form!r}: expected one of {list(PRELU_FORMS)}")
    if form == "tf2onnx":
        return model, 0
    shapes = _shapes(model)
    source, model = model, onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consumers = _consumers(graph)
    producers = {out: node for node in graph.node for out in node.output}
    constants = {init.name: init for init in graph.initializer}
    protected = {o.name for o in graph.output}

    replacements = []  # (match, its nodes, its initializers)
    for add in graph.node:
        if add.op_type == "Add":
            match = _match(add, producers, consumers, constants, shapes, protected)
            built = None if match is None else _BUILDERS[form](match, shapes.get(match.x))
            if built is not None:
                replacements.append((match, *built))
    if not replacements:
        return source, 0

    # Nodes are keyed by their first output (unique in a valid graph): protobuf message
    # wrappers are not guaranteed to keep their identity between iterations.
    match_of = {_key(node): i for i, (m, _, _) in enumerate(replacements) for node in m.nodes}
    emitted = set()
    new_nodes = []
    present = {init.name for init in graph.initializer}
    for node in graph.node:
        # The new nodes take the place of the pattern's first node in graph order: x is produced
        # before it and y is read only after the Add, so the order stays topological.
        i = match_of.get(_key(node))
        if i is not None and i not in emitted:
            emitted.add(i)
            _, nodes, initializers = replacements[i]
            for init in initializers:
                if init.name not in present:  # constants shared between PReLUs of one width
                    graph.initializer.append(init)
                    present.add(init.name)
            new_nodes.extend(nodes)
        if i is None:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _prune(graph)
    onnx.checker.check_model(model)
    return model, len(replacements)


def _as_prelu(m: _Match, x_shape) -> tuple[list, list]:
    slope_name = f"{m.name}/slope"
    return ([onnx.helper.make_node("PRelu", [m.x, slope_name], [m.y], name=m.name)],
            [numpy_helper.from_array(m.slope, slope_name)])


def _as_batchnorm(m: _Match, x_shape) -> tuple[list, list] | None:
    """y = x + (1 - alpha) * relu(-x), the two scales as BatchNormalization; None unless per-channel."""
    alpha = _per_channel(m.slope, x_shape)
    if alpha is None:
        return None
    n, c = m.name, alpha.size
    ones, zeros, minus_ones = (f"PReLU/{what}_{c}" for what in ("ones", "zeros", "minus_ones"))
    scale = f"{n}/one_minus_slope"
    initializers = [numpy_helper.from_array(np.full(c, v, alpha.dtype), name)
                    for name, v in ((ones, 1), (zeros, 0), (minus_ones, -1))]
    initializers.append(numpy_helper.from_array((1 - alpha).astype(alpha.dtype), scale))

    def scaled(x: str, by: str, y: str, name: str):
        # mean 0, variance 1, epsilon 0: exactly `by * x`, per channel.
        return onnx.helper.make_node("BatchNormalization", [x, by, zeros, zeros, ones], [y], name=name, epsilon=0.0)

    nodes = [
        scaled(m.x, minus_ones, f"{n}/neg", f"{n}/neg"),
        onnx.helper.make_node("Relu", [f"{n}/neg"], [f"{n}/relu_neg"], name=f"{n}/relu_neg"),
        scaled(f"{n}/relu_neg", scale, f"{n}/scaled", f"{n}/scale"),
        onnx.helper.make_node("Add", [m.x, f"{n}/scaled"], [m.y], name=n),
    ]
    return nodes, initializers


_BUILDERS = {"prelu": _as_prelu, "batchnorm": _as_batchnorm}


def _per_channel(slope: np.ndarray, x_shape: tuple | None) -> np.ndarray | None:
    """(C,) slope when `slope` varies along axis 1 of x alone (NCHW channels) and C is known, else None."""
    if x_shape is None or len(x_shape) < 2 or x_shape[1] is None or slope.ndim > len(x_shape):
        return None
    full = slope.reshape((1,) * (len(x_shape) - slope.ndim) + slope.shape)
    if any(d != 1 for axis, d in enumerate(full.shape) if axis != 1):
        return None
    return np.ascontiguousarray(np.broadcast_to(full.reshape(-1), (x_shape[1],)))


def _match(add, producers, consumers, constants, shapes, protected) -> _Match | None:
    """The PReLU pattern ending at `add`, or None."""
    branches = [producers.get(name) for name in add.input]
    if len(branches) != 2 or any(b is None for b in branches):
        return None
    for relu_pos, scaled in (branches, branches[::-1]):
        if relu_pos.op_type != "Relu":
            continue
        # When tf2onnx cannot move a per-position slope (PReLU without shared_axes) to NCHW it
        # multiplies in NHWC: Transpose(perm) -> Mul -> Transpose(inverse perm).
        t_out, mul = _skip_transpose(scaled, producers)
        if mul is None or mul.op_type != "Mul":
            continue
        for relu_neg_out, const_name in (mul.input, mul.input[::-1]):
            t_in, relu_neg = _skip_transpose(producers.get(relu_neg_out), producers)
            if relu_neg is None or relu_neg.op_type != "Relu" or (t_in is None) != (t_out is None):
                continue
            if t_in is not None and _perm(t_out) != list(np.argsort(_perm(t_in))):
                continue
            neg = producers.get(relu_neg.input[0])
            x = relu_pos.input[0]
            if neg is None or neg.op_type != "Neg" or neg.input[0] != x:
                continue
            c = _constant(const_name, producers, constants)
            if c is None:
                continue
            if t_in is not None:
                perm = _perm(t_out)
                c = np.transpose(c.reshape((1,) * (len(perm) - c.ndim) + c.shape), perm)
            slope = _broadcastable(-c, shapes.get(x))
            if slope is None:
                continue
            nodes = tuple(n for n in (relu_pos, neg, relu_neg, t_in, mul, t_out, add) if n is not None)
            if any(_outside_uses(n, consumers, protected, allowed=nodes) for n in nodes[:-1]):
                continue
            return _Match(x=x, y=add.output[0], slope=slope, nodes=nodes, name=_prelu_name(add))
    return None


def _skip_transpose(node, producers):
    """(node, its input's producer) if `node` is a Transpose, else (None, node)."""
    if node is not None and node.op_type == "Transpose" and _perm(node) is not None:
        return node, producers.get(node.input[0])
    return None, node


def _perm(node) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None


def _constant(name, producers, constants) -> np.ndarray | None:
    """The value of `name` if it is an initializer, a Constant node, or `Neg` of either (unfolded graphs)."""
    if name in constants:
        return numpy_helper.to_array(constants[name])
    node = producers.get(name)
    if node is None:
        return None
    if node.op_type == "Constant":
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
        return None
    if node.op_type == "Neg":
        inner = _constant(node.input[0], producers, constants)
        return None if inner is None else -inner
    return None


def _broadcastable(slope: np.ndarray, x_shape: tuple | None) -> np.ndarray | None:
    """`slope` reshaped so ONNX PRelu's one-way broadcast onto x reproduces Mul's two-way one.

    `x_shape` holds ints for static dims and None for dynamic ones; None when unknown.
    Returns None when the slope would broadcast x up (PRelu cannot express that).
    """
    if x_shape is None:
        # Without x's shape only a scalar is certainly safe.
        return slope if slope.size == 1 and slope.ndim == 0 else None
    while slope.ndim > len(x_shape) and slope.shape[0] == 1:
        slope = slope.reshape(slope.shape[1:])
    if slope.ndim > len(x_shape):
        return None
    for s, d in zip(slope.shape[::-1], x_shape[::-1]):
        if s != 1 and d is not None and s != d:
            return None
    return slope


def _outside_uses(node, consumers, protected, allowed) -> bool:
    """Whether any output of `node` is a graph output or feeds a node outside the pattern."""
    allowed_keys = {_key(n) for n in allowed}
    for out in node.output:
        if out in protected:
            return True
        if any(_key(c) not in allowed_keys for c in consumers.get(out, ())):
            return True
    return False


def _key(node) -> str:
    return node.output[0]


def _prelu_name(add) -> str:
    # tf2onnx names the Add after the Keras layer, e.g. "model/p_re_lu_3/add".
    return (add.name.rsplit("/", 1)[0] or add.name) + "/PRelu"


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Shape of every tensor that shape inference can tell; None for a dynamic dim."""
    g = onnx.shape_inference.infer_shapes(model).graph
    shapes = {}
    for vi in (*g.input, *g.value_info, *g.output):
        if vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                    for d in vi.type.tensor_type.shape.dim)
    return shapes


def _prune(graph) -> None:
    """Drop nodes whose outputs nobody reads, then initializers and value_info nobody names."""
    while True:
        used = Counter(name for node in graph.node for name in node.input)
        used.update(o.name for o in graph.output)
        keep = [n for n in graph.node if any(used[o] for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep_init = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)
    produced = {o for node in graph.node for o in node.output} | {i.name for i in graph.input}
    keep_vi = [vi for vi in graph.value_info if vi.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(keep_vi)
