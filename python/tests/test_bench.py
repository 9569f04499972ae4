"""The GPU scripts bench/memctl_torch.py and bench/memctl_bench.py, without a GPU:
they compile, import nothing heavy, and their host-side parts compute what
their reports say."""
import importlib.util
import json
import os
import py_compile
import subprocess
import sys

import pytest
from conftest import GPUHEAP_RUN, REPO, env_with, need, run_python

SCRIPTS = {name: os.path.join(REPO, "bench", name + ".py") for name in ("memctl_torch", "memctl_bench")}
GiB, MiB = 1 << 30, 1 << 20


def load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS[name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def torch_script():
    return load("memctl_torch")


@pytest.fixture(scope="module")
def bench_script():
    return load("memctl_bench")


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_the_script_compiles_and_imports_no_framework(name, tmp_path):
    py_compile.compile(SCRIPTS[name], cfile=str(tmp_path / "x.pyc"), doraise=True)
    code = (f"import importlib.util, sys; s = importlib.util.spec_from_file_location('m', {SCRIPTS[name]!r}); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); print('torch' in sys.modules)")
    r = run_python(code)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help(name):
    r = subprocess.run([sys.executable, SCRIPTS[name], "--help"], capture_output=True, text=True, env=env_with())
    assert r.returncode == 0 and "--json" in r.stdout, r.stderr


# ---- memctl_torch ---------------------------------------------------------------------------

def test_sizes(torch_script):
    assert torch_script.parse_size("2G") == 2 * GiB
    assert torch_script.parse_size("2GiB") == 2 * GiB
    assert torch_script.parse_size("512M") == 512 * MiB
    assert torch_script.parse_size("1.5G") == 3 * GiB // 2
    assert torch_script.parse_size("4096") == 4096


def test_growth_ignores_the_warm_up_cycle(torch_script):
    assert torch_script.growth([100, 500, 500, 501]) == 1
    assert torch_script.growth([100, 200, 300]) == 100
    assert torch_script.growth([5]) == 0


def test_the_kv_buffer_leaves_no_room_beside_it(torch_script):
    free, weights = 140 * GiB, GiB // 2
    kv = torch_script.kv_bytes_for(free, weights, 0.55)
    assert kv % (2 * MiB) == 0
    tagged = kv + weights
    assert tagged <= free * 0.55 and free - tagged < tagged  # a tensor of the tagged size fits only in their place
    assert torch_script.kv_bytes_for(GiB, 2 * GiB, 0.55) == 0


def test_checks_report_and_exit_status(torch_script, capsys, tmp_path):
    checks = torch_script.Checks()
    assert checks.exit_status() == 1  # nothing checked is no pass
    checks.add("a", True, "fine", x=1)
    assert checks.exit_status() == 0
    checks.add("b", False, "broken")
    assert checks.exit_status() == 1 and not checks.ok()
    out = capsys.readouterr().out.splitlines()
    assert out == ["memctl_torch: PASS a: fine", "memctl_torch: FAIL b: broken"]
    path = tmp_path / "r.json"
    torch_script.write_json(str(path), {"checks": checks.results})
    assert json.loads(path.read_text())["checks"]["a"] == {"ok": True, "detail": "fine", "x": 1}


def test_rss(torch_script):
    assert torch_script.rss_bytes() > MiB


def test_gpuheap_run_and_the_rerun(torch_script):
    run = need(GPUHEAP_RUN, "gpuheap-run")
    assert torch_script.find_gpuheap_run(run) == run
    cmd, env = torch_script.rerun_command(run, ["--cycles", "3"], {"A": "1"})
    assert cmd == [run, sys.executable, SCRIPTS["memctl_torch"], "--cycles", "3"]
    assert env == {"A": "1", "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}


def test_arguments(torch_script):
    args = torch_script.parse_args([])
    assert (args.cycles, args.kv, args.fraction) == (20, "auto", 0.55)
    with pytest.raises(SystemExit):
        torch_script.parse_args(["--cycles", "0"])


def test_started_plainly_it_runs_itself_under_gpuheap_run():
    """It re-executes through gpuheap-run with caching off, then stops with exit 2
    for want of memory control, PyTorch or a visible GPU (CUDA_VISIBLE_DEVICES is
    empty here), whichever this machine lacks first."""
    run = need(GPUHEAP_RUN, "gpuheap-run")
    r = subprocess.run([sys.executable, SCRIPTS["memctl_torch"], "--gpuheap-run", run], capture_output=True,
                       text=True, timeout=300,
                       env=env_with(CUDA_VISIBLE_DEVICES="", PYTORCH_NO_CUDA_MEMORY_CACHING=None,
                                    MEMCTL_TORCH_RERUN=None))
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"memctl_torch: running {run} " in r.stdout
    assert "Traceback" not in r.stderr
    assert any(why in r.stderr for why in ("has no memory control", "no PyTorch here", "no CUDA device")), r.stderr


# ---- memctl_bench ---------------------------------------------------------------------------

def test_bench_sizes(bench_script):
    assert bench_script.parse_sizes("1,16,64") == [1, 16, 64]
    assert bench_script.parse_sizes("0.5") == [0.5]
    for bad in ("", "0", "1,-2"):
        with pytest.raises(ValueError):
            bench_script.parse_sizes(bad)


def test_bench_fit(bench_script):
    assert bench_script.why_not(GiB, 2 * GiB, "device memory") is None
    why = bench_script.why_not(64 * GiB, 60 * GiB, "host memory")
    assert why == "needs 64.0 GiB of host memory (with 10% spare), 60.0 GiB available"
    assert bench_script.host_available() > 0


def test_bench_summary(bench_script):
    n = 16 * GiB
    raw = {
        "backup": {"pause_ms": [400.0, 320.0, 330.0], "resume_ms": [300.0, 310.0, 290.0], "verified": True},
        "nobackup": {"pause_ms": [1.6, 1.7, 1.5], "resume_ms": [3.2, 3.0, 3.1]},
        "copy": {"out_ms": [360.0, 350.0, 340.0], "back_ms": [340.0, 330.0, 350.0], "host_alloc_ms": 4000.0,
                 "verified": True},
        "nocopy": {"free_ms": [8.0, 8.0, 8.0], "malloc_ms": [16.0, 16.0, 16.0]},
        "pinned": {"d2h_ms": [320.0, 320.0, 320.0], "h2d_ms": [300.0, 300.0, 300.0]},
    }
    s = bench_script.summarize(n, raw)
    # a backup's first cycle (400 ms: it allocates the pinned buffer) apart from the steady ones
    assert s["backup"]["pause_ms_per_gib"] == pytest.approx(325.0 / 16)
    assert s["backup"]["first_pause_ms_per_gib"] == pytest.approx(400.0 / 16)
    assert s["backup"]["resume_gibps"] == pytest.approx(16 / 0.300)
    assert s["backup"]["first_resume_gibps"] == pytest.approx(16 / 0.300)
    assert s["backup"]["steady_cycles"] == 2
    assert s["nobackup"]["resume_ms_per_gib"] == pytest.approx(3.1 / 16)
    assert s["pinned"]["d2h_gibps"] == pytest.approx(50.0)
    assert s["ratios"]["pause_vs_d2h"] == pytest.approx(320.0 / 325.0)
    assert s["ratios"]["resume_vs_copy_back"] == pytest.approx(300.0 / 340.0)
    assert s["ratios"]["pause_vs_free"] == pytest.approx(1.6 / 8.0)
    text = bench_script.lines(16, s)
    assert len(text) == 4
    assert text[0].startswith("  16 GiB backup:    pause   20.31 ms/GiB")
    assert "pinned D2H 50.0" in text[0] and "0.98x" in text[0] and "steady: 2 cycles" in text[0]
    assert text[1].startswith("  16 GiB backup, first cycle (pinned buffer allocated): pause   25.00 ms/GiB")
    assert "cudaMalloc + copy back   21.25 ms/GiB" in text[2]
    assert "cudaFree 0.500 ms/GiB, cudaMalloc 1.000 ms/GiB" in text[3]


def test_bench_summary_of_one_backup_cycle(bench_script):
    s = bench_script.summarize(GiB, {"backup": {"pause_ms": [50.0], "resume_ms": [40.0], "verified": True}})
    assert s["backup"]["pause_ms_per_gib"] == s["backup"]["first_pause_ms_per_gib"] == pytest.approx(50.0)
    assert s["backup"]["steady_cycles"] == 0
    assert len(bench_script.lines(1, s)) == 1  # no steady cycles: one line


def test_bench_summary_of_a_partly_skipped_size(bench_script):
    s = bench_script.summarize(GiB, {"nobackup": {"pause_ms": [1.0], "resume_ms": [2.0]}})
    assert set(s) == {"nobackup"}
    assert bench_script.lines(1, s) == ["   1 GiB no backup: pause   1.000 ms/GiB, resume   2.000 ms/GiB"]


def test_bench_finds_places_for_cudart(bench_script):
    cands = bench_script.cudart_candidates()
    assert all(isinstance(c, str) and c for c in cands)


# ---- test/preload/train_common.py: the record both training scripts write ------------------

def test_train_common_writes_what_frameworks_reads(tmp_path, monkeypatch, capsys):
    """Against a stand-in torch: the common fields, the script's own, and the
    summary line; PyTorch's peak counters left out with a pluggable allocator."""
    import types
    cuda = types.SimpleNamespace(get_device_name=lambda i: "Stand-in GPU",
                                 max_memory_allocated=lambda i: 123, max_memory_reserved=lambda i: 456)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(__version__="0.0", cuda=cuda))
    monkeypatch.setenv("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments: True")
    spec = importlib.util.spec_from_file_location("train_common", os.path.join(REPO, "test", "preload", "train_common.py"))
    record = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(record)
    for pluggable, label in ((None, ""), ("lib.so", "named")):
        a = types.SimpleNamespace(label=label, out=str(tmp_path / "out.json"), warmup=1, pluggable=pluggable)
        record.write(a, [2.5, 1.25, 0.5], [0.010, 0.002, 0.004], {"model": "cnn", "seed": 7}, name="cnn")
        out = json.load(open(a.out))
        assert out["label"] == label and out["model"] == "cnn" and out["seed"] == 7
        assert out["device"] == "Stand-in GPU" and out["caching_disabled"] and out["expandable_segments"]
        assert out["losses_hex"] == [v.hex() for v in (2.5, 1.25, 0.5)]
        assert out["median_step_ms"] == pytest.approx(3.0) and out["mean_step_ms"] == pytest.approx(3.0)
        assert out["max_memory_reserved"] == (None if pluggable else 456)
        assert capsys.readouterr().out.startswith(f"{label or 'cnn'}: Stand-in GPU, median step 3.00 ms")


def test_train_set_up_installs_and_pins(monkeypatch):
    """set_up against a stand-in torch: gpuheap's allocator installed when
    --pluggable names it (and only then), every determinism switch set."""
    import types
    seen = {}
    memory = types.SimpleNamespace(
        CUDAPluggableAllocator=lambda so, a, f: ("allocator", so, a, f),
        change_current_allocator=lambda alloc: seen.__setitem__("allocator", alloc))
    cuda = types.SimpleNamespace(
        memory=memory, matmul=types.SimpleNamespace(allow_tf32=True),
        enable_flash_sdp=lambda on: seen.__setitem__("flash", on),
        enable_mem_efficient_sdp=lambda on: seen.__setitem__("mem_efficient", on),
        enable_math_sdp=lambda on: seen.__setitem__("math", on))
    cudnn = types.SimpleNamespace(deterministic=False, benchmark=True, allow_tf32=True)
    torch = types.SimpleNamespace(
        cuda=cuda, backends=types.SimpleNamespace(cuda=cuda, cudnn=cudnn),
        use_deterministic_algorithms=lambda on, warn_only: seen.__setitem__("deterministic", (on, warn_only)))
    monkeypatch.setitem(sys.modules, "torch", torch)
    spec = importlib.util.spec_from_file_location("train_common", os.path.join(REPO, "test", "preload", "train_common.py"))
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    common.set_up(types.SimpleNamespace(pluggable=None))
    assert "allocator" not in seen
    common.set_up(types.SimpleNamespace(pluggable="/x/libgpuheap-preload.so"))
    assert seen["allocator"] == ("allocator", "/x/libgpuheap-preload.so", "gpu_torch_alloc", "gpu_torch_free")
    assert seen["deterministic"] == (True, True) and seen["math"] is True
    assert seen["flash"] is False and seen["mem_efficient"] is False
    assert cudnn.deterministic and not cudnn.benchmark and not cudnn.allow_tf32 and not cuda.matmul.allow_tf32


def test_frameworks_base_build_and_modes(tmp_path):
    """bench/frameworks.py: gpuheap-base runs gpuheap-run of --base-build with
    the gpuheap mode's environment, and a summary without nocache compares
    nothing with it (and does not fail for that)."""
    spec = importlib.util.spec_from_file_location("frameworks", os.path.join(REPO, "bench", "frameworks.py"))
    fw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fw)
    argv, env = fw.command("cnn", "gpuheap-base", "/base", 3, "o.json", "s.json")
    assert argv[0] == os.path.join("/base", "tools", "gpuheap-run")
    assert env["PYTORCH_NO_CUDA_MEMORY_CACHING"] == "1" and env["GPUHEAP_STATS_JSON"] == "s.json"
    runs = [{"workload": "cnn", "mode": m, "round": 1, "rc": 0, "losses_hex": ["0x1p+0"], "median_step_ms": ms,
             "peak_physical_bytes": peak} for m, ms, peak in
            (("caching", 10.0, 4 << 30), ("gpuheap", 11.0, 3 << 30), ("gpuheap-base", 12.0, 4 << 30))]
    modes = ("caching", "gpuheap", "gpuheap-base")
    res = fw.summarize(runs, ["cnn"], modes)
    assert res["cnn"]["gpuheap"]["losses_equal_nocache"] is None
    assert res["cnn"]["gpuheap-base"]["physical_vs_caching"] == pytest.approx(1.0)
    text = fw.table(res, modes, "Stand-in GPU")
    assert "gpuheap-base" in text and "1.100x" in text
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "frameworks.py"), "--build", str(tmp_path),
                        "--out", str(tmp_path / "o"), "--modes", "caching,bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown modes" in r.stderr


def test_frameworks_summary_against_caching_and_expandable():
    """Without nocache, a gpuheap mode's losses are compared with the caching
    allocator's; peaks are also given against expandable segments'; the heap's
    driver work per run comes from its statistics (median over rounds)."""
    spec = importlib.util.spec_from_file_location("frameworks", os.path.join(REPO, "bench", "frameworks.py"))
    fw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fw)
    stats = lambda f, o: [{"fences": f, "order_releases": o, "seal_events": 0, "backend_map": 20, "backend_unmap": 5}]
    runs = [
        {"workload": "cnn", "mode": "caching", "round": 1, "rc": 0, "losses_hex": ["a"], "median_step_ms": 10.0,
         "peak_physical_bytes": 4 << 30},
        {"workload": "cnn", "mode": "expandable", "round": 1, "rc": 0, "losses_hex": ["a"], "median_step_ms": 10.0,
         "peak_physical_bytes": 2 << 30},
        {"workload": "cnn", "mode": "gpuheap", "round": 1, "rc": 0, "losses_hex": ["a"], "median_step_ms": 10.0,
         "peak_physical_bytes": 3 << 30, "gpuheap_stats": stats(1, 800)},
        {"workload": "cnn", "mode": "gpuheap", "round": 2, "rc": 0, "losses_hex": ["a"], "median_step_ms": 10.0,
         "peak_physical_bytes": 3 << 30, "gpuheap_stats": stats(3, 900)},
        {"workload": "cnn", "mode": "gpuheap-base", "round": 1, "rc": 0, "losses_hex": ["b"], "median_step_ms": 11.0,
         "peak_physical_bytes": 4 << 30, "gpuheap_stats": stats(30, 0)},
    ]
    modes = ("caching", "expandable", "gpuheap", "gpuheap-base")
    res = fw.summarize(runs, ["cnn"], modes)
    assert res["cnn"]["gpuheap"]["losses_equal_caching"] is True
    assert res["cnn"]["gpuheap-base"]["losses_equal_caching"] is False
    assert res["cnn"]["gpuheap"]["physical_vs_expandable"] == pytest.approx(1.5)
    assert res["cnn"]["gpuheap"]["heap_work"]["order_releases"] == 850
    assert res["cnn"]["caching"]["heap_work"] is None
    text = fw.table(res, modes, "Stand-in GPU")
    assert "1.500x | = caching" in text and "differ from caching" in text
    assert "2 fences" in text and "850 releases" in text and "30 fences" in text
