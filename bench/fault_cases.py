"""Issue 10's cases, run through the command-line programs of one code tree: exit code and first line.

    python bench/fault_cases.py --code /path/to/a/checkout --work /tmp/cases [--json out.json]

Runs every case on a small synthetic set (built under --work), with the programs of --code
(``PYTHONPATH=--code``), and prints a table: case, exit code, first line printed (the first
``error:`` line, the last line of a traceback, or what the case looks for).  Run it once on the
code before a change and once after, to compare.  Case 1 mounts a tmpfs (root only; skipped otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
LOG_LINE = re.compile(r"^(\d\d:\d\d:\d\d )?(INFO|DEBUG|WARNING) ")


def first_line(text: str, want: str | None = None) -> str:
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    if want:
        hits = [ln for ln in lines if want in ln]
        if hits:
            return hits[0]
    if any(ln.startswith("Traceback") for ln in lines):
        return "Traceback ... " + lines[-1]
    for ln in lines:
        if ln.startswith("error:") or ln.startswith("Error:"):
            return ln
    rest = [ln for ln in lines if not LOG_LINE.match(ln) and "it/s]" not in ln and "step/s" not in ln
            and "img/s" not in ln and not ln.startswith(("precompute", "epoch", "query", "gallery", "verify", "0%"))]
    if rest:
        return rest[0]
    logged = [ln for ln in lines if LOG_LINE.match(ln)]
    return (logged[-1:] or lines or [""])[0]  # a run that went through: its last log line


class Cases:
    def __init__(self, code: Path, work: Path) -> None:
        self.code, self.work = code, work
        self.env = {**os.environ, "PYTHONPATH": str(code), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1"}
        self.rows: list[dict] = []

    def sh(self, *args: str, want: str | None = None, timeout: float = 300, env: dict | None = None):
        r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                           env={**self.env, **(env or {})}, cwd=self.work)
        return r.returncode, first_line(r.stderr + "\n" + r.stdout, want), r.stderr + r.stdout

    def row(self, case: str, rc: int | str, line: str) -> None:
        self.rows.append({"case": case, "rc": rc, "first_line": line[:220]})
        print(f"{case:44s} rc={rc!s:4s} {line[:220]}", flush=True)

    # ----------------------------------------------------------------- fixtures
    def dataset(self, name: str, ids: int = 8) -> Path:
        root = self.work / name
        if root.exists():
            shutil.rmtree(root)
        subprocess.run([PY, "-c", "import sys; from pathlib import Path; from data.synthetic import generate; "
                        f"generate(Path(sys.argv[1]) / 'synthetic', num_ids={ids}, num_cameras=2, seed=0, "
                        "preview=False, workers=1, progress=False)", str(root)], env=self.env, check=True)
        return root

    def precompute(self, root: Path, *extra: str, want: str | None = None):
        return self.sh(PY, "-m", "precompute", "run", "--dataset", "synthetic", "--root", root, "--estimator",
                       "synthetic", "--shard-size", "20", *extra, want=want)

    def train(self, root: Path, run: str, *extra: str, want: str | None = None, runs: str = "runs"):
        return self.sh(PY, "-m", "train", "--dataset", "synthetic", "--root", root, "--preset", "tiny", "--run", run,
                       "--runs-dir", self.work / runs, "--workers", "0", "--device", "cpu", *extra, want=want)

    def evaluate(self, root: Path, run: str, *extra: str, want: str | None = None, dataset: str = "synthetic"):
        return self.sh(PY, "-m", "evaluate", "run", "--run", run, "--runs-dir", self.work / "runs", "--dataset",
                       dataset, "--root", root, "--queries", "0", *extra, want=want)

    # ----------------------------------------------------------------- cases
    def run_all(self, only: str | None = None) -> None:
        if only:
            import inspect

            method = getattr(self, only)
            if inspect.signature(method).parameters:
                base = self.dataset("base")
                self.precompute(base)
                method(base)
            else:
                method()
            return
        base = self.dataset("base")
        self.precompute(base)
        rc, line, _ = self.train(base, "done", "--max-steps", "2")
        self.case1()
        self.case2(base)
        self.case3()
        self.case4(base)
        self.case5(base)
        self.case6()
        self.case7()
        self.case8(base)
        self.tracebacks(base)

    def case1(self) -> None:
        mnt = self.work / "tmpfs"
        mnt.mkdir(exist_ok=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)]).returncode:
            self.row("1 disk full (tmpfs)", "-", "skipped: cannot mount a tmpfs")
            return
        try:
            src = self.dataset("full-src")
            (mnt / "root").mkdir()
            (mnt / "root" / "synthetic").symlink_to(src / "synthetic")
            rc, line, _ = self.precompute(mnt / "root", "--compression", "none")
            self.row("1 disk full: precompute run", rc, line)
            subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
            rc, line, _ = self.precompute(mnt / "root", "--compression", "none", want="store complete")
            self.row("1 disk full: rerun after enlarging", rc, line)
            rc, line, _ = self.sh(PY, "-m", "precompute", "inspect", "--dataset", "synthetic", "--root", mnt / "root",
                                  "--estimator", "synthetic", "--verify", want="verify")
            self.row("1 disk full: inspect --verify", rc, line)
            rc, line, _ = self.sh(PY, "-c", "import sys, numpy as np; from data.store import DSAPStore, store_dir; "
                                  "s = DSAPStore(store_dir(sys.argv[1], 'synthetic', 'synthetic')); "
                                  "print('all-zero keys:', sum(int(not s.get(k).any()) for k in s.keys))",
                                  mnt / "root", want="all-zero")
            self.row("1 disk full: keys all zeros after rerun", rc, line)
        finally:
            subprocess.run(["umount", str(mnt)])

    def case2(self, base: Path) -> None:
        root = self.work / "flip"
        shutil.copytree(base, root, symlinks=True)
        shard = root / "dsap/synthetic/synthetic/shard-00000.h5"
        with open(shard, "r+b") as f:
            f.seek(shard.stat().st_size // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 1]))
        rc, line, _ = self.train(root, "flip", "--max-steps", "1")
        self.row("2 bit flip in a shard: train", rc, line)
        rc, line, _ = self.precompute(root, want="computed")
        self.row("2 bit flip in a shard: precompute run", rc, line if "nothing to do" not in _ else "nothing to do")
        shard.unlink()
        rc, line, out = self.precompute(root, want="computed")
        self.row("2 deleted shard: precompute run", rc, line)

    def case3(self) -> None:
        root = self.dataset("stale")
        self.precompute(root)
        img = sorted((root / "synthetic" / "bounding_box_train").glob("*.jpg"))[0]
        iuv = img.with_name(img.stem + "_IUV.png")
        subprocess.run([PY, "-c", "import sys, cv2; [cv2.imwrite(p, cv2.flip(cv2.imread(p, cv2.IMREAD_UNCHANGED), 1)) "
                        "for p in sys.argv[1:]]", str(img), str(iuv)], env=self.env, check=True)
        rc, line, _ = self.train(root, "stale", "--max-steps", "1", runs="runs-stale")
        self.row("3 image+IUV changed in place: train", rc, line)
        rc, line, out = self.precompute(root, want="computed")
        self.row("3 image+IUV changed in place: precompute", rc, line if "nothing to do" not in out else "nothing to do")

    def case4(self, base: Path) -> None:
        rc, line, _ = self.train(base, "../../x4", "--max-steps", "1")
        self.row("4 train --run ../../x", rc, line)
        rc, line, _ = self.train(base, str(self.work / "abs4"), "--max-steps", "1")
        self.row("4 train --run /abs", rc, line)
        rc, line, _ = self.precompute(base, "--tag", "/../../x4")
        self.row("4 precompute --tag /../../x", rc, line)
        outside = [p for p in (self.work.parent / "x4", self.work / "abs4", base / "dsap" / "synthetic" / "synthetic-")
                   if p.exists()]
        rc, line, _ = self.sh(PY, "-m", "precompute", "run", "--dataset",
                              "folder:train_dir=synthetic/bounding_box_train,query_dir=synthetic/query,"
                              "gallery_dir=synthetic/bounding_box_test/../../../base/synthetic/bounding_box_test",
                              "--root", base, "--estimator", "synthetic")
        self.row("4 folder:gallery_dir=../.. precompute", rc, line)
        self.row("4 written outside runs/ and ROOT/dsap/", "-", ", ".join(map(str, outside)) or "nothing")

    def case5(self, base: Path) -> None:
        rc, line, _ = self.evaluate(base, "done", want="unfinished")
        self.row("5 evaluate an unfinished run", rc, line if "unfinished" in line else "(no note) " + line)
        m = json.loads((self.work / "runs/done/eval/synthetic/metrics.json").read_text())
        self.row("5 metrics.json of an unfinished run", "-", f"complete={m.get('complete', '(absent)')}")
        feats = self.work / "runs/done/eval/synthetic/features.h5"
        subprocess.run([PY, "-c", "import sys, h5py, numpy as np; f = h5py.File(sys.argv[1], 'r+'); "
                        "x = f['gallery/features'][()]; x[0, 0] = -x[0, 0] + 1; f['gallery/features'][...] = x",
                        str(feats)], env=self.env, check=True)
        rc, line, _ = self.sh(PY, "-m", "evaluate", "features", feats, want="rank")
        self.row("5 features file with a changed value", rc, line)

    def case7(self) -> None:
        root = self.dataset("lock", ids=200)
        args = [PY, "-m", "precompute", "run", "--dataset", "synthetic", "--root", root, "--estimator", "synthetic",
                "--shard-size", "5"]
        a = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env)
        folder = root / "dsap/synthetic/synthetic"
        while a.poll() is None and not list(folder.glob("shard-*.h5*")):  # the first one is writing shards
            time.sleep(0.2)
        rc, line, _ = self.sh(*args)
        a.wait(timeout=300)
        self.row("7 second precompute on one store", rc, line)
        self.row("7 first precompute (running meanwhile)", a.returncode, first_line(a.stdout.read(), "store"))

    def case6(self, tries: int = 3) -> None:
        """SIGKILL the precompute parent as soon as its two spawned workers exist; count the shards written after."""
        src = self.dataset("orphans", ids=200)
        for t in range(tries):
            root = self.work / f"orphans-{t}"
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            (root / "synthetic").symlink_to(src / "synthetic")
            p = subprocess.Popen([PY, "-m", "precompute", "run", "--dataset", "synthetic", "--root", str(root),
                                  "--estimator", "synthetic", "--shard-size", "20", "--workers", "2"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env, cwd=self.work)
            kids, end = [], time.time() + 60
            while len(kids) < 2 and time.time() < end:
                kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
                time.sleep(0.05)
            p.kill()
            p.wait()
            time.sleep(25)
            shards = len(list((root / "dsap/synthetic/synthetic").glob("shard-*.h5")))
            self.row(f"6 parent killed as workers start (try {t + 1})", p.returncode, f"{shards} of 50 shards written after")

    def _train_bg(self, base: Path, run: str, workers: str = "0"):
        return subprocess.Popen([PY, "-m", "train", "--dataset", "synthetic", "--root", str(base), "--preset", "tiny",
                                 "--run", run, "--runs-dir", str(self.work / "runs"), "--workers", workers,
                                 "--device", "cpu", "--epochs", "50"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=self.env, cwd=self.work)

    def _wait_for_steps(self, run: str, timeout: float = 120) -> None:
        log = self.work / "runs" / run / "log.jsonl"
        end = time.time() + timeout
        while time.time() < end and not (log.exists() and log.stat().st_size > 0):
            time.sleep(0.5)

    def case8(self, base: Path) -> None:
        p = self._train_bg(base, "term")
        self._wait_for_steps("term")
        p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=120)[0]
        self.row("8 SIGTERM during training", p.returncode, first_line(out, "resume"))
        p = self._train_bg(base, "wkill", workers="1")
        self._wait_for_steps("wkill")
        kids, end = [], time.time() + 60
        while not kids and p.poll() is None and time.time() < end:  # a worker lives while an epoch loads
            kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
            time.sleep(0.05)
        for k in kids:
            os.kill(int(k), signal.SIGKILL)
        out = p.communicate(timeout=120)[0]
        self.row(f"8 DataLoader worker SIGKILLed ({len(kids)} killed)", p.returncode, first_line(out))

    def tracebacks(self, base: Path) -> None:
        # a symlink loop in an image folder, every stage
        root = self.work / "loop"
        shutil.copytree(base, root, symlinks=True)
        shutil.rmtree(root / "dsap")
        loop = root / "synthetic/bounding_box_train/0001_c1s1_999999_00.jpg"
        loop.symlink_to(loop.name)
        rc, line, _ = self.precompute(root, want="fail")
        self.row("symlink loop: precompute", rc, line)
        rc, line, _ = self.train(root, "loop", "--max-steps", "1")
        self.row("symlink loop: train", rc, line)
        qloop = root / "synthetic/query/0001_c1s1_999998_00.jpg"
        qloop.symlink_to(qloop.name)
        rc, line, _ = self.evaluate(root, "done")
        self.row("symlink loop: evaluate", rc, line)
        # a non-UTF-8 file name
        root = self.work / "utf8"
        shutil.copytree(base, root, symlinks=True)
        src = next((root / "synthetic/query").glob("*.jpg"))
        os.link(os.fsencode(src), os.fsencode(root / "synthetic/query") + b"/0001_c1s1_99\xff\xfe_00.jpg")
        rc, line, _ = self.precompute(root)
        self.row("non-UTF-8 name: precompute", rc, line)
        rc, line, _ = self.evaluate(root, "done")
        self.row("non-UTF-8 name: evaluate", rc, line)
        # a 0-byte checkpoint
        (self.work / "runs/zero").mkdir(parents=True)
        (self.work / "runs/zero/checkpoint.pt").write_bytes(b"")
        rc, line, _ = self.train(base, "zero", "--max-steps", "1")
        self.row("0-byte checkpoint.pt: train", rc, line)
        # bad manifests
        for name, text in (("list", "[1, 2]"), ("no-shards", '{"format_version": 1, "size": 32}')):
            root = self.work / f"manifest-{name}"
            shutil.copytree(base, root, symlinks=True)
            (root / "dsap/synthetic/synthetic/manifest.json").write_text(text)
            rc, line, _ = self.sh(PY, "-m", "precompute", "inspect", "--dataset", "synthetic", "--root", root,
                                  "--estimator", "synthetic", "--verify")
            self.row(f"manifest {name}: inspect --verify", rc, line)
            rc, line, _ = self.train(root, f"m-{name}", "--max-steps", "1")
            self.row(f"manifest {name}: train", rc, line)
            rc, line, out = self.precompute(root, want="store complete")
            self.row(f"manifest {name}: precompute run", rc, line)
        # pids in a features file
        good = self.work / "runs/done/eval/synthetic/features.h5"
        for name, pids in (("pid > int64", "np.array([2**63 + 5] * n, np.uint64)"), ("string pids", "np.array([b'a'] * n)")):
            bad = self.work / f"features-{name.split()[0]}.h5"
            self.evaluate(base, "done")  # a fresh, intact file
            shutil.copy(good, bad)
            subprocess.run([PY, "-c", "import sys, h5py, numpy as np; f = h5py.File(sys.argv[1], 'r+'); "
                            "n = len(f['query/pids']); del f['query/pids']; "
                            f"f['query'].create_dataset('pids', data={pids})", str(bad)], env=self.env, check=True)
            rc, line, _ = self.sh(PY, "-m", "evaluate", "features", bad, want="rank")
            self.row(f"features file, {name}: evaluate", rc, line)
        # a torn last line in log.jsonl (a kill mid-write), then resume
        shutil.copytree(self.work / "runs/done", self.work / "runs/torn")
        with open(self.work / "runs/torn/log.jsonl", "ab") as f:
            f.write(b'{"step": 3, "lo\xe2\x80')
        rc, line, _ = self.train(base, "torn", "--max-steps", "3")
        self.row("torn last line in log.jsonl: resume", rc, line)
        # a duplicate record left by a kill before the first checkpoint
        (self.work / "runs/dup").mkdir()
        (self.work / "runs/dup/log.jsonl").write_text('{"step": 1, "epoch": 0, "loss": 9.0}\n')
        rc, line, _ = self.train(base, "dup", "--max-steps", "1", "--log-every", "1")
        steps = [json.loads(ln).get("step") for ln in (self.work / "runs/dup/log.jsonl").read_text().splitlines()
                 if ln.strip() and "event" not in ln]
        self.row("kill before 1st checkpoint, rerun: log steps", rc, f"steps logged: {steps}")
        # a refused checkpoint (pickled objects)
        (self.work / "runs/evil").mkdir()
        subprocess.run([PY, "-c", "import sys, torch, pathlib; torch.save({'model': {}, 'x': pathlib.Path('.')}, "
                        "sys.argv[1])", str(self.work / "runs/evil/checkpoint.pt")], env=self.env, check=True)
        rc, line, out = self.evaluate(base, "evil")
        self.row("refused checkpoint: evaluate", rc,
                 f"{len([ln for ln in out.splitlines() if ln.strip()])} lines; weights_only=False advice: "
                 f"{'weights_only=False' in out}; {line[:120]}")
        # a checkpoint holding NaN weights
        shutil.copytree(self.work / "runs/done", self.work / "runs/nan")
        subprocess.run([PY, "-c", "import sys, torch; p = sys.argv[1]; c = torch.load(p, weights_only=True); "
                        "[t.fill_(float('nan')) for t in c['model'].values() if t.is_floating_point()]; "
                        "torch.save(c, p)", str(self.work / "runs/nan/checkpoint.pt")], env=self.env, check=True)
        rc, line, _ = self.train(base, "nan", "--max-steps", "3")
        self.row("NaN-weights checkpoint: resume", rc, line)
        # a 20000x20000 PNG: peak memory of reading it
        big = self.work / "big.png"
        subprocess.run([PY, "-c", "import sys, cv2, numpy as np; cv2.imwrite(sys.argv[1], np.zeros((20000, 20000), "
                        "np.uint8))", str(big)], env=self.env, check=True)
        rc, line, out = self.sh(PY, "-c", "import sys, resource\nfrom data.io import read_image\ntry:\n    "
                                "read_image(sys.argv[1]); print('decoded')\nexcept Exception as e:\n    print('error:', e)\n"
                                "print(f'peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB')",
                                big)
        peak = first_line(out, "peak RSS")
        self.row(f"20000x20000 PNG ({big.stat().st_size / 1e6:.1f} MB): read_image", rc, f"{peak}; {line[:150]}")
        # an unreadable (0-byte) training image recorded by precompute
        root = self.work / "unreadable"
        shutil.copytree(base, root, symlinks=True)
        shutil.rmtree(root / "dsap")
        img = sorted((root / "synthetic/bounding_box_train").glob("*.jpg"))[3]
        img.write_bytes(b"")
        rc, line, _ = self.precompute(root, want="failed")
        self.row("0-byte train image: precompute", rc, line)
        rc, line, _ = self.train(root, "unreadable", "--max-steps", "50")
        self.row("0-byte train image: train", rc, line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", default=None, help="run one case method (e.g. case7)")
    args = ap.parse_args()
    if args.work.exists():
        subprocess.run(["umount", str(args.work / "tmpfs")], capture_output=True)
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    cases = Cases(args.code.resolve(), args.work.resolve())
    try:
        cases.run_all(args.only)
    finally:
        if args.json:
            args.json.write_text(json.dumps({"code": str(args.code), "load": os.getloadavg(), "rows": cases.rows},
                                            indent=2) + "\n")


if __name__ == "__main__":
    main()
