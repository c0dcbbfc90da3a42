#!/usr/bin/env python3
"""The GPU check (issue 14 part 6): scripts/gpu-check.sh runs this on the GPU machine.

That machine has python3 with torch and nvcc, a CUDA driver, no Go and no network; the work tree
brings bin/gpu/ (`make gpu-bundle`: bin/pregate-cuda and the cuda test binaries, packed). Steps:

  machine   the GPU, driver, torch, CPU
  unpack    the bundle, into a temporary directory
  tests     every cuda test binary (the backend conformance suite on the GPU, ...), in its package dir
  goldens   testdata/*/golden.safetensors through `pregate-cuda generate --device cuda`: ids exact
  cluster   `pregate-cuda up --device cuda` (one process: etcd, coordinator, stores, a cuda worker) in
            every mode, each fixture's prompts through the OpenAI API: ids exact
  device    `pregate-cuda bench device` (expert GEMV bytes/s, pinned H2D copies) against torch:
            torch.mv on the same shapes, a device-to-device copy (the measured memory bandwidth) and
            a pinned host-to-device copy
  modes     `pregate-cuda bench --device cuda` on full-size Switch-Base-8 and the Mixtral-shaped
            mixtral-bench preset (GPU_CHECK_MIXTRAL_FULL=1 adds Mixtral 8x7B's expert size, 2 layers)
            in the paper regime: pregated/resident, ondemand/pregated against the ideal bound,
            decode tokens/s against the paper's 112 tokens/s (Switch-Base, A100)

It writes $OUT/results.md and $OUT/results.json (OUT defaults to ./gpu-results) and prints the
markdown. A failed step is recorded and the next one runs; the exit status is 1 if any step failed.
Every step is bounded in time, and steps are skipped once the whole run nears GPU_CHECK_BUDGET_S
(default 450 s: the machine's run is limited to 8 minutes).

GPU_CHECK_DRY_RUN=1 runs every step with --device cpu at small shapes (the CPU build works too), so
CI exercises the parsing and table code here (scripts/ci-cuda.sh); with GPU_CHECK_DEVICE=cuda:0 and
the cuda package's fake driver on LD_LIBRARY_PATH (cuda/testdata/fakecuda.cc: the kernels run on the
CPU), CI also runs the goldens, the cluster and the device steps through the whole cuda path.
"""

import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DRY = os.environ.get("GPU_CHECK_DRY_RUN", "") not in ("", "0")
OUT = os.path.abspath(os.environ.get("OUT") or "gpu-results")
BUNDLE = os.path.abspath(os.environ.get("GPU_BUNDLE") or os.path.join(REPO, "bin", "gpu"))
DEVICE = os.environ.get("GPU_CHECK_DEVICE") or ("cpu" if DRY else "cuda:0")
BUDGET = float(os.environ.get("GPU_CHECK_BUDGET_S") or 450)
STEPS = os.environ.get("GPU_CHECK_STEPS", "machine,unpack,tests,goldens,cluster,device,modes").split(",")

FIXTURES = ["switch-tiny", "switch-tiny-pregated", "mixtral-tiny"]
MODES = ["resident", "ondemand", "prefetch-all", "speculative"]  # pregated: the pre-gated fixture
PAPER_TOKENS_PER_SECOND = 112.0  # Switch-Base decode on an A100 (Pre-gated MoE, ISCA'24)
GOALS = {"gemv_over_bandwidth": 0.8, "h2d_over_torch": 0.9, "pregated_over_resident": 1.10,
         "ondemand_over_ideal": 0.95}

T0 = time.monotonic()


def elapsed():
    return time.monotonic() - T0


def log(msg):
    print(f"gpu-check [{elapsed():6.1f}s] {msg}", file=sys.stderr, flush=True)


def run(args, timeout, cwd=None, env=None):
    """Runs args; returns (exit status, stdout, stderr). A timeout is exit status 124."""
    log("$ " + " ".join(args))
    try:
        p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        return 124, e.stdout or "", (e.stderr or "") + f"\n(timed out after {timeout}s)"


def cause(err, n=600):
    """A failed pregate command's error: its "pregate: ..." line (the rest of stderr is progress)."""
    lines = [l for l in (err or "").splitlines() if l.startswith("pregate:")]
    return tail(lines[-1] if lines else err, n)


def tail(s, n=600):
    s = (s or "").strip()
    return s if len(s) <= n else "…" + s[-n:]


# --- golden fixtures -----------------------------------------------------------------------------

def read_safetensors_ints(path, names):
    """Returns {name: (shape, [int])} for the I64 tensors names of a safetensors file."""
    out = {}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        for name in names:
            info = header[name]
            if info["dtype"] != "I64":
                raise ValueError(f"{path}: {name} is {info['dtype']}, want I64")
            start, end = info["data_offsets"]
            f.seek(8 + n + start)
            raw = f.read(end - start)
            out[name] = (info["shape"], list(struct.unpack(f"<{len(raw) // 8}q", raw)))
    return out


def golden_prompts(fixture):
    """The fixture's prompts (unpadded, per its attention mask) and HF's generated ids (as Go's
    internal/golden.Prompts reads them)."""
    t = read_safetensors_ints(os.path.join(REPO, "testdata", fixture, "golden.safetensors"),
                              ["input_ids", "attention_mask", "generated_ids"])
    (rows, cols), ids = t["input_ids"]
    mask = t["attention_mask"][1]
    gshape, gen = t["generated_ids"]
    prompts, want = [], []
    for r in range(rows):
        prompts.append([ids[r * cols + j] for j in range(cols) if mask[r * cols + j] != 0])
        want.append(gen[r * gshape[1]:(r + 1) * gshape[1]])
    return prompts, want


# --- steps ---------------------------------------------------------------------------------------

class Check:
    def __init__(self):
        self.res = {"dry_run": DRY, "device": DEVICE, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "steps": [], "machine": {}, "tests": [], "goldens": [], "cluster": [], "device_bench": {},
                    "modes": []}
        self.work = tempfile.mkdtemp(prefix="pregate-gpu-check-")
        self.bin = None
        self.manifest = []

    def step(self, name, fn, reserve):
        """Runs fn unless fewer than reserve seconds of the budget are left."""
        if name not in STEPS:
            return
        rec = {"name": name, "ok": False, "seconds": 0.0, "detail": ""}
        if elapsed() + reserve > BUDGET:
            rec["detail"] = f"skipped: {BUDGET - elapsed():.0f} s of the budget left, the step needs ~{reserve} s"
            self.res["steps"].append(rec)
            log(f"{name}: {rec['detail']}")
            return
        start = time.monotonic()
        log(f"{name}: start")
        try:
            ok, detail = fn()
            rec["ok"], rec["detail"] = bool(ok), detail
        except Exception as e:  # a step's failure is recorded; the next step runs
            rec["detail"] = f"{type(e).__name__}: {e}"
        rec["seconds"] = round(time.monotonic() - start, 1)
        log(f"{name}: {'ok' if rec['ok'] else 'FAILED'} ({rec['seconds']} s) {rec['detail']}")
        self.res["steps"].append(rec)

    def machine(self):
        m = self.res["machine"]
        m["python"] = platform.python_version()
        m["host"] = platform.node()
        try:
            with open("/proc/cpuinfo") as f:
                m["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
            m["cpus"] = os.cpu_count()
        except OSError:
            pass
        if shutil.which("nvidia-smi"):
            rc, out, _ = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.memory",
                              "--format=csv,noheader"], 30)
            if rc == 0:
                m["gpus"] = [l.strip() for l in out.strip().splitlines()]
        rc, out, err = run([sys.executable, "-c", TORCH_INFO], 60)
        m["torch"] = json.loads(out) if rc == 0 and out.strip() else {"error": tail(err, 200)}
        if not DRY and not m.get("gpus"):
            return False, "no nvidia-smi GPU listed"
        return True, "; ".join(m.get("gpus", [])) or m.get("cpu", "")

    def unpack(self):
        archive = os.path.join(BUNDLE, "pregate-gpu.tar.xz")
        if not os.path.exists(archive):
            return False, f"{archive} is missing: run `make gpu-bundle` before sending the tree"
        dst = os.path.join(self.work, "bundle")
        with tarfile.open(archive) as t:
            if hasattr(tarfile, "data_filter"):
                t.extractall(dst, filter="data")
            else:
                t.extractall(dst)
        with open(os.path.join(BUNDLE, "MANIFEST")) as f:
            lines = f.read().splitlines()
        self.res["bundle"] = [l for l in lines if l.split(" ", 1)[0] in ("COMMIT", "BUILT", "SIZE", "GLIBC_NEEDED")]
        self.manifest = [l.split(" ")[1:3] for l in lines if l.startswith("TEST ")]
        self.bin = os.path.join(dst, "pregate-cuda")
        rc, out, err = run([self.bin, "--help"], 30)
        if rc != 0:
            return False, f"pregate-cuda does not start (exit {rc}): {tail(err)}"
        return True, f"{len(self.manifest)} test binaries; " + "; ".join(self.res["bundle"])

    def tests(self):
        if not self.manifest:
            return False, "the bundle has no cuda test binaries"
        all_ok = True
        for binary, pkg in self.manifest:
            path = os.path.join(self.work, "bundle", binary)
            cwd = os.path.join(REPO, pkg)
            if DRY:  # no GPU: the binary starts and lists its tests
                rc, out, err = run([path, "-test.list", "."], 60, cwd=cwd)
                names = [l for l in out.splitlines() if l.strip() and not l.startswith("ok ")]
                rec = {"binary": binary, "package": pkg, "exit": rc, "listed": len(names),
                       "passed": 0, "failed": 0, "skipped": 0}
            else:
                # PREGATE_CUDA_REQUIRE: a device test that finds no GPU fails instead of skipping.
                rc, out, err = run([path, "-test.v", "-test.count=1", "-test.timeout=170s"], 180, cwd=cwd,
                                   env=dict(os.environ, PREGATE_CUDA_REQUIRE="1"))
                lines = out.splitlines()
                count = lambda tag: sum(1 for l in lines if l.lstrip().startswith(tag))
                rec = {"binary": binary, "package": pkg, "exit": rc, "passed": count("--- PASS"),
                       "failed": count("--- FAIL"), "skipped": count("--- SKIP"),
                       "skipped_tests": [l.strip() for l in lines if l.lstrip().startswith("--- SKIP")][:20],
                       "failures": [l.strip() for l in lines if l.lstrip().startswith("--- FAIL")][:20]}
            if rc != 0:
                rec["output_tail"] = tail(out + err, 2000)
                all_ok = False
            self.res["tests"].append(rec)
        return all_ok, ", ".join(f"{t['binary']}: exit {t['exit']}" for t in self.res["tests"])

    def goldens(self):
        ok_all = True
        for fx in FIXTURES:
            prompts, want = golden_prompts(fx)
            args = [self.bin, "generate", "--model", os.path.join(REPO, "testdata", fx), "--device", DEVICE,
                    "--max-new-tokens", str(len(want[0])), "-o", "json"]
            for p in prompts:
                args += ["--prompt-ids", " ".join(map(str, p))]
            rc, out, err = run(args, 120)
            rec = {"fixture": fx, "prompts": len(prompts), "exit": rc, "ids_exact": False}
            if rc == 0:
                got = json.loads(out)
                ids = [r["generated_ids"] for r in got["results"]]
                rec["ids_exact"] = ids == want
                rec["decode_tokens_per_second"] = got["stats"].get("decode_tokens_per_second")
                rec["device"] = got["stats"].get("device")
                if ids != want:
                    rec["got"], rec["want"] = ids, want
            else:
                rec["error"] = cause(err)
            ok_all = ok_all and rec["ids_exact"]
            self.res["goldens"].append(rec)
        return ok_all, ", ".join(f"{g['fixture']}: {'exact' if g['ids_exact'] else 'MISMATCH'}" for g in self.res["goldens"])

    def cluster_one(self, fx, mode):
        prompts, want = golden_prompts(fx)
        data = os.path.join(self.work, f"up-{fx}-{mode}")
        os.makedirs(data)
        logf = open(os.path.join(data, "up.log"), "w")
        args = [self.bin, "up", "--model", os.path.join(REPO, "testdata", fx), "--mode", mode, "--device", DEVICE,
                "--data-dir", data, "--http", "127.0.0.1:0", "--expert-cache", "256MiB", "--log-level", "warn"]
        log("$ " + " ".join(args))
        start = time.monotonic()
        p = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT)
        rec = {"fixture": fx, "mode": mode, "ids_exact": False}
        try:
            cf_path = os.path.join(data, "cluster.json")
            while not os.path.exists(cf_path):
                if p.poll() is not None:
                    raise RuntimeError(f"pregate up exited {p.returncode}")
                if time.monotonic() - start > 90:
                    raise RuntimeError("pregate up not ready within 90 s")
                time.sleep(0.2)
            time.sleep(0.2)  # the file is written whole, then closed
            with open(cf_path) as f:
                cf = json.load(f)
            rec["ready_seconds"] = round(time.monotonic() - start, 1)
            got = []
            for prompt in prompts:
                body = json.dumps({"model": cf["model"], "prompt": prompt, "max_tokens": len(want[0]),
                                   "temperature": 0, "return_token_ids": True}).encode()
                req = urllib.request.Request(f"http://{cf['worker_http']}/v1/completions", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=60) as resp:
                    got.append(json.load(resp)["choices"][0]["token_ids"])
            rec["ids_exact"] = got == want
            if got != want:
                rec["got"], rec["want"] = got, want
        except Exception as e:
            rec["error"] = f"{e}"
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            logf.close()
            rec["exit"] = p.returncode
            rec["seconds"] = round(time.monotonic() - start, 1)
            if "error" in rec or not rec["ids_exact"]:
                with open(os.path.join(data, "up.log")) as f:
                    rec["log_tail"] = tail(f.read(), 1500)
            shutil.rmtree(data, ignore_errors=True)
        self.res["cluster"].append(rec)
        return rec["ids_exact"]

    def cluster(self):
        runs = [(fx, m) for fx in ("switch-tiny", "mixtral-tiny") for m in MODES] + [("switch-tiny-pregated", "pregated")]
        ok = True
        for fx, m in runs:
            if elapsed() > BUDGET - 200:  # leave the benchmarks their time
                self.res["cluster"].append({"fixture": fx, "mode": m, "ids_exact": False, "error": "skipped: time budget"})
                ok = False
                continue
            ok = self.cluster_one(fx, m) and ok
        return ok, ", ".join(f"{c['fixture']}/{c['mode']}: {'exact' if c['ids_exact'] else 'FAIL'}" for c in self.res["cluster"])

    def device(self):
        d = self.res["device_bench"]
        if DRY:
            shapes, copy_bytes, extra = "256x128:f32,128x256:bf16", 4 << 20, ["--rounds", "1", "--min-seconds", "0.02"]
        else:
            shapes, copy_bytes, extra = ("3072x768:f32,768x3072:f32,14336x4096:bf16,4096x14336:bf16",
                                         256 << 20, ["--rounds", "3", "--min-seconds", "0.2"])
        rc, out, err = run([self.bin, "bench", "device", "--device", DEVICE, "--shapes", shapes,
                            "--copy-bytes", str(copy_bytes), "-o", "json"] + extra, 120)
        if rc != 0:
            d["error"] = cause(err)
            return False, f"pregate bench device exited {rc}: {cause(err, 300)}"
        d["pregate"] = json.loads(out)
        torch_dev = "cpu" if DRY else "cuda:" + DEVICE.split(":")[1] if ":" in DEVICE else "cuda"
        rc, out, err = run([sys.executable, "-c", TORCH_BENCH, json.dumps(
            {"device": torch_dev, "shapes": shapes, "copy_bytes": copy_bytes, "dry": DRY})], 120)
        if rc == 0 and out.strip():
            d["torch"] = json.loads(out.strip().splitlines()[-1])
        else:
            d["torch"] = {"error": tail(err, 300)}
        ok = True
        if not DRY:
            ok = "error" not in d["torch"]
        return ok, f"pregate {len(d['pregate']['gemv'])} GEMV shapes + H2D; torch: {d['torch'].get('error', 'ok')}"

    def modes(self):
        if DRY:
            runs = [("switch-base-8 (dry: 4 layers, d 96, ff 128)",
                     ["--preset", "switch-base-8", "--layers", "4", "--d-model", "96", "--d-ff", "128",
                      "--tokens", "4", "--prompt-tokens", "4", "--rounds", "1", "--threads", "1"], 120),
                    ("mixtral-tiny (dry)", ["--preset", "mixtral-tiny", "--tokens", "4", "--prompt-tokens", "4",
                                            "--rounds", "1", "--threads", "1"], 120)]
        else:
            runs = [("switch-base-8 (full size, f32)", ["--preset", "switch-base-8", "--dtype", "f32", "--tokens", "32",
                                                        "--rounds", "3"], 220),
                    ("mixtral-bench (Mixtral-shaped, 8 layers, bf16)", ["--preset", "mixtral-bench", "--dtype", "bf16",
                                                                        "--tokens", "16", "--rounds", "2"], 100)]
            if os.environ.get("GPU_CHECK_MIXTRAL_FULL"):
                # Mixtral 8x7B's own expert size (352 MB bf16 blobs), 2 layers: synthesising and
                # importing 5.6 GB of experts takes minutes before the first mode runs.
                runs.append(("mixtral-8x7b shape, 2 layers, bf16", ["--preset", "mixtral-8x7b", "--layers", "2", "--dtype", "bf16",
                                                                   "--tokens", "8", "--rounds", "1"], 240))
        ok = True
        for name, args, limit in runs:
            if elapsed() + 30 > BUDGET:
                self.res["modes"].append({"model": name, "error": "skipped: time budget"})
                ok = False
                continue
            limit = min(limit, max(30, int(BUDGET - elapsed() - 10)))
            rc, out, err = run([self.bin, "bench", "--device", DEVICE, "--regime", "paper", "-o", "json"] + args, limit)
            rec = {"model": name, "args": args, "exit": rc}
            if rc == 0:
                rec["result"] = json.loads(out)
            else:
                rec["error"] = cause(err, 800)
                ok = False
            self.res["modes"].append(rec)
        return ok, ", ".join(f"{m['model']}: {'ok' if 'result' in m else m.get('error', '')[:80]}" for m in self.res["modes"])

    def run_all(self):
        self.step("machine", self.machine, 10)
        self.step("unpack", self.unpack, 10)
        if self.bin is None:
            log("no pregate-cuda: the remaining steps need it")
        else:
            self.step("tests", self.tests, 60)
            self.step("goldens", self.goldens, 20)
            self.step("cluster", self.cluster, 60)
            self.step("device", self.device, 40)
            self.step("modes", self.modes, 60)
        self.res["seconds"] = round(elapsed(), 1)
        self.res["ok"] = all(s["ok"] for s in self.res["steps"])
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "results.json"), "w") as f:
            json.dump(self.res, f, indent=2)
        md = markdown(self.res)
        with open(os.path.join(OUT, "results.md"), "w") as f:
            f.write(md)
        print(md)
        shutil.rmtree(self.work, ignore_errors=True)
        return 0 if self.res["ok"] else 1


# --- the report ----------------------------------------------------------------------------------

def cell(s, n):
    """s as one markdown table cell: one line, no pipes, at most n characters."""
    s = " ".join(str(s).split()).replace("|", "/")
    return s if len(s) <= n else s[:n - 1] + "…"


def fmt(v, spec=".2f", none="–"):
    return none if v is None else format(v, spec)


def ratio(a, b):
    return a / b if a and b else None


def goal_mark(v, goal, at_most=False):
    if v is None:
        return "–"
    met = v <= goal if at_most else v >= goal
    return ("met" if met else "NOT met") + f" ({'≤' if at_most else '≥'} {goal})"


def device_rows(db):
    """The device table's rows: (measure, pregate, torch, ratio, goal)."""
    rows = []
    p, t = db.get("pregate") or {}, db.get("torch") or {}
    bw = t.get("d2d_bytes_per_second")
    tmv = {g["shape"]: g["bytes_per_second"] for g in t.get("mv", [])}
    for g in p.get("gemv", []):
        r = ratio(g["bytes_per_second"], bw)
        rows.append((f"expert GEMV {g['shape']} ({g['weight_bytes'] / 1e6:.1f} MB)", g["bytes_per_second"] / 1e9,
                     tmv.get(g["shape"], 0) / 1e9 or None, r, goal_mark(r, GOALS["gemv_over_bandwidth"]) + " of memory bw"))
    if bw:
        rows.append(("device memory bandwidth (torch D2D copy, read+write)", None, bw / 1e9, None, ""))
    c = p.get("h2d_pinned")
    if c:
        tc = t.get("h2d_pinned_bytes_per_second")
        r = ratio(c["bytes_per_second"], tc)
        rows.append((f"pinned H2D copy ({c['bytes'] / 2**20:.0f} MiB)", c["bytes_per_second"] / 1e9,
                     (tc or 0) / 1e9 or None, r, goal_mark(r, GOALS["h2d_over_torch"]) + " of torch"))
    return rows


def mode_row(m):
    r = m.get("result") or {}
    ratios = r.get("ratios", {})
    modes = {x["mode"]: x for x in r.get("modes", [])}
    pr = ratios.get("pregated_over_resident") or None
    oi = ratios.get("ondemand_over_pregated_vs_ideal") or None
    tps = (modes.get("pregated") or {}).get("decode_tokens_per_second")
    return pr, ratios.get("ondemand_over_pregated") or None, r.get("ideal_ondemand_over_pregated"), oi, tps, modes


def table(L, title, columns, rows):
    """Appends a markdown section: title, then a table whose columns are (name, align) pairs
    (align "r" right-aligns a number column) and whose rows are lists of cells."""
    if title:
        L += ["", title]
    L += ["", "| " + " | ".join(c for c, _ in columns) + " |",
          "|" + "|".join("---:" if a == "r" else "---" for _, a in columns) + "|"]
    L += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def yes(b):
    return "yes" if b else "NO"


def markdown(res):
    L = []
    m = res["machine"]
    dev = res["device"]
    L.append(f"# GPU check{f' (DRY RUN: --device {dev}, small shapes)' if res['dry_run'] else ''} — {res['started']}")
    L.append("")
    L.append(f"- device: `{dev}`; GPUs: {', '.join(m.get('gpus', [])) or 'none listed'}")
    tv = m.get("torch", {})
    L.append(f"- host: {m.get('host', '')}, CPU {m.get('cpu', '')} ×{m.get('cpus', '')}, python {m.get('python', '')}, "
             f"torch {tv.get('version', tv.get('error', '–'))} (CUDA {tv.get('cuda', '–')}, {tv.get('device', '–')})")
    L += [f"- bundle: {b}" for b in res.get("bundle", [])]
    L.append(f"- total {res.get('seconds', 0)} s; result: **{'PASS' if res.get('ok') else 'FAIL'}**")
    table(L, "", [("step", ""), ("result", ""), ("seconds", "r"), ("detail", "")],
          [[s["name"], "ok" if s["ok"] else ("skipped" if s["detail"].startswith("skipped") else "FAILED"),
            s["seconds"], cell(s["detail"], 300)] for s in res["steps"]])
    if res["tests"]:
        table(L, "## Test binaries (conformance suite and cuda tests, on the device)",
              [("binary", ""), ("package", ""), ("exit", "r"), ("passed", "r"), ("failed", "r"), ("skipped", "r")],
              [[t["binary"], t["package"], t["exit"], f"({t.get('listed', 0)} listed)" if res["dry_run"] else t["passed"],
                t["failed"], t["skipped"]] for t in res["tests"]])
    if res["goldens"]:
        table(L, f"## Golden fixtures through `pregate-cuda generate --device {dev}` (ids exact)",
              [("fixture", ""), ("prompts", "r"), ("ids exact", ""), ("decode tokens/s", "r")],
              [[g["fixture"], g["prompts"], yes(g["ids_exact"]), fmt(g.get("decode_tokens_per_second"), ".1f")]
               for g in res["goldens"]])
    if res["cluster"]:
        table(L, f"## One-process cluster: `pregate-cuda up --device {dev}`, every mode (ids exact)",
              [("fixture", ""), ("mode", ""), ("ids exact", ""), ("ready s", "r"), ("total s", "r"), ("note", "")],
              [[c["fixture"], c["mode"], yes(c["ids_exact"]), c.get("ready_seconds", "–"), c.get("seconds", "–"),
                cell(c.get("error", ""), 120)] for c in res["cluster"]])
    db = res.get("device_bench") or {}
    if db:
        table(L, "## Device: expert GEMV and pinned host-to-device copies against torch",
              [("measure", ""), ("pregate GB/s", "r"), ("torch GB/s", "r"), ("ratio", "r"), ("goal", "")],
              [[name, fmt(p, ".1f"), fmt(t, ".1f"), fmt(r), g] for name, p, t, r, g in device_rows(db)])
        if "error" in (db.get("torch") or {}):
            L.append(f"\ntorch: {cell(db['torch']['error'], 300)}")
    if res["modes"]:
        rows = []
        for mr in res["modes"]:
            if "result" not in mr:
                rows.append([mr["model"], cell(mr.get("error", ""), 150), "", "", "", "", ""])
                continue
            pr, op, ideal, oi, tps, _ = mode_row(mr)
            rows.append([mr["model"], f"{fmt(pr, '.3f')} ({goal_mark(pr, GOALS['pregated_over_resident'], True)})",
                         fmt(op, ".3f"), fmt(ideal, ".3f"), f"{fmt(oi, '.3f')} ({goal_mark(oi, GOALS['ondemand_over_ideal'])})",
                         fmt(tps, ".1f"), fmt(ratio(tps, PAPER_TOKENS_PER_SECOND))])
        table(L, f"## Pre-gated MoE modes: `pregate-cuda bench --device {dev} --regime paper`",
              [("model", ""), ("pregated/resident", "r"), ("ondemand/pregated", "r"), ("ideal bound", "r"),
               ("ondemand/pregated ÷ ideal", "r"), ("pregated decode tok/s", "r"), ("÷ paper's 112", "r")], rows)
        table(L, "Per mode (median round):",
              [("model", ""), ("mode", ""), ("decode tok/s", "r"), ("block p50 ms", "r"), ("stall fraction", "r"), ("recall", "r")],
              [[mr["model"], x["mode"], fmt(x.get("decode_tokens_per_second"), ".1f"),
                fmt((x.get("block_latency_seconds_p50") or 0) * 1e3, ".3f"), fmt(x.get("stall_fraction"), ".3f"),
                fmt(x.get("recall"), ".3f")]
               for mr in res["modes"] for x in (mr.get("result") or {}).get("modes", [])])
        notes = [f"- {mr['model']}: {n}" for mr in res["modes"] for n in (mr.get("result") or {}).get("notes", [])]
        if notes:
            L += ["", "Notes of `pregate bench`:", ""] + notes
    L.append("")
    return "\n".join(L)


# --- torch (a subprocess: an import failure or a CUDA error stays there) ---------------------------

TORCH_INFO = r"""
import json
try:
    import torch
    d = {"version": torch.__version__, "cuda": torch.version.cuda, "available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        d["device"] = torch.cuda.get_device_name(0)
    print(json.dumps(d))
except ImportError as e:
    print(json.dumps({"error": "torch not installed: %s" % e}))
"""

TORCH_BENCH = r"""
import json, sys, time
cfg = json.loads(sys.argv[1])
try:
    import torch
except ImportError as e:
    print(json.dumps({"error": "torch not installed: %s" % e}))
    sys.exit(0)
dev = torch.device(cfg["device"])
cuda = dev.type == "cuda"
min_s = 0.02 if cfg["dry"] else 0.2

def timed(fn, rounds=3):
    fn()
    if cuda: torch.cuda.synchronize()
    iters, best = 1, None
    r = 0
    while r < rounds:
        t = time.perf_counter()
        for _ in range(iters): fn()
        if cuda: torch.cuda.synchronize()
        el = time.perf_counter() - t
        if el < min_s:
            iters = int(iters * min(100, 1.5 * min_s / max(el, 1e-9))) + 1
            continue
        per = el / iters
        best = per if best is None else min(best, per)
        r += 1
    return best

out = {"device": str(dev), "mv": []}
n = (64 << 20) if cfg["dry"] else (1 << 30)  # bytes of the D2D copy
src = torch.empty(n, dtype=torch.uint8, device=dev).fill_(1)
dst = torch.empty_like(src)
per = timed(lambda: dst.copy_(src))
out["d2d_bytes_per_second"] = 2 * n / per  # read + write
del src, dst
for s in cfg["shapes"].split(","):
    dims, dt = s.split(":")
    rows, cols = map(int, dims.split("x"))
    dtype = torch.float32 if dt == "f32" else torch.bfloat16
    w = torch.rand(rows, cols, device=dev).to(dtype)
    x = torch.rand(cols, device=dev).to(dtype)
    per = timed(lambda: torch.mv(w, x))
    b = w.numel() * w.element_size()
    out["mv"].append({"shape": s, "weight_bytes": b, "seconds_per_call": per, "bytes_per_second": b / per})
    del w, x
if cuda:
    cb = cfg["copy_bytes"]
    host = torch.empty(cb, dtype=torch.uint8, pin_memory=True).fill_(1)
    bufs = [torch.empty(cb, dtype=torch.uint8, device=dev) for _ in range(4)]
    i = [0]
    def h2d():
        bufs[i[0] % 4].copy_(host, non_blocking=True); i[0] += 1
    per = timed(h2d)
    out["h2d_pinned_bytes_per_second"] = cb / per
print(json.dumps(out))
"""

if __name__ == "__main__":
    sys.exit(Check().run_all())
