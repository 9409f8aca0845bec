"""The documentation against the code: every preset, variant, estimator, dataset and make target the docs
name exists, every one that exists is documented, the commands they show call real targets, modules and
options, and the user docs say nothing about how the work was organised."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDES = sorted((ROOT / "docs").glob("*.md"))
STUDIES = sorted((ROOT / "studies").glob("**/README.md"))
USER_DOCS = [README, *GUIDES, *STUDIES]


def text(*paths: Path) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in paths)


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):.*## ", (ROOT / "Makefile").read_text(), re.M))


def test_the_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; guides and results go to docs/"
    for needed in ("make demo", "make test"):
        assert needed in README.read_text()


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_docs_do_not_mention_how_the_work_was_organised(path: Path):
    pattern = re.compile(r"issue [0-9]|stop [0-9]|this session|\bsession [0-9]|[0-9]{2}:[0-9]{2} UTC|/tmp/|\.\./shared")
    hits = [f"{i}: {line.strip()}" for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if pattern.search(line) and "detectron2 issues #" not in line]
    assert not hits, hits
    # a placeholder left where a result should be: an ALL_CAPS word in the prose (code is left out)
    prose = re.sub(r"`[^`]*`", "", re.sub(r"```.*?```", "", path.read_text(), flags=re.S))
    placeholders = re.findall(r"\b[A-Z]{2,}[A-Z0-9]*_[A-Z][A-Z0-9_]{2,}\b", prose)
    assert not placeholders, placeholders


def test_every_make_target_is_documented_and_every_documented_one_exists():
    targets = makefile_targets()
    table = set(re.findall(r"^\| `make ([a-z-]+)`", README.read_text(), re.M))
    table |= set(re.findall(r"^\| `make [a-z-]+` / `make ([a-z-]+)`", README.read_text(), re.M))
    assert targets - {"help"} <= table | {"bench-gpu"} and "bench-gpu" in README.read_text()
    body = text(*USER_DOCS)
    code = "\n".join(re.findall(r"```.*?```", body, re.S) + re.findall(r"`([^`\n]+)`", body))
    named = set(re.findall(r"\bmake ([a-z][a-z-]*[a-z])", code))
    patterns = {t for t in named if t.startswith("bench-")}  # make bench-NAME: one benchmark each
    for t in patterns - {"bench-gpu"}:
        assert (ROOT / "bench" / f"bench_{t.removeprefix('bench-').replace('-', '_')}.py").is_file(), t
    unknown = named - targets - patterns - {"bench-NAME"}
    assert not unknown, f"the docs name make targets that do not exist: {sorted(unknown)}"


def test_every_preset_is_documented_and_every_documented_preset_exists():
    from dsa.config import preset_names

    presets = set(preset_names())
    readme, training = README.read_text(), (ROOT / "docs" / "training.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `PRESET`"))
    in_readme = set(re.findall(r"`([a-z][a-z0-9-]*)`", row.split("|")[3]))
    assert in_readme == presets, (in_readme, presets)
    block = training[training.index("**Presets**"):training.index("## The network")]
    in_guide = set(re.findall(r"^- `([a-z0-9-]+)`(?:, `([a-z0-9-]+)`)?[ :]", block, re.M))
    in_guide = {p for pair in in_guide for p in pair if p}
    assert in_guide == presets, (in_guide, presets)
    for name in re.findall(r"PRESET=([a-z0-9-]+)", text(*USER_DOCS)):
        assert name in presets, name
    help_text = subprocess.run([sys.executable, "-m", "train", "--help"], capture_output=True, text=True,
                               cwd=ROOT).stdout
    flat = re.sub(r"-\s+", "-", " ".join(help_text.split()))
    assert all(p in flat for p in presets), help_text


def test_every_variant_estimator_and_dataset_is_documented():
    from data.datasets import DATASETS
    from dsa.config import VARIANTS
    from precompute.estimators import ESTIMATORS

    training, precompute = (ROOT / "docs" / "training.md").read_text(), (ROOT / "docs" / "precompute.md").read_text()
    for v in VARIANTS:
        assert f"`{v}`" in training, v
    for e in ESTIMATORS:
        assert f"`{e}`" in precompute and f"`{e}`" in README.read_text(), e
    datasets = (ROOT / "docs" / "datasets.md").read_text()
    for d in DATASETS:
        assert f"`{d}`" in datasets and f"`{d}`" in README.read_text(), d
    for name in re.findall(r"VARIANT=([a-z-]+)", text(*USER_DOCS)):
        assert name in VARIANTS, name
    for name in re.findall(r"ESTIMATOR=([a-z]+)", text(*USER_DOCS)):
        assert name in ESTIMATORS, name


def _commands(body: str) -> list[str]:
    """The shell lines of the docs' ```bash blocks, continuation lines joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", body, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        out += [ln.split("#")[0].strip() for ln in joined.splitlines() if ln.strip() and not ln.startswith("#")]
    return out


def _help(module: list[str]) -> str:
    return subprocess.run([sys.executable, "-m", *module, "--help"], capture_output=True, text=True, cwd=ROOT).stdout


def test_the_commands_the_docs_show_call_real_modules_and_options():
    """Every ``python -m MODULE [SUBCOMMAND] --option`` of the docs' shell blocks: the module runs its --help,
    and each option appears in that help."""
    checked = 0
    helps: dict[tuple[str, ...], str] = {}
    for line in _commands(text(*USER_DOCS)):
        m = re.search(r"python -m ([\w.]+)((?:\s+[a-z][\w-]*)?)(.*)", line)
        if not m:
            continue
        module, sub, rest = m.group(1), m.group(2).strip(), m.group(3)
        if module in ("pip",):
            continue
        key = (module, sub) if sub and not sub.startswith("-") and module not in ("train",) else (module,)
        if key not in helps:
            helps[key] = _help(list(key))
        assert helps[key], f"`python -m {' '.join(key)} --help` printed nothing (line: {line})"
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
            assert option in helps[key], f"{option} is not an option of `python -m {' '.join(key)}` (line: {line})"
        checked += 1
    assert checked >= 10


def test_readme_links_resolve():
    for path in USER_DOCS:
        for target in re.findall(r"\]\(([^)#]+?\.(?:md|png))(?:#[^)]*)?\)", path.read_text()):
            if target.startswith("http"):
                continue
            assert (path.parent / target).resolve().is_file(), f"{path.name} links to {target}, which does not exist"
