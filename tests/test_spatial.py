"""The spatial-array backend (issue #6): schema errors, the FuseMax evaluation's numbers,
ablation directions, spills, speed, Timeloop emission and the CLI entry points."""
from __future__ import annotations

import copy
import csv
import json
import statistics
import time
from pathlib import Path

import pytest
import yaml

import einsumc
from einsumc.backends import get_target
from einsumc.backends.spatial.arch import load_arch, parse_arch
from einsumc.backends.spatial.cascade import cascade_model
from einsumc.backends.spatial.cli import parse_shape
from einsumc.cli import build_parser
from einsumc.backends.spatial.explore import load_config
from einsumc.backends.spatial.mapping import load_mapping, parse_mapping
from einsumc.backends.spatial.model import derive_plan, evaluate
from einsumc.backends.spatial.target import SpatialTarget
from einsumc.diagnostics import EinsumcError

ROOT = Path(__file__).resolve().parent.parent
FM = ROOT / "examples" / "fusemax"
MODELS = {"BERT": dict(B=64, H=12, E=64, F=64), "TrXL": dict(B=64, H=16, E=64, F=64),
          "T5": dict(B=64, H=8, E=64, F=64), "XLM": dict(B=64, H=16, E=128, F=128)}
LENS = [1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20]
DESIGNS = {  # name: (cascade, arch, mapping), as in examples/fusemax/eval.yaml
    "unfused": ("cascade4_3pass.ein", "flat", "unfused"),
    "flat": ("cascade4_3pass.ein", "flat", "flat"),
    "cascade": ("cascade5_1pass.ein", "flat", "cascade"),
    "architecture": ("cascade5_1pass.ein", "fusemax", "architecture"),
    "binding": ("cascade5_1pass.ein", "fusemax", "fusemax"),
}


@pytest.fixture(scope="module")
def designs():
    out = {}
    for name, (c, a, m) in DESIGNS.items():
        cm = cascade_model(einsumc.load(FM / c))
        arch = load_arch(FM / "arch" / f"{a}.yaml")
        mp = load_mapping(FM / "mappings" / f"{m}.yaml")
        out[name] = (cm, arch, mp, derive_plan(cm, arch, mp))
    return out


def run(designs, name, model="BERT", L=1024, **extra):
    cm, arch, mp, plan = designs[name]
    shapes = {"M": L, "P": L, **MODELS[model], **extra}
    return evaluate(cm, arch, mp, shapes, plan)


@pytest.fixture(scope="module")
def grid(designs):
    return {(d, m, L): run(designs, d, m, L) for d in DESIGNS for m in MODELS for L in LENS}


# ----------------------------------------------------------------------------- schema errors
def _arch_data():
    return yaml.safe_load((FM / "arch" / "fusemax.yaml").read_text())


@pytest.mark.parametrize("edit, field, words", [
    (lambda d: d["buffer"].pop("capacity_bytes"), "buffer.capacity_bytes", "required"),
    (lambda d: d["buffer"].__setitem__("capcity_bytes", 1), "buffer.capcity_bytes", "unknown field"),
    (lambda d: d.__setitem__("clock_hz", "fast"), "clock_hz", "expected a number"),
    (lambda d: d["dram"].__setitem__("bandwidth_bytes_per_s", -1),
     "dram.bandwidth_bytes_per_s", "positive"),
    (lambda d: d["arrays"]["2d"].__setitem__("shape", [256]), "arrays.2d.shape", "2 integers"),
    (lambda d: d["arrays"]["2d"].__setitem__("kind", "3d"), "arrays.2d.kind", "not one of"),
    (lambda d: d["arrays"]["2d"]["ops"].__setitem__("exp", {"mac.fma": 6}),
     "arrays.2d.ops.exp.mac.fma", "no action 'fma'"),
    (lambda d: d["arrays"]["1d"]["ops"].__setitem__("div", {"divider.div": 1}),
     "arrays.1d.ops.div.divider.div", "unknown unit 'divider'"),
    (lambda d: d["arrays"]["1d"]["registers"].__setitem__("entries", 0),
     "arrays.1d.registers.entries", ">= 1"),
    (lambda d: d.__setitem__("links", [["2d", "3d"]]), "links[0]", "unknown array '3d'"),
])
def test_arch_errors_name_the_file_and_field(edit, field, words):
    d = _arch_data()
    edit(d)
    with pytest.raises(EinsumcError) as ei:
        parse_arch(d, "arch/bad.yaml")
    msg = str(ei.value)
    assert msg.startswith(f"error: arch/bad.yaml: {field}:"), msg
    assert words in msg


@pytest.mark.parametrize("text, field, words", [
    ("schedule: pipelind\n", "schedule", "not one of"),
    ("spill: sometimes\n", "spill", "not one of"),
    ("query_block: many\n", "query_block", "expected an integer"),
    ("tiles: {M0: lots}\n", "tiles.M0", "rows"),
    ("spatial: {2d: 5}\n", "spatial.2d", "list of rank variables"),
    ("bindng: {LM: 2d}\n", "bindng", "unknown field"),
])
def test_mapping_schema_errors(text, field, words):
    with pytest.raises(EinsumcError) as ei:
        parse_mapping(yaml.safe_load(text), "map/bad.yaml")
    msg = str(ei.value)
    assert f"map/bad.yaml: {field}:" in msg and words in msg, msg


@pytest.mark.parametrize("text, field, words", [
    ("binding: {SLN: 3d}\n", "binding.SLN", "no array '3d'"),
    ("binding: {XYZ: 2d}\n", "binding.XYZ", "no Einsum writing 'XYZ'"),
    ("binding: {AV: 2d}\n", "binding.AV", "needs div"),
    ("spatial: {2d: [m0]}\n", "spatial.2d", "2 dimension(s)"),
    ("spatial: {1d: [q]}\n", "spatial.1d", "not a rank variable"),
    ("tiles: {Q0: 4}\n", "tiles.Q0", "not a rank"),
])
def test_mapping_errors_against_cascade_and_arch(text, field, words):
    cm = cascade_model(einsumc.load(FM / "cascade5_1pass.ein"))
    arch = load_arch(FM / "arch" / "fusemax.yaml")
    mp = parse_mapping(yaml.safe_load(text), "map/bad.yaml")
    with pytest.raises(EinsumcError) as ei:
        evaluate(cm, arch, mp, {"M": 4096, "P": 4096})
    msg = str(ei.value)
    assert f"map/bad.yaml: {field}:" in msg and words in msg, msg


def test_unsupported_op_and_bad_shapes_are_errors():
    cm = cascade_model(einsumc.load(FM / "cascade5_1pass.ein"))
    arch = load_arch(FM / "arch" / "fusemax.yaml")
    d = _arch_data()
    for a in d["arrays"].values():
        a["ops"].pop("exp")
    noexp = parse_arch(d, "arch/noexp.yaml")
    with pytest.raises(EinsumcError, match="no array of arch/noexp.yaml supports Einsum SLN"):
        evaluate(cm, noexp, load_mapping(None), {"M": 4096, "P": 4096})
    with pytest.raises(EinsumcError, match="M must be a multiple of M0"):
        evaluate(cm, arch, load_mapping(None), {"M": 1000, "P": 4096})
    with pytest.raises(EinsumcError, match="'Z' is not a rank"):
        evaluate(cm, arch, load_mapping(None), {"M": 4096, "P": 4096, "Z": 2})
    with pytest.raises(EinsumcError, match="give the extent of P"):
        evaluate(cm, arch, load_mapping(None), {"M": 4096})


# ----------------------------------------------------------------------------- buffer fit
def test_working_set_that_does_not_fit_spills_explicitly_or_is_an_error(designs):
    cm, arch, mp, plan = designs["flat"]
    never = parse_mapping({"schedule": "pipelined", "spill": "never"}, "map/never.yaml")
    with pytest.raises(EinsumcError, match="does not fit the 33,554,432-byte buffer"):
        evaluate(cm, arch, never, {"M": 1 << 20, "P": 1 << 20})
    r = run(designs, "flat", "BERT", 1 << 20)
    assert r.tile["plan"] in ("partial", "full") and r.tile["spilled_fraction"] > 0
    assert r.dram_by_tensor["QK (spill)"] > 0 and r.dram_by_tensor["SN (spill)"] > 0
    # spilled bytes follow the pass analysis: one write and one read per extra pass
    qk = 64 * 12 * (1 << 40) * 2
    assert r.dram_by_tensor["QK (spill)"] == pytest.approx(2 * qk * r.tile["spilled_fraction"])
    small = run(designs, "flat", "BERT", 1024)
    assert small.tile["plan"] == "fit" and not any("spill" in k for k in small.dram_by_tensor)
    tiny = parse_arch({**_arch_data(), "buffer": {**_arch_data()["buffer"],
                                                  "capacity_bytes": 1000}}, "arch/tiny.yaml")
    cm5 = designs["binding"][0]
    with pytest.raises(EinsumcError, match="does not fit the 1,000-byte buffer"):
        evaluate(cm5, tiny, designs["binding"][2], {"M": 4096, "P": 4096})


def test_p1_rule_matches_mapping_1(designs):
    r = run(designs, "binding", "BERT", 1 << 20)
    assert (r.tile["P1"], r.tile["query_blocks"]) == (128, 32)   # fusemax.md §4.2 example
    assert r.buffer["occupancy"] <= 1.0
    assert run(designs, "binding", "BERT", 1024).tile["P1"] == 4  # all of P/P0


# ----------------------------------------------------------------------------- binding
def test_default_binding_is_fusemax_and_cascade(designs):
    def on2d(name):
        cm, arch, mp, plan = designs[name]
        return {e.name for e in cm.einsums if plan.binding[e.index] == "2d"}
    assert on2d("binding") == {"BQK", "LM", "SLN", "SLD", "SLNV"}     # Proposal.einsums_2d
    assert on2d("cascade") == {"BQK", "SLNV"}                          # +Cascade
    assert on2d("flat") == {"QK", "AV"}


# ----------------------------------------------------------------------------- numbers
def test_fusemax_utilization(grid):
    for m in MODELS:
        assert grid[("binding", m, 1024)].util_2d == pytest.approx(0.89, abs=0.01)
        assert grid[("binding", m, 1 << 20)].util_2d == pytest.approx(0.99, abs=0.01)
        assert grid[("binding", m, 1 << 20)].util_1d == pytest.approx(1.0, abs=0.01)


def test_fusemax_latency_is_the_epoch_bound(grid):
    # per M0 x P0 tile: 1D work 2F + 10 cycles (RM 1, PRM 7, SPD 1, SPNV F, RD 1, RNV F),
    # plus AV (F cycles per query tile) amortized over the M1 sequence tiles
    r = grid[("binding", "BERT", 1024)]
    tiles = 64 * 12 * 4 * 4
    cycles = tiles * (2 * 64 + 10) + 64 * 12 * 4 * 64
    assert r.latency_s == pytest.approx(cycles / 940e6, rel=1e-3)


def test_flat_utilization(grid):
    for m in ("BERT", "TrXL", "T5"):
        assert grid[("flat", m, 1024)].util_2d == pytest.approx(0.125, abs=0.002)
        assert grid[("flat", m, 1 << 20)].util_2d < 0.12   # memory bound once it spills
        assert grid[("flat", m, 1 << 20)].bottleneck == "DRAM bandwidth"
    assert grid[("flat", "XLM", 1024)].util_2d == pytest.approx(0.25, abs=0.003)
    assert grid[("flat", "XLM", 1 << 20)].util_2d < 0.24


def test_mean_speedups_match_the_paper(grid):
    def mean(base):
        return statistics.mean(grid[(base, m, L)].latency_s / grid[("binding", m, L)].latency_s
                               for m in MODELS for L in LENS)
    assert mean("flat") == pytest.approx(6.7, rel=0.10)
    assert mean("unfused") == pytest.approx(10.0, rel=0.10)


def test_ablation_directions(grid):
    for m in MODELS:
        for L in LENS:
            arch, bind = grid[("architecture", m, L)], grid[("binding", m, L)]
            casc = grid[("cascade", m, L)]
            assert bind.latency_s < arch.latency_s < casc.latency_s
            assert arch.util_1d < 0.5 < bind.util_1d        # the binding un-stalls the 1D array
            assert arch.energy_pj == pytest.approx(bind.energy_pj)   # no leakage modelled
        # the 1-pass cascade never spills: its utilization does not depend on the length
        u = [grid[("cascade", m, L)].util_2d for L in LENS[1:]]
        assert max(u) - min(u) < 0.01
        assert grid[("cascade", m, 1 << 20)].latency_s < grid[("flat", m, 1 << 20)].latency_s
        assert grid[("cascade", m, 1 << 20)].dram_bytes < grid[("flat", m, 1 << 20)].dram_bytes
    # changing only the architecture (FLAT -> FuseMax) with the 1-pass cascade is faster
    assert grid[("architecture", "BERT", 4096)].latency_s < grid[("cascade", "BERT", 4096)].latency_s


def test_energy_is_reported_by_component(grid):
    r = grid[("flat", "BERT", 1 << 20)]
    comp = r.energy_by_component
    assert set(comp) >= {"compute_2d", "compute_1d", "registers_2d", "buffer", "dram"}
    assert sum(comp.values()) == pytest.approx(r.energy_pj)
    # DRAM energy follows the bytes: 249.6 pJ per 8-byte access
    assert comp["dram"] == pytest.approx(r.dram_bytes / 8 * 249.6)
    assert grid[("binding", "BERT", 1 << 20)].energy_by_component["dram"] < comp["dram"]


def test_one_evaluation_costs_the_same_at_any_length(designs):
    def best(L):
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            run(designs, "binding", "BERT", L)
            run(designs, "flat", "BERT", L)
            run(designs, "unfused", "BERT", L)
            ts.append(time.perf_counter() - t)
        return min(ts)
    short, long_ = best(1024), best(1 << 40)
    assert long_ < 3 * short + 2e-3, (short, long_)
    assert short < 0.05


def test_one_pass_cascade_derived_by_transforms_costs_like_cascade5(designs):
    # 3-pass -> 1-pass with einsumc's own transforms, then FuseMax's architecture and mapping
    prog = einsumc.load(FM / "cascade4_3pass.ein").transformed(
        False, "partition:M=256,defer-division,online")
    cm = cascade_model(prog)
    _, arch, mp, _ = designs["binding"]
    for L in (1024, 1 << 20):
        r = evaluate(cm, arch, mp, {"M": L, "P": L, **MODELS["BERT"]})
        ref = run(designs, "binding", "BERT", L)
        assert r.latency_s == pytest.approx(ref.latency_s, rel=1e-3)
        assert r.dram_bytes == pytest.approx(ref.dram_bytes)


# ----------------------------------------------------------------------------- emission
def test_timeloop_problems_parse():
    prog = einsumc.load(FM / "cascade5_1pass.ein")
    files = SpatialTarget().timeloop_files(prog, {"M": 4096, "P": 4096, "B": 64, "H": 12},
                                           FM / "arch" / "fusemax.yaml")
    assert len(files) == 12   # the artifact's 12 problems of Cascade 5
    names = set()
    for fname, text in files.items():
        doc = yaml.safe_load(text)["problem"]
        assert doc["version"] == 0.4
        shape = doc["shape"]
        names.add(shape["name"])
        dims = set(shape["dimensions"])
        assert set(doc["instance"]) == dims and {"B", "H"} <= dims
        spaces = shape["data_spaces"]
        assert spaces[-1]["name"] == shape["name"] and spaces[-1]["read_write"] is True
        for s in spaces:
            for term in s["projection"]:
                for factor in term:
                    assert factor[0] in dims
    assert names == {"BQK", "LM", "RM", "SLN", "SLD", "SLNV", "PRM", "SPD", "RD", "SPNV",
                     "RNV", "AV"}
    bqk = yaml.safe_load(files["05_bqk.yaml"])["problem"]
    assert bqk["instance"]["M0"] == 256 and bqk["instance"]["M1"] == 16
    c4 = SpatialTarget().timeloop_files(einsumc.load(FM / "cascade4_3pass.ein"), {"M": 64, "P": 64})
    assert [yaml.safe_load(t)["problem"]["shape"]["name"] for t in c4.values()] == \
        ["QK", "GM", "SN", "SD", "A", "AV"]


def test_target_needs_an_architecture():
    prog = einsumc.load(FM / "cascade5_1pass.ein")
    t = get_target("spatial")
    with pytest.raises(EinsumcError, match="needs an architecture"):
        t.emit(prog)
    with pytest.raises(EinsumcError, match="not a callable"):
        t.compile(prog)
    text = t.emit(prog, FM / "arch" / "fusemax.yaml", FM / "mappings" / "fusemax.yaml")
    for part in ("binding", "loop nest", "steady-state epoch", "buffer:", "DRAM transfers",
                 "M, P = 4096 by default"):
        assert part in text, part


# ----------------------------------------------------------------------------- CLI
def _main(argv, capsys):
    p = build_parser()
    args = p.parse_args(argv)
    rc = args.fn(args)
    return rc, capsys.readouterr()


def test_cli_simulate_json(capsys):
    rc, out = _main(["simulate", str(FM / "cascade5_1pass.ein"), "--arch",
                     str(FM / "arch" / "fusemax.yaml"), "--mapping",
                     str(FM / "mappings" / "fusemax.yaml"), "--shape", "M=1M,P=1M,B=64,H=12",
                     "--json"], capsys)
    d = json.loads(out.out)
    for k in ("latency_s", "util_2d", "util_1d", "dram_bytes", "energy_pj",
              "energy_by_component", "bottleneck", "buffer", "epoch", "loop_nest"):
        assert k in d, k
    assert d["util_2d"] == pytest.approx(0.993, abs=0.002)
    rc, out = _main(["simulate", str(FM / "cascade4_3pass.ein"), "--arch",
                     str(FM / "arch" / "flat.yaml"), "--shape", "M=4K,P=4K"], capsys)
    assert rc == 0 and "bottleneck" in out.out and "utilization" in out.out


def test_cli_compile_formats(tmp_path, capsys):
    base = [str(FM / "cascade5_1pass.ein"), "--target", "spatial", "--arch",
            str(FM / "arch" / "fusemax.yaml")]
    rc, out = _main(["compile", *base, "--emit", "json", "--shape", "M=64K,P=64K"], capsys)
    assert json.loads(out.out)["schedule"] == "interleaved"
    rc, out = _main(["compile", *base, "--emit", "timeloop", "-o", str(tmp_path / "tl")], capsys)
    assert len(list((tmp_path / "tl").glob("*.yaml"))) == 12
    rc, out = _main(["compile", *base, "-o", str(tmp_path / "s.txt")], capsys)
    assert "steady-state epoch" in (tmp_path / "s.txt").read_text()
    with pytest.raises(EinsumcError, match="needs an architecture"):
        _main(["compile", str(FM / "cascade5_1pass.ein"), "--target", "spatial"], capsys)


def test_parse_shape():
    assert parse_shape("M=1M,P=64K,B=2") == {"M": 1 << 20, "P": 1 << 16, "B": 2}
    for bad in ("M", "M=x", "M=0"):
        with pytest.raises(EinsumcError):
            parse_shape(bad)


def _abs_config():
    cfg = yaml.safe_load((FM / "eval.yaml").read_text())
    for d in cfg["designs"].values():
        for k in ("cascade", "arch", "mapping"):
            d[k] = str(FM / d[k])
    cfg["end2end"]["mapping"] = str(FM / cfg["end2end"]["mapping"])
    return cfg


def test_explore_small_config(tmp_path, capsys):
    cfg = _abs_config()
    cfg["models"] = {"BERT": cfg["models"]["BERT"], "XLM": cfg["models"]["XLM"]}
    cfg["seq_lens"] = [1024, 1048576]
    cfg["pareto"]["models"] = ["BERT"]
    cfg["pareto"]["array_sizes"] = [64, 256]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    rc, io = _main(["explore", str(path), "-o", str(out), "-j", "2", "--no-plots"], capsys)
    assert rc == 0 and "explore [" in io.err
    rows = list(csv.DictReader(open(out / "attention.csv")))
    assert list(rows[0]) == ["model", "seq_len", "design", "latency_s", "util_2d", "util_1d",
                             "dram_bytes", "energy_pj"]
    assert len(rows) == 2 * 2 * 5
    e2e = list(csv.DictReader(open(out / "end2end.csv")))
    assert len(e2e) == len(rows)
    for a, e in zip(rows, e2e):
        assert float(e["latency_s"]) > float(a["latency_s"])
    pareto = list(csv.DictReader(open(out / "pareto.csv")))
    assert float(pareto[0]["area_cm2"]) < float(pareto[1]["area_cm2"])
    assert float(pareto[0]["latency_s"]) > float(pareto[1]["latency_s"])
    assert (out / "summary.csv").exists()


def test_explore_config_errors(tmp_path):
    cfg = _abs_config()
    bad = copy.deepcopy(cfg)
    bad["compare"] = [["flat", "nosuch"]]
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(EinsumcError, match=r"bad.yaml: compare\[0\]"):
        load_config(p)
    bad = copy.deepcopy(cfg)
    bad["attention"]["shapes"]["M"] = "seq_length"
    p.write_text(yaml.safe_dump(bad))
    from einsumc.backends.spatial.explore import run_explore
    with pytest.raises(EinsumcError, match="unknown name 'seq_length'"):
        run_explore(p, tmp_path / "o", jobs=1, plots=False, progress=False)


def test_explore_grid_records_misfits(tmp_path):
    from einsumc.backends.spatial.explore import run_explore
    cfg = {"models": {"BERT": {"B": 64, "D": 768, "H": 12, "E": 64, "F": 64, "S": 3072}},
           "seq_lens": [4096],
           "grid": {"cascades": {"c4": str(FM / "cascade4_3pass.ein"),
                                 "c5": str(FM / "cascade5_1pass.ein")},
                    "archs": {"fusemax": str(FM / "arch" / "fusemax.yaml")},
                    "mappings": {"fm": str(FM / "mappings" / "fusemax.yaml")}},
           "attention": {"shapes": {"M": "seq_len", "P": "seq_len", "E": "E", "F": "F",
                                    "B": "B", "H": "H"}}}
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(cfg))
    res = run_explore(p, tmp_path / "o", jobs=1, plots=False, progress=False)
    assert len(res["errors"]) == 1 and "c4+fusemax+fm" in res["errors"][0]
    rows = {r["design"]: r for r in res["attention"]}
    assert rows["c5+fusemax+fm"]["util_2d"] == pytest.approx(0.965, abs=0.01)
    assert (tmp_path / "o" / "errors.csv").exists()
