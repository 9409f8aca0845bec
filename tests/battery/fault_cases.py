"""The fault battery: hostile inputs and a flaky machine, run through the command-line programs of one code tree.

    python -m tests.battery.fault_cases --code DIR --work DIR [--json out.json] [--only GROUP ...]
    python -m tests.battery.fault_cases --table before.json after.json [--markdown out.md]

Every case runs a command of ``--code`` (``PYTHONPATH=--code``) on small synthetic data built under
``--work`` and records its exit code, the first line it printed (the first ``error:`` line, the last line
of a traceback, or what the case looks for) and an outcome:

* ``ok``: what should happen happened (a refusal is exit 2 with one sentence, a repair repairs, ...);
* ``traceback``: a traceback (or a raw library error line) reached the user;
* ``silent``: something wrong passed without a word (accepted, skipped, left behind, changed a result);
* ``wrote-outside``: a file appeared outside the folder the case works in;
* ``refused``: something right was refused; ``other``: an exit code the case did not expect; ``hang``.

Run it once on the code before a change and once after; ``--table`` prints the case -> before -> after
table and the counts.  Groups (``--only``): estimator, scan, store, paths, values, env, runs, images,
processes, kills, earlier (the cases of the earlier round: disk full, bit flips, locks, signals, ...).
The tmpfs case (disk full) and the unreadable-folder cases need root (to mount, and to run a command as
``nobody``); they are skipped otherwise.  Every command runs with ``DSA_THREADS=1`` under an address-space
limit (``--memory``, GiB), so that a case that would allocate tens of GiB fails instead of swapping.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

PY = sys.executable
LOG_LINE = re.compile(r"^(\d\d:\d\d:\d\d )?(INFO|DEBUG|WARNING) ")
OUTCOMES = ("ok", "traceback", "silent", "wrote-outside", "refused", "other", "hang", "skipped")
GROUPS = ("earlier", "estimator", "scan", "store", "paths", "values", "env", "runs", "images", "processes",
          "kills")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def first_line(text: str, want: str | None = None) -> str:
    """The line that says what happened: ``want`` when a line has it, else the last line of a traceback,
    the first ``error:`` line, the first line that is not a log or progress line, or the last log line."""
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    if want:
        hits = [ln for ln in lines if want in ln]
        if hits:
            return hits[0]
    if any(ln.startswith("Traceback") for ln in lines):
        return "Traceback ... " + lines[-1]
    for ln in lines:
        if ln.startswith(("error:", "Error:")):
            return ln
    rest = [ln for ln in lines if not LOG_LINE.match(ln) and "it/s]" not in ln and "step/s" not in ln
            and "img/s" not in ln and not ln.startswith(("precompute", "epoch", "query", "gallery", "verify", "0%",
                                                         "Usage:", "Try "))]
    if rest:
        return rest[0]
    logged = [ln for ln in lines if LOG_LINE.match(ln)]
    return (logged[-1:] or lines or [""])[0]  # a run that went through: its last log line


def traceback_in(out: str) -> bool:
    """A traceback, or a raw error line of a library (MediaPipe's protobuf mismatch, HDF5's filter stack)."""
    return ("Traceback (most recent call last)" in out or "GetPrototype" in out
            or "HDF5-DIAG" in out or re.search(r"^(LZ4|lz4|H5Z|decompressed size)", out, re.M) is not None)


def refusal(rc, out: str) -> str:
    """Expected: exit 2 with one sentence."""
    if traceback_in(out):
        return "traceback"
    if rc == 0:
        return "silent"
    return "ok" if rc == 2 and re.search(r"^(error|Error): ", out, re.M) else "other"


def success(rc, out: str) -> str:
    """Expected: exit 0."""
    if traceback_in(out):
        return "traceback"
    return "ok" if rc == 0 else "refused"


class Battery:
    def __init__(self, code: Path, work: Path, memory_gib: float = 10.0) -> None:
        self.code, self.work = code, work
        self.box = work / "box" / "inner"  # everything a case may write; an escape lands in work/ or work/box/
        self.data, self.runs = self.box / "data", self.box / "runs"
        for p in (self.data, self.runs, self.box / "cwd"):
            p.mkdir(parents=True, exist_ok=True)
        self.memory = int(memory_gib * 2**30)
        self.env = {**os.environ, "PYTHONPATH": str(code), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1", "DSA_THREADS": "1", "MPLCONFIGDIR": str(work / "mpl"),
                    "PYTHONDONTWRITEBYTECODE": "1"}
        for k in ("DSA_ROOT", "DSA_PLUGINS", "DSA_MAX_IMAGE_PIXELS"):
            self.env.pop(k, None)
        self.rows: list[dict] = []
        self.root = os.geteuid() == 0

    # ----------------------------------------------------------------- running and recording
    def _limit(self, memory: int) -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    def sh(self, *args, want: str | None = None, timeout: float = 600, env: dict | None = None,
           user: str | None = None, memory: int | None = None):
        """(exit code, first line, whole output) of a command run in the box's cwd."""
        cmd = [str(a) for a in args]
        if user == "nobody":
            cmd = NOBODY + cmd
        environ = {**self.env, **(env or {})}
        environ = {k: v for k, v in environ.items() if v is not None}
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=timeout, env=environ, cwd=self.box / "cwd",
                               preexec_fn=lambda: self._limit(memory or self.memory))
        except subprocess.TimeoutExpired as e:
            out = (e.stderr or b"").decode("utf-8", "replace") + (e.stdout or b"").decode("utf-8", "replace")
            return "timeout", first_line(out, want), out
        out = r.stderr.decode("utf-8", "replace") + "\n" + r.stdout.decode("utf-8", "replace")
        return r.returncode, first_line(out, want), out

    def _outside(self) -> set[str]:
        """Files under the work folder outside the box (and outside the battery's own folders)."""
        skip = {self.box, self.work / "mpl", self.work / "tmpfs"}
        found = set()
        for dp, dns, fns in os.walk(self.work):
            dns[:] = [d for d in dns if Path(dp, d) not in skip]
            found.update(str(Path(dp, f)) for f in fns)
            found.update(str(Path(dp, d)) for d in dns if Path(dp, d).parent != self.work)
        return found

    def case(self, group: str, name: str, run, judge=refusal, show: str | None = None) -> dict:
        """Run ``run()`` -> (rc, first line, output), judge it, check nothing was written outside the box."""
        before = self._outside()
        rc, line, out = run()
        outcome = "hang" if rc == "timeout" else judge(rc, out)
        new = sorted(self._outside() - before)
        if new:
            outcome, line = "wrote-outside", f"wrote {', '.join(new[:3])}; {line}"
        return self.row(group, name, rc, show if show is not None else line, outcome)

    def row(self, group: str, name: str, rc, line: str, outcome: str) -> dict:
        r = {"group": group, "case": name, "rc": rc, "first_line": str(line)[:240], "outcome": outcome}
        self.rows.append(r)
        print(f"[{outcome:13s}] {group:9s} {name:58s} rc={rc!s:7s} {str(line)[:160]}", flush=True)
        return r

    def skip(self, group: str, name: str, why: str) -> None:
        self.row(group, name, "-", f"skipped: {why}", "skipped")

    # ----------------------------------------------------------------- the programs
    def precompute(self, root: Path, *extra, dataset: str = "synthetic", estimator: str = "synthetic", **kw):
        return self.sh(PY, "-m", "precompute", "run", "--dataset", dataset, "--root", root, "--estimator",
                       estimator, "--shard-size", "20", *extra, **kw)

    def train(self, root: Path, run: str, *extra, dataset: str = "synthetic", runs: Path | None = None, **kw):
        return self.sh(PY, "-m", "train", "--dataset", dataset, "--root", root, "--preset", "tiny", "--run", run,
                       "--runs-dir", runs or self.runs, "--workers", "0", "--device", "cpu", *extra, **kw)

    def evaluate(self, root: Path, run: str, *extra, dataset: str = "synthetic", **kw):
        return self.sh(PY, "-m", "evaluate", "run", "--run", run, "--runs-dir", self.runs, "--dataset", dataset,
                       "--root", root, "--queries", "0", "--device", "cpu", *extra, **kw)

    def evaluate_cmd(self, command: str, *extra, **kw):
        return self.sh(PY, "-m", "evaluate", command, *extra, **kw)

    def pyc(self, code: str, *args, **kw):
        return self.sh(PY, "-c", code, *args, **kw)

    # ----------------------------------------------------------------- fixtures
    def synth(self, name: str, ids: int = 12) -> Path:
        """A synthetic dataset (Market layout with the generator's IUV files) under data/NAME/synthetic."""
        root = self.data / name
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([PY, "-c", "import sys; from pathlib import Path; from data.synthetic import generate; "
                        f"generate(Path(sys.argv[1]) / 'synthetic', num_ids={ids}, num_cameras=2, seed=0, "
                        "preview=False, workers=1, progress=False)", str(root)], env=self.env, check=True)
        return root

    def copy(self, src: Path, name: str) -> Path:
        dst = self.data / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, symlinks=True)
        return dst

    def folder_layout(self, src: Path, name: str, iuv: bool = True) -> Path:
        """The synthetic images in the one-folder-per-identity layout: ROOT/{train,query,gallery}/<pid>/*.jpg
        (with their IUV files, or without: crops of a real dataset)."""
        dst = self.data / name
        shutil.rmtree(dst, ignore_errors=True)
        for split, sub in (("bounding_box_train", "train"), ("query", "query"), ("bounding_box_test", "gallery")):
            for img in sorted((src / "synthetic" / split).glob("*.jpg")):
                folder = dst / sub / img.name[:4]
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copy2(img, folder / img.name)
                if iuv:
                    side = img.with_name(img.stem + "_IUV.png")
                    shutil.copy2(side, folder / side.name)
        return dst

    def store(self, root: Path, dataset: str = "synthetic", estimator: str = "synthetic") -> Path:
        return root / "dsap" / dataset / estimator

    # ----------------------------------------------------------------- all
    def run_all(self, only: list[str] | None = None) -> None:
        base = self.synth("base")
        self.precompute(base)
        self.train(base, "done", "--epochs", "2")  # a finished run
        self.train(base, "part", "--max-steps", "2")  # an unfinished one
        self.evaluate(base, "done")
        for group in GROUPS:
            if only and group not in only:
                continue
            getattr(self, f"group_{group}")(base)

    # ================================================================= groups
    # ----------------------------------------------------------------- 1. a wrong estimator
    def group_estimator(self, base: Path) -> None:
        g = "estimator"
        real = self.folder_layout(base, "realcrops", iuv=False)  # real crops: no ground-truth IUV beside them
        self.case(g, "real crops (folders), ESTIMATOR=synthetic: precompute",
                  lambda: self.precompute(real, dataset="folder", want="store complete"))
        self.case(g, "real crops (folders), ESTIMATOR=synthetic: train",
                  lambda: self.train(real, "realcrops", "--max-steps", "2", dataset="folder"))
        self.case(g, "real crops (folders), ESTIMATOR=synthetic: precompute again",
                  lambda: self.precompute(real, dataset="folder", want="nothing to do"))
        flat = self.copy(base, "realflat")
        for p in (flat / "synthetic").rglob("*_IUV.png"):
            p.unlink()
        self.case(g, "real crops (Market layout), ESTIMATOR=synthetic: precompute",
                  lambda: self.precompute(flat, want="store complete"))
        self.case(g, "real crops (Market layout), ESTIMATOR=synthetic: train",
                  lambda: self.train(flat, "realflat", "--max-steps", "2"))
        for rate in ("1.0", "0.97"):
            root = self.copy(base, f"miss{rate}")
            shutil.rmtree(root / "dsap")
            self.case(g, f"estimator finds nobody (-o miss={rate}): precompute",
                      lambda: self.precompute(root, "-o", f"miss={rate}", want="store complete"))
            self.case(g, f"estimator finds nobody (-o miss={rate}): train",
                      lambda: self.train(root, f"miss{rate}", "--max-steps", "2"))

    # ----------------------------------------------------------------- 2. folder scans
    def group_scan(self, base: Path) -> None:
        g = "scan"
        names = self.data / "loop-names"  # the names layout: ROOT/{train,query,gallery}/*.jpg
        for split, sub in (("bounding_box_train", "train"), ("query", "query"), ("bounding_box_test", "gallery")):
            shutil.copytree(base / "synthetic" / split, names / sub)
        (names / "train" / "loopdir").symlink_to(".")  # train/loopdir -> train
        loop = self.folder_layout(base, "loop")
        (loop / "train" / "9998").symlink_to(".")  # train/9998 -> train (named like an identity)
        first = sorted((loop / "gallery").iterdir())[0]
        (first / "up").symlink_to("..")  # gallery/<pid>/up -> gallery
        for layout, root, run in (("names", names, "loopn"), ("per-identity", loop, "loop")):
            what = f"directory loop ({layout} layout)"
            self.case(g, f"{what}: data stats",
                      lambda: self.sh(PY, "-m", "data", "stats", "--dataset", "folder", "--root", root))
            self.case(g, f"{what}: precompute", lambda: self.precompute(root, dataset="folder", want="store complete"))
            self.case(g, f"{what}: train", lambda: self.train(root, run, "--max-steps", "1", dataset="folder"))
            self.case(g, f"{what}: evaluate", lambda: self.evaluate(root, "done", dataset="folder"))
        self.case(g, "directory loop in a search gallery: search",
                  lambda: self.evaluate_cmd("search", "--run", "done", "--runs-dir", self.runs, "--query",
                                            loop / "query", "--gallery", loop / "gallery", "--no-pictures",
                                            "--device", "cpu", "--out", self.box / "search-loop"))
        twice = self.folder_layout(base, "twice")
        (twice / "train" / "9999").symlink_to(sorted((twice / "train").iterdir())[0].name)  # reached twice
        self.case(g, "a folder reached twice through a link: data stats",
                  lambda: self.sh(PY, "-m", "data", "stats", "--dataset", "folder", "--root", twice))

        if not self.root:
            for what in ("data stats", "data stats --check-images", "precompute", "search"):
                self.skip(g, f"unreadable folder: {what}", "needs root to run a command as nobody")
        else:
            unread = self.folder_layout(base, "unreadable")
            shutil.rmtree(unread / "dsap", ignore_errors=True)
            for p in [unread, *unread.rglob("*")]:
                p.chmod(0o777 if p.is_dir() else 0o666)
            for p in (self.work, self.work / "box", self.box, self.data, self.runs, self.box / "cwd"):
                p.chmod(0o777)
            hidden = sorted((unread / "train").iterdir())[0]
            hidden.chmod(0o000)
            ghidden = sorted((unread / "gallery").iterdir())[0]
            ghidden.chmod(0o000)
            (self.work / "mpl").mkdir(exist_ok=True)
            (self.work / "mpl").chmod(0o777)
            self.case(g, "unreadable folder (as nobody): data stats",
                      lambda: self.sh(PY, "-m", "data", "stats", "--dataset", "folder", "--root", unread,
                                      user="nobody"))
            self.case(g, "unreadable folder (as nobody): data stats --check-images",
                      lambda: self.sh(PY, "-m", "data", "stats", "--dataset", "folder", "--root", unread,
                                      "--check-images", user="nobody", want="unreadable"))
            self.case(g, "unreadable folder (as nobody): precompute",
                      lambda: self.precompute(unread, dataset="folder", user="nobody", want="store complete"))
            self.case(g, "unreadable folder in a search gallery (as nobody)",
                      lambda: self.evaluate_cmd("search", "--run", self.runs / "done", "--query", unread / "query",
                                                "--gallery", unread / "gallery", "--no-pictures", "--no-cache",
                                                "--device", "cpu", "--out", self.box / "search-unread",
                                                user="nobody"))
            hidden.chmod(0o755)
            ghidden.chmod(0o755)

        dang = self.copy(base, "dangling")
        link = dang / "synthetic" / "bounding_box_train" / "0001_c1s1_999999_00.jpg"
        link.symlink_to("no-such-file.jpg")
        shutil.rmtree(dang / "dsap")
        self.case(g, "dangling link (Market layout): data stats --check-images",
                  lambda: self.sh(PY, "-m", "data", "stats", "--dataset", "synthetic", "--root", dang,
                                  "--check-images", want="unreadable"),
                  judge=lambda rc, out: "traceback" if traceback_in(out) else
                  ("ok" if rc == 1 and "1 unreadable" in out else "silent"))
        self.case(g, "dangling link (Market layout): precompute",
                  lambda: self.precompute(dang, want="999999"),
                  judge=lambda rc, out: "traceback" if traceback_in(out) else
                  ("ok" if "999999" in out else "silent"))
        self.case(g, "dangling link (Market layout): train",
                  lambda: self.train(dang, "dangling", "--max-steps", "1"))
        dfold = self.folder_layout(base, "dangling-folders")
        first = sorted((dfold / "train").iterdir())[0]
        (first / f"{first.name}_c1s1_999999_00.jpg").symlink_to("no-such-file.jpg")
        self.case(g, "dangling link (folder layout): data stats --check-images",
                  lambda: self.sh(PY, "-m", "data", "stats", "--dataset", "folder", "--root", dfold,
                                  "--check-images", want="unreadable"),
                  judge=lambda rc, out: "traceback" if traceback_in(out) else
                  ("ok" if rc == 1 and "1 unreadable" in out else "silent"))

        gal = self.data / "gallery-dangling"
        shutil.copytree(base / "synthetic" / "bounding_box_test", gal)
        (gal / "zz-missing.jpg").symlink_to("no-such-file.jpg")
        self.case(g, "dangling link in a search gallery",
                  lambda: self.evaluate_cmd("search", "--run", "done", "--runs-dir", self.runs, "--query",
                                            base / "synthetic" / "query", "--gallery", gal, "--no-pictures",
                                            "--device", "cpu", "--out", self.box / "search-dangling"))
        gal8 = self.data / "gallery-utf8"
        shutil.copytree(base / "synthetic" / "bounding_box_test", gal8)
        src = sorted(gal8.glob("*.jpg"))[0]
        os.link(os.fsencode(src), os.fsencode(gal8) + b"/0001_c1s1_99\xff\xfe_00.jpg")
        self.case(g, "non-UTF-8 file name in a search gallery",
                  lambda: self.evaluate_cmd("search", "--run", "done", "--runs-dir", self.runs, "--query",
                                            base / "synthetic" / "query", "--gallery", gal8, "--no-pictures",
                                            "--device", "cpu", "--out", self.box / "search-utf8"))

    # ----------------------------------------------------------------- 3. store: "up to date" as training sees it
    def group_store(self, base: Path) -> None:
        g = "store"

        def repaired(rc, out):
            if traceback_in(out):
                return "traceback"
            return "silent" if "nothing to do" in out else ("ok" if rc == 0 else "other")

        def damage_rewritten(root: Path) -> None:  # a damaged shard whose .sha256 was rewritten to match
            shard = self.store(root) / "shard-00001.h5"
            flip_byte(shard)
            import hashlib

            (self.store(root) / "shard-00001.sha256").write_text(hashlib.sha256(shard.read_bytes()).hexdigest() + "\n")

        def edit_manifest_checksum(root: Path) -> None:
            m = json.loads((self.store(root) / "manifest.json").read_text())
            m["shards"][0]["sha256"] = "0" * 64
            (self.store(root) / "manifest.json").write_text(json.dumps(m))

        def drop_shard(root: Path) -> None:
            m = json.loads((self.store(root) / "manifest.json").read_text())
            gone = m["shards"].pop()
            m["num_images"] -= gone["num_images"]
            (self.store(root) / "manifest.json").write_text(json.dumps(m))

        for what, damage in (("damaged shard, .sha256 rewritten", damage_rewritten),
                             ("manifest checksum edited", edit_manifest_checksum),
                             ("shard dropped from the manifest", drop_shard)):
            root = self.copy(base, "store-" + what.split()[0] + what.split()[1])
            damage(root)
            self.case(g, f"{what}: precompute run", lambda: self.precompute(root, want="computed"), judge=repaired)
            self.case(g, f"{what}: then train", lambda: self.train(root, "st-" + what.split()[0], "--max-steps", "1"),
                      judge=success)

        root = self.copy(base, "store-tmpleft")
        stale = self.store(root) / ".shard-00000.sha256.tmp-999999-deadbeef"
        stale.write_text("x")
        flip_byte(self.store(root) / "shard-00000.h5")  # something to recompute
        self.case(g, "a stale .shard-N.sha256.tmp-* after a completed rerun",
                  lambda: self.precompute(root, want="computed"),
                  judge=lambda rc, out: "traceback" if traceback_in(out) else ("silent" if stale.exists() else "ok"),
                  show=None)

        root = self.copy(base, "store-lz4")
        shard = self.store(root) / "shard-00002.h5"
        data = bytearray(shard.read_bytes())
        for i in range(int(len(data) * 0.4), int(len(data) * 0.4) + 64):  # inside an LZ4 chunk of the dsap array
            data[i] ^= 0x55
        shard.write_bytes(bytes(data))
        self.case(g, "a damaged LZ4 chunk: inspect --verify",
                  lambda: self.sh(PY, "-m", "precompute", "inspect", "--dataset", "synthetic", "--root", root,
                                  "--estimator", "synthetic", "--verify", want="FAILED"),
                  judge=lambda rc, out: "traceback" if traceback_in(out) else ("ok" if rc == 1 else "silent"))

    # ----------------------------------------------------------------- 4. names and paths
    def group_paths(self, base: Path) -> None:
        g = "paths"
        fold = self.folder_layout(base, "regex", iuv=True)
        # used raw as a path component, runs/compare/<spec>/ or runs/done/eval/<spec>/ would climb up to work/box/,
        # outside the box and inside the folder the battery watches
        spec = r"folder:pattern=(?P<pid>\d+)_c(?P<camid>\d+)|/../../../../esc-compare"
        self.case(g, "evaluate with a dataset spec whose regex has slashes",
                  lambda: self.evaluate(fold, "done", dataset=spec), judge=success)
        self.case(g, "compare with a dataset spec whose regex has slashes",
                  lambda: self.evaluate_cmd("compare", "done", "--dataset", spec, "--runs-dir", self.runs),
                  judge=success)
        self.case(g, "compare --setting ../../x",
                  lambda: self.evaluate_cmd("compare", "done", "--dataset", "synthetic", "--runs-dir", self.runs,
                                            "--setting", "../../../../x"))
        self.case(g, "train --run ../../x", lambda: self.train(base, "../../x4", "--max-steps", "1"))
        self.case(g, "train --run /abs", lambda: self.train(base, str(self.work / "abs4"), "--max-steps", "1"))
        self.case(g, "train --set data.estimator=../x",
                  lambda: self.train(base, "est-path", "--max-steps", "1", "--set", "data.estimator=../../../x"))
        self.case(g, "train --set data.tag=../x",
                  lambda: self.train(base, "tag-path", "--max-steps", "1", "--set", "data.tag=../../../x"))
        self.case(g, "precompute --tag /../../x", lambda: self.precompute(base, "--tag", "/../../x4"))
        self.case(g, "precompute --estimator ../x", lambda: self.precompute(base, estimator="../../../x"))
        self.case(g, "precompute folder:gallery_dir=../..",
                  lambda: self.precompute(base, dataset="folder:train_dir=synthetic/bounding_box_train,"
                                          "query_dir=synthetic/query,gallery_dir=synthetic/../../../x"))
        self.case(g, "train --set pretrained= (empty)",
                  lambda: self.train(base, "pre-empty", "--max-steps", "1", "--set", "pretrained="))

    # ----------------------------------------------------------------- 5. values of options and --set
    def group_values(self, base: Path) -> None:
        g = "values"
        sets = ["recipe.lr_peak=nan", "recipe.lr_decay_step=0", "recipe.optimizer=foo", "recipe.label_smoothing=5",
                "recipe.random_erasing=2", "recipe.flip=2", "recipe.pad=-5", "recipe.weight_decay=-1",
                "model.height=0", "model.base_width=0", "model.last_stride=0", "model.classifier_dim=0",
                "recipe.epochs=0", "recipe.epochs=-2", "recipe.warmup_epochs=-1", "recipe.margin=-1",
                "recipe.batch_p=1", "model.dsap_size=3", "recipe.lr_decay_gamma=0", "model.width=17"]
        for i, s in enumerate(sets):
            self.case(g, f"train --set {s}", lambda: self.train(base, f"set{i}", "--max-steps", "1", "--set", s))
        for seed in ("-1", "99999999999999999999999"):
            self.case(g, f"train --seed {seed}", lambda: self.train(base, "seed", "--max-steps", "1", "--seed", seed))
        self.case(g, "train --epochs 0 (run already trained)", lambda: self.train(base, "done", "--epochs", "0"))
        for extra in (["--size", "4096", "--tag", "s4096"], ["--size", "12", "--tag", "s12"],
                      ["--batch-size", "0", "--tag", "b0"], ["--batch-size", "-3", "--tag", "bm3"],
                      ["--workers", "0", "--tag", "w0"], ["--shard-size", "0", "--tag", "sh0"],
                      ["--threads", "-1", "--tag", "t1"]):
            self.case(g, "precompute " + " ".join(extra[:2]), lambda: self.precompute(base, *extra))
        self.case(g, "inspect --montage-random -2",
                  lambda: self.sh(PY, "-m", "precompute", "inspect", "--dataset", "synthetic", "--root", base,
                                  "--estimator", "synthetic", "--montage-random", "-2"))
        for opset in ("5", "99"):
            self.case(g, f"export --opset {opset}",
                      lambda: self.evaluate_cmd("export", "--run", "done", "--runs-dir", self.runs, "--opset", opset,
                                                "--out", self.box / f"opset{opset}.onnx"))
        for extra in (["--height", "100000"], ["--height", "8"], ["--ids", "1"], ["--cameras", "12"],
                      ["--workers", "-1"], ["--width", "100000"]):
            self.case(g, "data synth " + " ".join(extra),
                      lambda: self.sh(PY, "-m", "data", "synth", "--root", self.data / "synth-values", "--ids", "4",
                                      "--workers", "1", "--no-preview", *extra, memory=3 * 2**30, timeout=300))
        self.case(g, "data stats --workers -1",
                  lambda: self.sh(PY, "-m", "data", "stats", "--dataset", "synthetic", "--root", base,
                                  "--check-images", "--workers", "-1"))
        self.case(g, "search --top 0",
                  lambda: self.evaluate_cmd("search", "--run", "done", "--runs-dir", self.runs, "--query",
                                            base / "synthetic" / "query", "--gallery",
                                            base / "synthetic" / "bounding_box_test", "--top", "0"))
        self.case(g, "evaluate run --max-memory 0", lambda: self.evaluate(base, "done", "--max-memory", "0"))

    # ----------------------------------------------------------------- 6. environment variables
    def group_env(self, base: Path) -> None:
        g = "env"
        cases = [("DSA_THREADS", "abc"), ("DSA_THREADS", "-2"), ("DSA_THREADS", "1.5"),
                 ("DSA_MAX_IMAGE_PIXELS", "abc"), ("DSA_MAX_IMAGE_PIXELS", "0"), ("DSA_MAX_IMAGE_PIXELS", "-5"),
                 ("DSA_PLUGINS", "not a module"), ("DSA_PLUGINS", "badplugin")]
        (self.box / "cwd" / "badplugin.py").write_text("this is not python\n")
        for var, value in cases:
            self.case(g, f"{var}={value}: precompute",
                      lambda: self.precompute(base, "--tag", "env", env={var: value}))
            self.case(g, f"{var}={value}: train",
                      lambda: self.train(base, "env", "--max-steps", "1", env={var: value}))
        self.case(g, "DSA_ROOT=/nonexistent: data stats",
                  lambda: self.sh(PY, "-m", "data", "stats", "--dataset", "synthetic",
                                  env={"DSA_ROOT": str(self.box / "nonexistent")}))

    # ----------------------------------------------------------------- 7. runs, checkpoints, evaluations
    def group_runs(self, base: Path) -> None:
        g = "runs"
        (self.runs / "ckdir" / "checkpoint.pt").mkdir(parents=True)
        self.case(g, "checkpoint.pt is a folder: train", lambda: self.train(base, "ckdir", "--max-steps", "1"))
        self.case(g, "checkpoint.pt is a folder: evaluate", lambda: self.evaluate(base, "ckdir"))
        (self.box / "outdir.onnx").mkdir(exist_ok=True)
        self.case(g, "export --out is a folder",
                  lambda: self.evaluate_cmd("export", "--run", "done", "--runs-dir", self.runs, "--out",
                                            self.box / "outdir.onnx"))
        (self.box / "search-out-file").write_text("x")
        self.case(g, "search --out is a file",
                  lambda: self.evaluate_cmd("search", "--run", "done", "--runs-dir", self.runs, "--query",
                                            base / "synthetic" / "query", "--gallery",
                                            base / "synthetic" / "bounding_box_test", "--out",
                                            self.box / "search-out-file", "--device", "cpu"))
        empty = self.data / "empty"
        empty.mkdir(exist_ok=True)
        self.case(g, "a failed start leaves no run folder",
                  lambda: self.train(empty, "failstart", "--max-steps", "1"),
                  judge=lambda rc, out: "traceback" if traceback_in(out) else
                  ("silent" if (self.runs / "failstart").exists() else refusal(rc, out)))
        for name, text in (("truncated", '{"rank1": 0.5, "mAP"'), ("wrongly typed", '{"rank1": "high", "mAP": [1]}'),
                           ("a list", "[1, 2, 3]")):
            run = self.runs / f"m-{name.split()[-1]}"
            shutil.copytree(self.runs / "done", run, dirs_exist_ok=True)
            (run / "eval" / "synthetic" / "metrics.json").write_text(text)
            self.case(g, f"metrics.json {name}: compare",
                      lambda: self.evaluate_cmd("compare", "done", run.name, "--dataset", "synthetic", "--runs-dir",
                                                self.runs))
        self.evaluate(base, "part")
        self.evaluate(base, "done", "--rerank")

        def says_which(rc, out):  # the default evaluation kept (not overwritten by --rerank), and compare names it
            if traceback_in(out):
                return "traceback"
            default = self.runs / "done" / "eval" / "synthetic" / "metrics.json"
            kept = default.is_file() and not json.loads(default.read_text()).get("rerank")
            if rc == 0:
                return "ok" if kept and re.search(r"read \S*metrics\.json", out) else "silent"
            return "other"

        self.case(g, "compare after an evaluation with other settings says which it reads",
                  lambda: self.evaluate_cmd("compare", "done", "part", "--dataset", "synthetic", "--runs-dir",
                                            self.runs, want="metrics.json"), judge=says_which)
        nan = self.runs / "nan"
        shutil.copytree(self.runs / "done", nan, dirs_exist_ok=True)
        subprocess.run([PY, "-c", "import sys, torch; p = sys.argv[1]; c = torch.load(p, weights_only=True); "
                        "[t.fill_(float('nan')) for t in c['model'].values() if t.is_floating_point()]; "
                        "torch.save(c, p)", str(nan / "checkpoint.pt")], env=self.env, check=True)
        shutil.rmtree(nan / "search-cache", ignore_errors=True)
        self.case(g, "NaN weights: export",
                  lambda: self.evaluate_cmd("export", "--run", "nan", "--runs-dir", self.runs, "--no-check"))
        self.case(g, "NaN weights: search",
                  lambda: self.evaluate_cmd("search", "--run", "nan", "--runs-dir", self.runs, "--query",
                                            base / "synthetic" / "query", "--gallery",
                                            base / "synthetic" / "bounding_box_test", "--no-pictures",
                                            "--device", "cpu"))
        self.case(g, "NaN weights: evaluate run", lambda: self.evaluate(base, "nan"))
        self.case(g, "export of an unfinished run",
                  lambda: self.evaluate_cmd("export", "--run", "part", "--runs-dir", self.runs, "--no-check",
                                            want="unfinished"),
                  judge=lambda rc, out: "traceback" if traceback_in(out) else
                  ("ok" if rc == 0 and "unfinished" in out else "silent"))

        def spec_says_interpolation(rc, out):
            if traceback_in(out):
                return "traceback"
            spec = self.runs / "done" / "model-mf.json"
            text = spec.read_text() if spec.is_file() else ""
            return "ok" if rc == 0 and "interpolation" in text else "silent"

        self.case(g, "ONNX spec names the resize interpolation",
                  lambda: self.evaluate_cmd("export", "--run", "done", "--runs-dir", self.runs, want="preprocess"),
                  judge=spec_says_interpolation)
        feats = self.runs / "done" / "eval" / "synthetic" / "features.h5"
        nosum = self.box / "features-nosum.h5"
        shutil.copy(feats, nosum)
        subprocess.run([PY, "-c", "import sys, h5py, numpy as np; f = h5py.File(sys.argv[1], 'r+'); "
                        "del f.attrs['content_sha256']; x = f['gallery/features'][()]; x[0] = -x[0]; "
                        "f['gallery/features'][...] = x", str(nosum)], env=self.env, check=True)
        self.case(g, "features file without its checksum attribute: evaluate features",
                  lambda: self.evaluate_cmd("features", nosum))

        stale = self.copy(base, "fused-stale")
        img = sorted((stale / "synthetic" / "query").glob("*.jpg"))[0]
        subprocess.run([PY, "-c", "import sys, cv2; p = sys.argv[1]; cv2.imwrite(p, cv2.flip(cv2.imread(p), 1))",
                        str(img)], env=self.env, check=True)
        self.case(g, "fused evaluation, store stale (an image changed)",
                  lambda: self.evaluate(stale, "done", "--feature-set", "fused"))
        other = self.copy(base, "fused-other")
        self.precompute(other, "--force", "-o", "miss=0.3")
        self.case(g, "fused evaluation, store of other settings (--force -o miss=0.3)",
                  lambda: self.evaluate(other, "done", "--feature-set", "fused"))

        # the search cache: a FAISS index and a features file changed behind search's back
        gallery = base / "synthetic" / "bounding_box_test"
        query = base / "synthetic" / "query"

        def search(out: str, *extra):
            return self.evaluate_cmd("search", "--run", "done", "--runs-dir", self.runs, "--query", query,
                                     "--gallery", gallery, "--no-pictures", "--device", "cpu", "--out",
                                     self.box / out, *extra)

        search("search-clean", "--index", "flat")
        search("search-clean-exact")
        cache = self.runs / "done" / "search-cache"
        index = next(cache.glob("*.faiss"), None)
        if index is not None:
            subprocess.run([PY, "-c", "import sys, faiss, numpy as np; i = faiss.read_index(sys.argv[1]); "
                            "x = np.random.default_rng(0).standard_normal((i.ntotal, i.d)).astype('float32'); "
                            "j = faiss.IndexFlatIP(i.d); j.add(x); faiss.write_index(j, sys.argv[1])", str(index)],
                           env=self.env, check=True)

        def same_ranking(out_dir: str, clean: str = "search-clean"):
            def judge(rc, out):
                if traceback_in(out):
                    return "traceback"
                a, b = self.box / clean / "ranking.csv", self.box / out_dir / "ranking.csv"
                if rc != 0 or not b.is_file():
                    return "refused"
                return "ok" if a.read_text() == b.read_text() else "silent"
            return judge

        self.case(g, "search cache: FAISS index replaced", lambda: search("search-index", "--index", "flat"),
                  judge=same_ranking("search-index"))
        h5 = next(cache.glob("*.h5"), None)
        if h5 is not None:
            subprocess.run([PY, "-c", "import sys, h5py; f = h5py.File(sys.argv[1], 'r+'); "
                            "x = f['gallery/features'][()]; f['gallery/features'][...] = x[::-1].copy()", str(h5)],
                           env=self.env, check=True)
        self.case(g, "search cache: gallery features reordered", lambda: search("search-h5"),
                  judge=same_ranking("search-h5", "search-clean-exact"))

    # ----------------------------------------------------------------- 8. images
    def group_images(self, base: Path) -> None:
        g = "images"
        root = self.copy(base, "hdr")
        shutil.rmtree(root / "dsap")
        big = root / "synthetic" / "bounding_box_train" / "0001_c1s1_999990_00.jpg"
        subprocess.run([PY, "-c", "import sys, cv2, numpy as np; ok, b = cv2.imencode('.hdr', "
                        "np.full((8000, 8000, 3), 0.5, np.float32)); open(sys.argv[1], 'wb').write(b.tobytes())",
                        str(big)], env=self.env, check=True)
        self.case(g, f"8000x8000 Radiance HDR named .jpg ({big.stat().st_size // 1000} kB): data stats --check-images",
                  lambda: self.sh(PY, "-m", "data", "stats", "--dataset", "synthetic", "--root", root,
                                  "--check-images", want="unreadable"),
                  judge=lambda rc, out: "traceback" if traceback_in(out) else
                  ("ok" if rc == 1 and "1 unreadable" in out and "pixels" in out else "silent"))

    # ----------------------------------------------------------------- 9. processes
    def group_processes(self, base: Path) -> None:
        g = "processes"
        src = self.synth("killworker", ids=200)
        args = [PY, "-m", "precompute", "run", "--dataset", "synthetic", "--root", src, "--estimator", "synthetic",
                "--shard-size", "20", "--workers", "2"]

        def kill_a_worker():
            p = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 env=self.env, cwd=self.box / "cwd")
            folder, end = self.store(src), time.time() + 120
            while p.poll() is None and time.time() < end and not list(folder.glob("shard-*.h5")):
                time.sleep(0.1)
            kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
            workers = [k for k in kids if "spawn_main" in _cmdline(k) and "resource_tracker" not in _cmdline(k)]
            if workers:
                os.kill(int(workers[0]), signal.SIGKILL)
            out = p.communicate(timeout=300)[0].decode("utf-8", "replace")
            return p.returncode, first_line(out), out

        self.case(g, "a precompute worker SIGKILLed", kill_a_worker)
        self.case(g, "a precompute worker SIGKILLed: rerun",
                  lambda: self.sh(*args, want="store complete"), judge=success)

        def synth_killed():
            out_root = self.data / "synth-killed"
            p = subprocess.Popen([PY, "-m", "data", "synth", "--root", str(out_root), "--ids", "400", "--workers", "2",
                                  "--no-preview"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env,
                                 cwd=self.box / "cwd")
            kids, end = [], time.time() + 60
            while len(kids) < 2 and time.time() < end:
                kids = [k for k in subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True,
                                                  text=True).stdout.split() if "resource_tracker" not in _cmdline(k)]
                time.sleep(0.1)
            time.sleep(1.0)
            p.kill()
            p.wait()
            time.sleep(10)
            alive = [k for k in kids if Path(f"/proc/{k}").exists()]
            for k in alive:
                os.kill(int(k), signal.SIGKILL)
            return p.returncode, f"{len(alive)} of {len(kids)} pool workers still alive 10 s after", str(len(alive))

        self.case(g, "data synth SIGKILLed: its pool workers", synth_killed,
                  judge=lambda rc, out: "ok" if out == "0" else "silent")
        pose = self.copy(base, "pose")
        shutil.rmtree(pose / "dsap")
        self.case(g, "pose precompute: MediaPipe's protobuf line",
                  lambda: self.precompute(pose, estimator="pose", want="store complete", timeout=900),
                  judge=lambda rc, out: "traceback" if traceback_in(out) else
                  ("ok" if rc in (0, 2) else "other"))

    # ----------------------------------------------------------------- 10. kills: still identical
    def group_kills(self, base: Path, tries: int = 5) -> None:
        g = "kills"
        src = self.synth("kills", ids=60)
        clean = self.copy(src, "kills-clean")
        shutil.rmtree(clean / "dsap", ignore_errors=True)
        self.precompute(clean, "--shard-size", "10")
        reference = _shard_digests(self.store(clean))
        for t in range(tries):
            root = self.copy(src, f"kills-{t}")
            shutil.rmtree(root / "dsap", ignore_errors=True)

            def killed_then_rerun(root=root, shards=t + 1):
                p = subprocess.Popen([PY, "-m", "precompute", "run", "--dataset", "synthetic", "--root", str(root),
                                      "--estimator", "synthetic", "--shard-size", "10"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=self.env, cwd=self.box / "cwd")
                end = time.time() + 120
                while p.poll() is None and time.time() < end and len(list(self.store(root).glob("shard-*.h5"))) < shards:
                    time.sleep(0.02)
                time.sleep(0.05 * shards)
                p.kill()
                p.wait()
                rc, line, out = self.precompute(root, "--shard-size", "10", want="store complete")
                same = _shard_digests(self.store(root)) == reference
                return rc, f"SIGKILL after {shards} shard(s), rerun: {'identical' if same else 'DIFFERENT'}", \
                    "identical" if same else "different"

            self.case(g, f"precompute SIGKILLed (try {t + 1}), rerun: store byte-identical", killed_then_rerun,
                      judge=lambda rc, out: "ok" if out == "identical" else "silent")
        self.train(base, "kclean", "--epochs", "3")
        for t in range(tries):
            def killed_then_resumed(t=t):
                run = f"kill{t}"
                p = self._train_in_background(base, run, "3", output=subprocess.DEVNULL)
                ckpt, end = self.runs / run / "checkpoint.pt", time.time() + 300
                while p.poll() is None and time.time() < end and not ckpt.exists():
                    time.sleep(0.05)
                time.sleep(0.3 * (t + 1))
                p.kill()
                p.wait()
                rc, line, out = self.train(base, run, "--epochs", "3")
                rc2, same, _ = self.pyc("import sys, torch; a = torch.load(sys.argv[1], weights_only=True)['model']; "
                                        "b = torch.load(sys.argv[2], weights_only=True)['model']; "
                                        "print('identical' if a.keys() == b.keys() and all(torch.equal(a[k], b[k]) "
                                        "for k in a) else 'DIFFERENT')", self.runs / "kclean" / "checkpoint.pt",
                                        self.runs / run / "checkpoint.pt")
                return rc, f"SIGKILL {0.3 * (t + 1):.1f} s after the first checkpoint, resumed: {same}", same

            self.case(g, f"train SIGKILLed (try {t + 1}), resumed: weights bit-identical", killed_then_resumed,
                      judge=lambda rc, out: "ok" if out == "identical" else "silent")
        for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
            def signalled(sig=sig):
                run = f"sig{int(sig)}"
                p = self._train_in_background(base, run, "50", output=subprocess.PIPE)
                log, end = self.runs / run / "log.jsonl", time.time() + 120
                while time.time() < end and not (log.exists() and log.stat().st_size > 0):
                    time.sleep(0.2)
                p.send_signal(sig)
                out = p.communicate(timeout=120)[0].decode("utf-8", "replace")
                return p.returncode, first_line(out, "resume"), out

            self.case(g, f"{signal.Signals(sig).name} during training: exit {code}, a line saying how to resume",
                      signalled, judge=lambda rc, out, code=code: "traceback" if traceback_in(out) else
                      ("ok" if rc == code and "rerun the same command" in out else "other"))

    def _train_in_background(self, base: Path, run: str, epochs: str, output) -> subprocess.Popen:
        return subprocess.Popen([PY, "-m", "train", "--dataset", "synthetic", "--root", str(base), "--preset", "tiny",
                                 "--run", run, "--runs-dir", str(self.runs), "--workers", "0", "--device", "cpu",
                                 "--epochs", epochs], stdout=output, stderr=subprocess.STDOUT, env=self.env,
                                cwd=self.box / "cwd")

    # ----------------------------------------------------------------- the earlier round
    def group_earlier(self, base: Path) -> None:
        g = "earlier"
        self._disk_full(g)
        root = self.copy(base, "flip")
        shard = self.store(root) / "shard-00000.h5"
        flip_byte(shard)
        self.case(g, "bit flip in a shard: train", lambda: self.train(root, "flip", "--max-steps", "1"))
        self.case(g, "bit flip in a shard: precompute run", lambda: self.precompute(root, want="computed"),
                  judge=lambda rc, out: "silent" if "nothing to do" in out else success(rc, out))
        shard.unlink()
        self.case(g, "deleted shard: precompute run", lambda: self.precompute(root, want="computed"),
                  judge=lambda rc, out: "silent" if "nothing to do" in out else success(rc, out))
        root = self.copy(base, "stale")
        img = sorted((root / "synthetic" / "bounding_box_train").glob("*.jpg"))[0]
        iuv = img.with_name(img.stem + "_IUV.png")
        subprocess.run([PY, "-c", "import sys, cv2; [cv2.imwrite(p, cv2.flip(cv2.imread(p, cv2.IMREAD_UNCHANGED), 1)) "
                        "for p in sys.argv[1:]]", str(img), str(iuv)], env=self.env, check=True)
        self.case(g, "image+IUV changed in place: train", lambda: self.train(root, "stale", "--max-steps", "1"))
        self.case(g, "image+IUV changed in place: precompute", lambda: self.precompute(root, want="computed"),
                  judge=lambda rc, out: "silent" if "nothing to do" in out else success(rc, out))
        self.case(g, "evaluate an unfinished run", lambda: self.evaluate(base, "part", want="unfinished"),
                  judge=lambda rc, out: "ok" if rc == 0 and "unfinished" in out else "silent")
        feats = self.box / "features-changed.h5"
        shutil.copy(self.runs / "done" / "eval" / "synthetic" / "features.h5", feats)
        subprocess.run([PY, "-c", "import sys, h5py; f = h5py.File(sys.argv[1], 'r+'); x = f['gallery/features'][()]; "
                        "x[0, 0] = -x[0, 0] + 1; f['gallery/features'][...] = x", str(feats)], env=self.env, check=True)
        self.case(g, "features file with a changed value", lambda: self.evaluate_cmd("features", feats))
        # two programs on one store
        lock = self.synth("lock", ids=300)
        args = [PY, "-m", "precompute", "run", "--dataset", "synthetic", "--root", lock, "--estimator", "synthetic",
                "--shard-size", "5"]
        a = subprocess.Popen([str(x) for x in args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env,
                             cwd=self.box / "cwd")
        folder = self.store(lock)
        while a.poll() is None and not list(folder.glob("shard-*.h5*")):  # it holds the lock and computes
            time.sleep(0.1)
        self.case(g, "second precompute on one store", lambda: self.sh(*args))
        a.wait(timeout=600)
        out = a.stdout.read().decode("utf-8", "replace")
        self.row(g, "first precompute (running meanwhile)", a.returncode, first_line(out, "store complete"),
                 success(a.returncode, out))
        # files the programs must refuse or record
        loop = self.copy(base, "fileloop")
        shutil.rmtree(loop / "dsap")
        link = loop / "synthetic" / "bounding_box_train" / "0001_c1s1_999999_00.jpg"
        link.symlink_to(link.name)
        self.case(g, "file symlink loop: precompute records it", lambda: self.precompute(loop, want="999999"),
                  judge=lambda rc, out: "traceback" if traceback_in(out) else ("ok" if "999999" in out else "silent"))
        self.case(g, "file symlink loop: train", lambda: self.train(loop, "fileloop", "--max-steps", "1"))
        utf = self.copy(base, "utf8")
        src = next((utf / "synthetic" / "query").glob("*.jpg"))
        os.link(os.fsencode(src), os.fsencode(utf / "synthetic" / "query") + b"/0001_c1s1_99\xff\xfe_00.jpg")
        self.case(g, "non-UTF-8 name: precompute", lambda: self.precompute(utf))
        self.case(g, "non-UTF-8 name: evaluate", lambda: self.evaluate(utf, "done"))
        (self.runs / "zero").mkdir(exist_ok=True)
        (self.runs / "zero" / "checkpoint.pt").write_bytes(b"")
        self.case(g, "0-byte checkpoint.pt: train", lambda: self.train(base, "zero", "--max-steps", "1"))
        for name, text in (("list", "[1, 2]"), ("no-shards", '{"format_version": 1, "size": 32}')):
            root = self.copy(base, f"manifest-{name}")
            (self.store(root) / "manifest.json").write_text(text)
            self.case(g, f"manifest {name}: inspect --verify",
                      lambda: self.sh(PY, "-m", "precompute", "inspect", "--dataset", "synthetic", "--root", root,
                                      "--estimator", "synthetic", "--verify"))
            self.case(g, f"manifest {name}: train", lambda: self.train(root, f"m-{name}", "--max-steps", "1"))
            self.case(g, f"manifest {name}: precompute run", lambda: self.precompute(root, want="store complete"),
                      judge=success)
        (self.runs / "evil").mkdir(exist_ok=True)
        subprocess.run([PY, "-c", "import sys, torch, pathlib; torch.save({'model': {}, 'x': pathlib.Path('.')}, "
                        "sys.argv[1])", str(self.runs / "evil" / "checkpoint.pt")], env=self.env, check=True)
        self.case(g, "checkpoint with pickled objects: evaluate", lambda: self.evaluate(base, "evil"))
        shutil.copytree(self.runs / "done", self.runs / "nanresume", dirs_exist_ok=True)
        subprocess.run([PY, "-c", "import sys, torch; p = sys.argv[1]; c = torch.load(p, weights_only=True); "
                        "[t.fill_(float('nan')) for t in c['model'].values() if t.is_floating_point()]; "
                        "torch.save(c, p)", str(self.runs / "nanresume" / "checkpoint.pt")], env=self.env, check=True)
        self.case(g, "NaN-weights checkpoint: resume", lambda: self.train(base, "nanresume", "--epochs", "3"))
        huge = self.box / "huge.png"
        subprocess.run([PY, "-c", "import sys, struct, zlib\n"
                        "def chunk(k, b): return struct.pack('>I', len(b)) + k + b + struct.pack('>I', zlib.crc32(k + b))\n"
                        "open(sys.argv[1], 'wb').write(b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', "
                        "20000, 20000, 8, 2, 0, 0, 0)) + chunk(b'IDAT', zlib.compress(b'\\0' * 1000)) + chunk(b'IEND', b''))",
                        str(huge)], env=self.env, check=True)
        self.case(g, "20000x20000 PNG header: read_image",
                  lambda: self.pyc("import sys\nfrom data.io import read_image\ntry:\n    read_image(sys.argv[1]); "
                                   "print('decoded')\nexcept Exception as e:\n    print('error:', e)", huge),
                  judge=lambda rc, out: "ok" if "above the limit" in out else "silent")
        root = self.copy(base, "zero-image")
        shutil.rmtree(root / "dsap")
        sorted((root / "synthetic" / "bounding_box_train").glob("*.jpg"))[3].write_bytes(b"")
        self.case(g, "0-byte train image: precompute records it", lambda: self.precompute(root, want="failed"),
                  judge=lambda rc, out: "traceback" if traceback_in(out) else ("ok" if "failed" in out else "silent"))
        self.case(g, "0-byte train image: train", lambda: self.train(root, "zero-image", "--max-steps", "1"))

    def _disk_full(self, g: str) -> None:
        mnt = self.work / "tmpfs"
        mnt.mkdir(exist_ok=True)
        if not self.root or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)]).returncode:
            self.skip(g, "disk full (tmpfs)", "cannot mount a tmpfs")
            return
        try:
            src = self.synth("full-src")
            (mnt / "root").mkdir()
            (mnt / "root" / "synthetic").symlink_to(src / "synthetic")
            self.case(g, "disk full: precompute run", lambda: self.precompute(mnt / "root", "--compression", "none"))
            subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
            self.case(g, "disk full: rerun after enlarging",
                      lambda: self.precompute(mnt / "root", "--compression", "none", want="store complete"),
                      judge=success)
            self.case(g, "disk full: inspect --verify afterwards",
                      lambda: self.sh(PY, "-m", "precompute", "inspect", "--dataset", "synthetic", "--root",
                                      mnt / "root", "--estimator", "synthetic", "--verify", want="verify"),
                      judge=success)
        finally:
            subprocess.run(["umount", str(mnt)])


# --------------------------------------------------------------------------- helpers
def flip_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 1]))


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _shard_digests(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("shard-*.h5"))}


# --------------------------------------------------------------------------- the table
def counts(rows: list[dict]) -> dict[str, int]:
    c = Counter(r["outcome"] for r in rows)
    return {k: c.get(k, 0) for k in OUTCOMES if c.get(k, 0) or k in ("traceback", "silent", "wrote-outside")}


def identical_kills(rows: list[dict]) -> str:
    """'N of M': the kill cases whose store or weights came out identical."""
    kills = [r for r in rows if r["group"] == "kills" and "identical" in r["case"]]
    return f"{sum(r['outcome'] == 'ok' for r in kills)} of {len(kills)}"


def plain(line: str, work: str | None) -> str:
    """A first line without what differs between two runs of the battery: its work folder (``BOX`` for the
    folder the cases write in, ``WORK`` above it) and a log line's time of day."""
    line = re.sub(r"^\d\d:\d\d:\d\d ", "", str(line))
    if work:
        line = line.replace(f"{work}/box/inner", "BOX").replace(work, "WORK")
    return re.sub(r"/\S*?/box/inner(?=/)", "BOX", line)


def summary(result: dict) -> str:
    rows = result["rows"]
    return (f"{len(rows)} cases, " + ", ".join(f"{v} {k}" for k, v in counts(rows).items())
            + f"; kills identical: {identical_kills(rows)}")


def literal(text: str) -> str:
    """``text`` as Markdown shows it letter for letter (a program's line: underscores, backticks, pipes)."""
    return re.sub(r"([\\`*_|<>\[\]#])", r"\\\1", text)


def table(before: dict, after: dict) -> str:
    """Markdown: case -> before (rc, first line, outcome) -> after; then the counts of each side."""
    def cell(r: dict | None, work: str | None) -> str:
        if r is None:
            return "(not run)"
        line = plain(r["first_line"], work)
        line = line if len(line) <= 110 else line[:107] + "..."
        return f"**{r['outcome']}** · {r['rc']} · {literal(line)}"

    b = {(r["group"], r["case"]): r for r in before["rows"]}
    a = {(r["group"], r["case"]): r for r in after["rows"]}
    keys = list(dict.fromkeys([*a, *b]))
    out = ["| group | case | before: outcome · exit · first line | after: outcome · exit · first line |",
           "|---|---|---|---|"]
    for k in keys:
        out.append(f"| {k[0]} | {literal(k[1])} | {cell(b.get(k), before.get('work'))} | "
                   f"{cell(a.get(k), after.get('work'))} |")
    out += ["", f"before: {summary(before)}", f"after: {summary(after)}"]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", nargs="*", default=None, choices=GROUPS, help="run these groups only")
    ap.add_argument("--memory", type=float, default=10.0, help="address-space limit of every command, GiB")
    ap.add_argument("--table", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="compare two --json files")
    ap.add_argument("--markdown", type=Path, default=None, help="with --table: write the table here too")
    args = ap.parse_args()
    if args.table:
        text = table(*(json.loads(p.read_text()) for p in args.table))
        print(text)
        if args.markdown:
            args.markdown.write_text(text + "\n")
        return
    if not (args.code and args.work):
        ap.error("--code and --work are needed (or --table BEFORE AFTER)")
    if args.work.exists():
        subprocess.run(["umount", str(args.work / "tmpfs")], capture_output=True)
        for p in args.work.rglob("*"):  # folders made unreadable by a case
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    battery = Battery(args.code.resolve(), args.work.resolve(), args.memory)
    started, load = time.time(), os.getloadavg()
    try:
        battery.run_all(args.only)
    finally:
        result = {"code": str(args.code), "work": str(args.work.resolve()), "load_at_start": load,
                  "load_at_end": os.getloadavg(), "seconds": round(time.time() - started),
                  "cores": os.cpu_count(), "counts": counts(battery.rows), "rows": battery.rows}
        print(json.dumps(result["counts"]))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
