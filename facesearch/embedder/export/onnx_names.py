"""Deterministic names in a converted ONNX graph, so one checkpoint always exports to the same bytes.

tf2onnx suffixes the names it invents with a process-wide counter (`Conv__21`, `const_fold_opt__37`),
so the same model converted twice, or in another process, gives different files and different
sha256 digests, and an index would refuse queries from a re-export of the very same weights.
"""

from __future__ import annotations

import re

import onnx

_COUNTER = re.compile(r"__\d+")


def canonical_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace tf2onnx's counter suffixes by suffixes numbered in graph order (in place).

    Graph input and output names are kept. Tensors are renamed in the order the nodes read and
    write them (tf2onnx's initializer order follows its counters, so it cannot be trusted), and
    initializers are then sorted by name. The graph's computation is unchanged.

    Returns:
        `model`, for chaining.
    """
    graph = model.graph
    kept = {v.name for v in (*graph.input, *graph.output)}
    tensors = _renamer(kept)
    for node in graph.node:
        # An empty name marks an omitted optional input.
        node.input[:] = [tensors(i) if i else i for i in node.input]
        node.output[:] = [tensors(o) if o else o for o in node.output]
    for init in graph.initializer:
        init.name = tensors(init.name)
    inits = sorted(graph.initializer, key=lambda t: t.name)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    for vi in graph.value_info:
        vi.name = tensors(vi.name)
    nodes = _renamer(set())
    for node in graph.node:
        node.name = nodes(node.name)
    return model


def _renamer(kept: set[str]):
    """A memoised name -> new name function: counters stripped, then made unique in call order."""
    mapping = {name: name for name in kept}
    taken = set(kept)

    def rename(name: str) -> str:
        if name not in mapping:
            base = _COUNTER.sub("", name) or "t"
            new, k = base, 0
            while new in taken:
                k += 1
                new = f"{base}__{k}"
            mapping[name] = new
            taken.add(new)
        return mapping[name]

    return rename
