"""The dataflow graph of a cascade: Einsum and tensor nodes in a networkx DiGraph.

networkx holds only the topology; payloads are the immutable IR nodes
(`G.nodes[n]["op"]` for an Einsum, `G.nodes[n]["tensor"]` for a tensor's `TensorInfo`).
Edges run tensor -> Einsum (a read; `iterates` lists the iterates read: "prev", "next",
"final", "initial", empty for a tensor that is not iterative) and Einsum -> tensor (a write, with "init", "recur" or "plain").
A recurrence reads its own tensor's previous iterate, so the graph has cycles only
through edges that read a previous iterate; `dependency_graph()` makes those depend on
the initialization instead, and is a DAG.
"""
from __future__ import annotations

import json

import networkx as nx

from . import nodes as N
from .printer import print_einsum
from .program import Program


def einsum_node(i: int) -> str:
    return f"einsum:{i}"


def tensor_node(name: str) -> str:
    return f"tensor:{name}"


class DataflowGraph:
    """A thin view over the networkx graph with the queries stages need."""

    def __init__(self, program: Program, graph: nx.DiGraph):
        self.program = program
        self.nx = graph

    def producers(self, tensor: str) -> list[int]:
        return [self.nx.nodes[n]["index"] for n in self.nx.predecessors(tensor_node(tensor))]

    def consumers(self, tensor: str) -> list[int]:
        return sorted(self.nx.nodes[n]["index"] for n in self.nx.successors(tensor_node(tensor)))

    def dependency_graph(self) -> nx.DiGraph:
        """A DAG: reads of only a previous iterate depend on the initialization instead."""
        g = self.nx.copy()
        for u, v, d in self.nx.edges(data=True):
            if d.get("iterates") == ("prev",):
                g.remove_edge(u, v)
                name = u.partition(":")[2]
                for j in self.program.tensors[name].defined_by:
                    if self.program.einsums[j].kind == "init":
                        g.add_edge(einsum_node(j), v)
        return g

    def topo_einsums(self) -> list[int]:
        order = nx.lexicographical_topological_sort(self.dependency_graph(), key=_sort_key)
        return [self.nx.nodes[n]["index"] for n in order if n.startswith("einsum:")]

    def to_json(self) -> str:
        nodes = []
        for n, d in sorted(self.nx.nodes(data=True), key=lambda x: _sort_key(x[0])):
            if n.startswith("einsum:"):
                e: N.Einsum = d["op"]
                nodes.append({"id": n, "kind": "einsum", "tensor": e.tensor, "text": d["label"],
                              "space": list(e.space),
                              "reduce": [[r.op, list(r.vars)] for r in e.reduced],
                              "line": e.span.line if e.span else None})
            else:
                t = d["tensor"]
                nodes.append({"id": n, "kind": "tensor", "name": t.name, "role": t.kind,
                              "axes": list(t.axes), "iterative_axis": t.iter_axis})
        edges = [{"from": u, "to": v, **({"iterates": list(d["iterates"])} if d.get("iterates")
                                          else {})}
                 for u, v, d in sorted(self.nx.edges(data=True), key=lambda x: (x[0], x[1]))]
        return json.dumps({"schema": 1, "nodes": nodes, "edges": edges}, indent=2)

    def to_dot(self) -> str:
        out = ["digraph cascade {", "  rankdir=TB;", '  node [fontname="monospace"];']
        for n, d in sorted(self.nx.nodes(data=True), key=lambda x: _sort_key(x[0])):
            if n.startswith("einsum:"):
                out.append(f'  "{n}" [shape=box, label={json.dumps(d["label"])}];')
            else:
                t = d["tensor"]
                style = {"input": "filled", "output": "bold"}.get(t.kind, "solid")
                label = t.name + (f"[{', '.join(t.axes)}]" if t.axes else "")
                out.append(f'  "{n}" [shape=ellipse, style={style}, label={json.dumps(label)}];')
        for u, v, d in sorted(self.nx.edges(data=True), key=lambda x: (x[0], x[1])):
            its = d.get("iterates") or ()
            attr = (f' [label="{",".join(its)}"' + (", style=dashed" if its == ("prev",) else "")
                    + "]") if its else ""
            out.append(f'  "{u}" -> "{v}"{attr};')
        out.append("}")
        return "\n".join(out) + "\n"


def _sort_key(n: str):
    kind, _, rest = n.partition(":")
    return (kind, int(rest) if rest.isdigit() else 0, rest)


def build_graph(program: Program) -> DataflowGraph:
    g = nx.DiGraph()
    for name, info in program.tensors.items():
        g.add_node(tensor_node(name), tensor=info)
    for i, e in enumerate(program.einsums):
        en = einsum_node(i)
        g.add_node(en, op=e, index=i, label=print_einsum(e))
        g.add_edge(en, tensor_node(e.tensor), kind=e.kind)
        for x in (e.rhs, e.filter):
            if x is None:
                continue
            for a in N.walk(x):
                if isinstance(a, N.Access):
                    info = program.tensors[a.tensor]
                    it = None
                    if info.iter_axis is not None:
                        it = N.iterate_read(a.indices[info.iter_axis])
                    tn = tensor_node(a.tensor)
                    its = set(g.edges[tn, en]["iterates"]) if g.has_edge(tn, en) else set()
                    if it:
                        its.add(it)
                    g.add_edge(tn, en, iterates=tuple(sorted(its)))
    return DataflowGraph(program, g)
