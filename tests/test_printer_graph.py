"""The printer round-trips every example; the dataflow graph has the expected shape."""
from __future__ import annotations

import json

import networkx as nx
import pytest

import einsumc
from conftest import EXAMPLES, ROOT


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_round_trip(path):
    prog = einsumc.load(path)
    text = prog.to_source()
    again = einsumc.load(text)
    assert again == prog
    assert again.to_source() == text  # the printer is a fixed point


def test_spans_do_not_matter():
    a = einsumc.load("rank M\ninput A[m]\noutput Z\nZ = A[m]\n")
    b = einsumc.load("rank M\n\n\ninput   A[m]   # the input\noutput Z\nZ =   A[m]\n")
    assert a == b
    assert a.einsums[0].span.line == 4 and b.einsums[0].span.line == 6


def test_different_programs_differ():
    a = einsumc.load("rank M\ninput A[m]\noutput Z\nZ = A[m]\n")
    b = einsumc.load("rank M\ninput A[m]\noutput Z\nZ = A[m] :: max(m)\n")
    assert a != b


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_graph_is_dag_after_iterates(path):
    g = einsumc.load(path).graph()
    assert nx.is_directed_acyclic_graph(g.dependency_graph())
    order = g.topo_einsums()
    assert sorted(order) == list(range(len(g.program.einsums)))
    data = json.loads(g.to_json())
    assert data["schema"] == 1
    assert g.to_dot().startswith("digraph")


def test_cascade5_graph_edges():
    g = einsumc.load(ROOT / "examples/fusemax/cascade5_1pass.ein").graph()
    p = g.program
    idx = {(e.tensor, e.kind): i for i, e in enumerate(p.einsums)}
    # PRM reads RM's previous and new iterates
    prm = idx[("PRM", "plain")]
    assert g.nx.edges["tensor:RM", f"einsum:{prm}"]["iterates"] == ("next", "prev")
    # the recurrence of RM has a cycle through its previous iterate only
    rm = idx[("RM", "recur")]
    assert g.nx.has_edge(f"einsum:{rm}", "tensor:RM") and g.nx.has_edge("tensor:RM", f"einsum:{rm}")
    assert sorted(g.producers("RM")) == sorted([idx[("RM", "init")], rm])
    # AV reads the final iterates and comes last
    assert g.topo_einsums()[-1] == idx[("AV", "plain")]
    assert g.nx.edges["tensor:RD", f"einsum:{idx[('AV', 'plain')]}"]["iterates"] == ("final",)


def test_iteration_space_and_reductions():
    p = einsumc.load(ROOT / "examples/fusemax/cascade5_1pass.ein")
    e = {x.tensor: x for x in p.einsums if x.kind == "plain"}
    assert e["BQK"].space == ("m1", "m0", "p", "e")
    assert [(r.op, r.vars) for r in e["BQK"].reduced] == [("sum", ("e",))]
    assert [(r.op, r.vars) for r in e["LM"].reduced] == [("max", ("m0",))]
    lm = einsumc.load("rank E, M0, M1, P\ninput Q[e, p], BK[e, m1, m0]\noutput LM[m1, p]\n"
                      "LM[m1, p] = Q[e, p] * BK[e, m1, m0] :: max(m0)\n")
    assert [(r.op, r.vars) for r in lm.einsums[0].reduced] == [("sum", ("e",)), ("max", ("m0",))]
