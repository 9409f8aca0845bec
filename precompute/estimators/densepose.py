"""``densepose``: detectron2's DensePose (the paper's estimator), run on re-ID crops.

detectron2 and its DensePose project are optional and imported only when this estimator is built.
Each crop is already a person box, so no person detection runs: the model's ROI heads get the whole
crop as the given box (``model.inference(..., detected_instances=...)``).  Crops are resized so that
their short side is ``min_size`` (default 256: a 128×64 crop is not blown up to detectron2's usual
800–1333) and their long side at most ``max_size``.

**Batch invariance.**  detectron2 pads the images of one batch to the largest of them, and padding
changes the backbone's output near the edge, so a crop's labels would depend on its batch.  Two ways
out (``batching=``): ``shape`` (default) keeps each crop's aspect ratio and runs crops of one resized
shape together (a batch of mixed sizes becomes several sub-batches), which gives exactly the labels of a
crop run alone; ``fixed`` stretches every crop to ``max_size × min_size`` (rows × columns) so that one
batch never needs padding.  The choice is part of the store's settings.

**Weights.**  ``weights=`` takes a file, a URL or a model-zoo name; ``random`` asks for detectron2's
random initialisation (seeded, for smoke tests only: the store's settings say so and ``inspect`` warns);
empty means the model-zoo weights of the config, looked up by the config's *content* (a CSE config has
the same file name as an IUV one).  Weights that cannot be fetched or read, or that do not fit the
config either way (tensors missing or of another shape, or tensors of another model: a ResNet-101
checkpoint with a ResNet-50 config), stop the estimator with one sentence before any image is processed,
and so does a config without DensePose heads (e.g. COCO Mask R-CNN).

**Settings and provenance.**  The store's settings (what makes two stores interchangeable) are contents,
never paths: a SHA-256 of the config (with its ``_BASE_`` files) and of the weights file, the options,
the device type, the pinned thread count and the versions of torch, detectron2 (with its commit when
pip recorded one) and DensePose.  Where the files were read from is provenance, stored beside them.

**Threads.**  On a CPU the backbone's sums are split by thread, so another intra-op thread count moves U
and V by up to about 5e-3 and some pixels into other cells.  The model therefore always runs with
``threads`` intra-op threads (default 1), whatever ``--threads`` or ``--workers`` say; ``threads`` is a
setting, so stores computed with different values are never mixed.  Use ``--workers N`` to use N cores.

The chart output (coarse segmentation, fine segmentation, U, V in box coordinates) is turned into
full-crop I/U/V maps by :func:`chart_output_to_iuv`, a pure function of tensors that follows DensePose's
own converter (bilinear resampling to the box, fine labels masked by the coarse foreground, U/V taken
from the label's channel), with U and V clamped to [0, 1].
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import subprocess
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from data.io import file_sha256
from data.runtime import pinned_threads
from dsa.iuv import IUV

from .base import DETECTRON2_INSTALL, Estimator, EstimatorError
from .iuv import paste_box_results

__all__ = ["DensePoseEstimator", "chart_output_to_iuv", "config_digest", "zoo_name_for_config",
           "INSTALL_HINT", "MODEL_ZOO", "ZOO_CONFIG_DIGESTS", "RANDOM_WEIGHTS", "BATCHING"]

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the densepose estimator needs detectron2 and its DensePose project, which are not on PyPI: install them "
    f"from source with {DETECTRON2_INSTALL}"
)

#: ``weights=random``: detectron2's random initialisation (seeded by :data:`RANDOM_SEED`)
RANDOM_WEIGHTS = "random"
RANDOM_SEED = 0
RANDOM_WARNING = ("computed with random DensePose weights (weights=random): its part labels are meaningless; "
                  "use it for smoke tests only")
#: ``batching=`` values and what they mean
BATCHING = {
    "shape": "aspect kept; crops of one resized shape batched together (identical to one crop alone)",
    "fixed": "every crop stretched to max_size x min_size (rows x columns); no padding in a batch",
}

_ZOO = "https://dl.fbaipublicfiles.com/densepose"
#: DensePose model-zoo names → weights URLs (configs: projects/DensePose/configs/<name>.yaml)
MODEL_ZOO: dict[str, str] = {
    "densepose_rcnn_R_50_FPN_s1x": f"{_ZOO}/densepose_rcnn_R_50_FPN_s1x/165712039/model_final_162be9.pkl",
    "densepose_rcnn_R_101_FPN_s1x": f"{_ZOO}/densepose_rcnn_R_101_FPN_s1x/165712084/model_final_c6ab63.pkl",
    "densepose_rcnn_R_50_FPN_DL_s1x": f"{_ZOO}/densepose_rcnn_R_50_FPN_DL_s1x/165712097/model_final_0ed407.pkl",
    "densepose_rcnn_R_50_FPN_s1x_legacy":
        f"{_ZOO}/densepose_rcnn_R_50_FPN_s1x_legacy/164832157/model_final_d366fa.pkl",
}

#: :func:`config_digest` of each model-zoo config (with its ``_BASE_`` files) → its zoo name, for every
#: version of those files in detectron2's history since the weights were released (January 2020).
_ZOO_CONFIG_VERSIONS: dict[str, tuple[str, ...]] = {
    "densepose_rcnn_R_101_FPN_s1x": (  # detectron2 commits ed1d74b6, 4f68200d, cd8981eb, e9293707, 795e68e4
        "1f4abb3f77025872a479fc5f332e537ced90d67e91f803f86954b36982d05cc3",
        "c45cedfa8b164b8e2e2441a2b24ef5488e1e1dae28d33a44f50bf5d6380a74a9",
        "da9976e39955ca797f6e3d6f21f0a97e3d55da58939279913f58103f8b754ef0",
        "3cf2057933dd6be20a649009f9d7164d15f014b8e41ef095a98b01aa1848183e",
        "217ccca507146096b55f8a7fe3a41e99ed91acbcb38a5c1cfd2534aa81725ff7",
    ),
    "densepose_rcnn_R_50_FPN_DL_s1x": (  # detectron2 commits ed1d74b6, cd8981eb, e9293707, 795e68e4
        "f8a6c08e5e61e9703e5ddd7a9a158047e9ede56ba30547e8e5b66cc63d049cd0",
        "fb821af1ffd6937120f5ae7c25998598e7c74cac28ab5f0acf7e405205624f94",
        "65aaf0ae45a4ed18a9f999c307821bbd918eca02d50044d4c5e2c901d67af223",
        "29ea096e7eec80a84d92f8dc234996f6cb88d6df24c0bd3a7215ae39cabdb238",
    ),
    "densepose_rcnn_R_50_FPN_s1x": (  # detectron2 commits ed1d74b6, 4f68200d, cd8981eb, e9293707, 795e68e4
        "0a99193cbe15641d41dc29c4137e26f1abbc115929b9228c534044af92926147",
        "1e46f846949f56744a7f713a48f6000decc9d2be377cfe49d349d434477cfc25",
        "bd9677c7f3950bffecf2a17fdca17cea23f8b241c5115007c45628646951151a",
        "df7fa5905f5d368c335143beeac4c56bf29cb9edad9f24e6069533c3ccdaddbf",
        "47b00c3d09d3685e09b2e4aed7d2d4b6058dff7fd877404311f618d652e4cb6e",
    ),
    "densepose_rcnn_R_50_FPN_s1x_legacy": (  # detectron2 commits e9293707, 795e68e4
        "b47803af4e81fb06b7b542c0cb79af7370e836756b1e3c5485e8f9f5efbe5040",
        "b941e35c43eb648a53cc56a486e8532ee439234acc95af3f4458f37716511198",
    ),
}
ZOO_CONFIG_DIGESTS: dict[str, str] = {d: name for name, ds in _ZOO_CONFIG_VERSIONS.items() for d in ds}


# ------------------------------------------------------------------------------- provenance
def _normalised_yaml(text: str) -> str:
    """The lines that matter: comment-only and blank lines dropped, trailing spaces removed."""
    return "\n".join(line.rstrip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


_BASE_LINE = re.compile(r"""^_BASE_:\s*["']?([^"'#\s]+)["']?\s*(#.*)?$""", re.MULTILINE)


def config_digest(path: str | Path) -> str:
    """SHA-256 of a detectron2 yaml config's content together with its ``_BASE_`` chain (comment-only and
    blank lines ignored): the same model under another file name has the same digest, a CSE config and an
    IUV config of one name do not."""
    parts, seen = [], set()
    current: Path | None = Path(path).expanduser()
    while current is not None:
        resolved = current.resolve()
        if resolved in seen:
            raise EstimatorError(f"estimator 'densepose': the config {path} has a _BASE_ cycle through {current}")
        seen.add(resolved)
        try:
            text = current.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise EstimatorError(f"estimator 'densepose': cannot read the config {current} ({e})") from None
        parts.append(_normalised_yaml(text))
        match = _BASE_LINE.search(text)
        current = None if match is None else current.parent / match.group(1)
    return hashlib.sha256("\n---\n".join(parts).encode()).hexdigest()


def zoo_name_for_config(path: str | Path) -> str | None:
    """The model-zoo name whose config has the content of ``path`` (see :data:`ZOO_CONFIG_DIGESTS`), or None."""
    return ZOO_CONFIG_DIGESTS.get(config_digest(path))


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


# --------------------------------------------------------------------------- model identity
#: a ResNet block's tensors: ``backbone.bottom_up.res4.22.conv1.weight`` (detectron2) or ``res4_22_branch2a_w``
#: (Caffe2/Detectron pickles, before detectron2 renames them)
_BLOCK_KEY = re.compile(r"(?:^|[._])res([2-5])[._](\d+)[._]")
#: blocks in res2..res5 → the backbone, and the model-zoo configs that use it
RESNETS: dict[tuple[int, ...], tuple[str, str]] = {
    (3, 4, 6, 3): ("ResNet-50", "densepose_rcnn_R_50_FPN_*"),
    (3, 4, 23, 3): ("ResNet-101", "densepose_rcnn_R_101_FPN_*"),
    (3, 8, 36, 3): ("ResNet-152", "a R_152 config"),
}


def backbone_blocks(keys: Any) -> tuple[int, ...] | None:
    """How many ResNet blocks the tensor names ``keys`` hold in res2, res3, res4 and res5 (None: no ResNet)."""
    blocks: dict[int, set[int]] = {}
    for key in keys:
        match = _BLOCK_KEY.search(str(key))
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    return tuple(len(blocks.get(stage, ())) for stage in (2, 3, 4, 5)) if blocks else None


def describe_backbone(blocks: tuple[int, ...]) -> str:
    """``a ResNet-101 (3-4-23-3 blocks in res2-res5)``, or the block counts alone for an unknown depth."""
    counts = "-".join(map(str, blocks))
    name = RESNETS.get(blocks, ("a ResNet", ""))[0]
    return f"{'a ' if name != 'a ResNet' else ''}{name} ({counts} blocks in res2-res5)"


def _described_file(path: str | Path) -> str | None:
    """What a file that is not a readable checkpoint is, in words (None: it looks like one)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return None
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save's zip, a binary pickle
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        return f"a text file beginning {first!r}"
    return None


def software_versions() -> dict[str, str | None]:
    """The versions of what computes the chart output: torch, detectron2 (and the commit pip recorded when it
    was installed from git) and DensePose. Part of the store's settings: another version may give other bytes."""
    import torch

    d2 = _distribution("detectron2")
    return {"torch": str(torch.__version__), "detectron2": _module_version("detectron2"),
            "detectron2_commit": (d2.get("vcs_info") or {}).get("commit_id"),
            "densepose": _distribution("detectron2-densepose").get("version") or _module_version("densepose")}


def _module_version(name: str) -> str | None:
    import importlib

    try:
        return str(getattr(importlib.import_module(name), "__version__", None) or "") or None
    except ImportError:
        return None


def _distribution(name: str) -> dict[str, Any]:
    """An installed distribution's version and pip's record of where it came from (``direct_url.json``)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return {}
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        direct = {}
    return {"version": dist.version, **direct}


def _source_of(name: str) -> dict[str, Any]:
    """Provenance of an installed package: pip's source URL and, for a local git checkout, its HEAD now."""
    info = _distribution(name)
    out: dict[str, Any] = {k: info[k] for k in ("version", "url") if k in info}
    url = str(info.get("url", ""))
    if url.startswith("file://") and not info.get("vcs_info"):
        try:
            done = subprocess.run(["git", "-C", url[len("file://"):], "rev-parse", "HEAD"], capture_output=True,
                                  text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            done = None
        if done is not None and done.returncode == 0:
            out["checkout_head_at_run"] = done.stdout.strip()
    return out


# ------------------------------------------------------------------------------ chart output
def chart_output_to_iuv(coarse_segm: Any, fine_segm: Any, u: Any, v: Any, box_xyxy: Sequence[float],
                        image_hw: tuple[int, int]) -> IUV:
    """One instance's DensePose chart output → I/U/V maps of the whole image.

    ``coarse_segm`` [1, K, h, w] (K = 2 or 15, index 0 = background), ``fine_segm``, ``u``, ``v``
    [1, 25, h, w] are box-local scores/estimates (torch tensors or arrays); ``box_xyxy`` is the box in
    image pixels.  As in DensePose: every map is resampled bilinearly (align_corners=False) to the
    box's integer size; a pixel's label is the fine argmax where the coarse argmax is foreground, and
    its U, V come from that label's channel.  U and V are clamped to [0, 1]."""
    import torch
    import torch.nn.functional as F

    def as_tensor(x: Any) -> "torch.Tensor":
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
        t = t.detach().to(torch.float32)
        return t if t.ndim == 4 else t.unsqueeze(0)

    coarse, fine, tu, tv = (as_tensor(t) for t in (coarse_segm, fine_segm, u, v))
    x0, y0, x1, y1 = (float(b) for b in box_xyxy)
    bw, bh = max(int(x1 - x0), 1), max(int(y1 - y0), 1)  # detectron2's make_int_box on XYWH

    def resample(t: "torch.Tensor") -> "torch.Tensor":
        return F.interpolate(t, (bh, bw), mode="bilinear", align_corners=False)[0]

    foreground = resample(coarse).argmax(dim=0) > 0
    labels = resample(fine).argmax(dim=0) * foreground
    index = labels.unsqueeze(0)
    uv = torch.stack([resample(tu).gather(0, index)[0], resample(tv).gather(0, index)[0]])
    uv = torch.where(labels.unsqueeze(0) > 0, uv.clamp(0, 1), torch.zeros_like(uv))
    iuv, _ = paste_box_results(image_hw, [[x0, y0, x1, y1]], [labels.cpu().numpy().astype(np.uint8)],
                               [uv.cpu().numpy()])
    return iuv


# ------------------------------------------------------------------------------- estimator
class DensePoseEstimator(Estimator):
    """detectron2 DensePose on the given crops (the crop is the box)."""

    name = "densepose"
    batch_size = 32
    model_settings = ("config_sha256", "weights_sha256", "weights")

    def __init__(self, dataset_root: str | Path, config: str = "", weights: str = "", device: str = "auto",
                 min_size: int = 256, max_size: int = 512, min_body_fraction: float = 0.01,
                 batching: str = "shape", threads: int = 1) -> None:
        super().__init__(dataset_root)
        if importlib.util.find_spec("detectron2") is None or importlib.util.find_spec("densepose") is None:
            raise EstimatorError(INSTALL_HINT)
        if min_size < 16 or max_size < min_size:
            raise EstimatorError(f"estimator 'densepose': need 16 <= min_size <= max_size, got {min_size}, {max_size}")
        if not 0 <= min_body_fraction < 1:
            raise EstimatorError(f"estimator 'densepose': min_body_fraction must be in [0, 1), got {min_body_fraction}")
        if batching not in BATCHING:
            raise EstimatorError(f"estimator 'densepose': batching must be one of {', '.join(BATCHING)}, not {batching!r}")
        if threads < 1:
            raise EstimatorError(f"estimator 'densepose': threads must be at least 1, not {threads} (it is the model's "
                                 "own intra-op thread count, a setting of the store; use --workers N for N cores)")
        self.threads = int(threads)
        if not config:
            raise EstimatorError(
                "estimator 'densepose' needs config=PATH to a DensePose yaml (e.g. detectron2's "
                "projects/DensePose/configs/densepose_rcnn_R_50_FPN_s1x.yaml) and weights=PATH|URL|zoo name "
                f"(one of {', '.join(MODEL_ZOO)}) or weights={RANDOM_WEIGHTS} for a smoke test")
        self.config = str(Path(config).expanduser())
        if not Path(self.config).is_file():
            raise EstimatorError(f"estimator 'densepose': config file {self.config} does not exist")
        self.config_sha256 = config_digest(self.config)
        self.zoo_name: str | None = None
        if not weights:
            self.zoo_name = ZOO_CONFIG_DIGESTS.get(self.config_sha256)
            if self.zoo_name is None:
                raise EstimatorError(
                    f"estimator 'densepose': the content of {self.config} is not one of the model zoo's configs "
                    f"({', '.join(MODEL_ZOO)}), so pass weights=PATH or URL (or weights={RANDOM_WEIGHTS} for a smoke test)")
            weights = self.zoo_name
        elif weights in MODEL_ZOO:
            self.zoo_name = weights
        self.weights = MODEL_ZOO.get(weights, weights)
        self.random = self.weights == RANDOM_WEIGHTS
        if not self.random and "://" not in self.weights:
            self.weights = str(Path(self.weights).expanduser())
            if not Path(self.weights).is_file():
                raise EstimatorError(f"estimator 'densepose': weights file {self.weights} does not exist "
                                     f"(pass weights=PATH, URL, a model-zoo name or {RANDOM_WEIGHTS})")
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.min_body_fraction = float(min_body_fraction)
        self.batching = batching
        self.weights_sha256: str | None = None
        self._model, self._input_format, self.device = self._build(device)

    # ------------------------------------------------------------------------ model
    def _build(self, device: str) -> tuple[Any, str, str]:
        try:
            import torch
            from densepose import add_densepose_config
            from detectron2.config import get_cfg
            from detectron2.modeling import build_model
        except ImportError:
            raise EstimatorError(INSTALL_HINT) from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        cfg = get_cfg()
        add_densepose_config(cfg)
        try:
            cfg.merge_from_file(self.config)
        except Exception as e:  # noqa: BLE001 - yaml errors, unknown keys (e.g. another project's config)
            raise EstimatorError(f"estimator 'densepose': {self.config} is not a DensePose config ({_one_line(e)})") from None
        heads = str(cfg.MODEL.ROI_HEADS.NAME)
        if "DensePose" not in heads or not cfg.MODEL.DENSEPOSE_ON:
            raise EstimatorError(
                f"estimator 'densepose': {self.config} is not a DensePose config: its ROI heads are {heads}"
                f"{'' if cfg.MODEL.DENSEPOSE_ON else ' with MODEL.DENSEPOSE_ON false'}, which give no DensePose "
                "output (e.g. a COCO detection or Mask R-CNN config); use a densepose_rcnn_* config from "
                "projects/DensePose/configs/")
        predictor = str(cfg.MODEL.ROI_DENSEPOSE_HEAD.PREDICTOR_NAME)
        if "Embedding" in predictor:
            raise EstimatorError(f"estimator 'densepose': {self.config} is a CSE (continuous surface embedding) "
                                 f"config ({predictor}), not a chart-based (IUV) one: use a densepose_rcnn_* config "
                                 "from projects/DensePose/configs/, not from configs/cse/")
        cfg.MODEL.WEIGHTS = "" if self.random else self.weights
        cfg.MODEL.DEVICE = device
        cfg.freeze()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)  # random weights are the same in every process and run
            model = build_model(cfg).eval()
        if self.random:
            log.warning("densepose: random weights (weights=random, seed %d): the store is for smoke tests only",
                        RANDOM_SEED)
        else:
            self._load_weights(model)
        if device.startswith("cuda"):  # no benchmark-chosen kernels: the same algorithms in every run
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.software = software_versions()
        return model, cfg.INPUT.FORMAT, device

    def _load_weights(self, model: Any) -> None:
        """Fetch, read and check the weights; any problem is one sentence (before any image is processed)."""
        from detectron2.checkpoint import DetectionCheckpointer

        remote = "://" in self.weights
        checkpointer = DetectionCheckpointer(model)
        if remote:
            log.info("fetching DensePose weights %s (cached by detectron2 after the first time)", self.weights)
        try:
            local = checkpointer.path_manager.get_local_path(self.weights)
        except Exception as e:  # noqa: BLE001 - URLError, HTTPError, timeouts, unknown schemes
            raise EstimatorError(
                f"estimator 'densepose': cannot fetch the weights {self.weights} ({_one_line(e)}): check the network, "
                "or download the file elsewhere and pass weights=PATH") from None
        if not Path(local).is_file():
            raise EstimatorError(f"estimator 'densepose': fetching {self.weights} gave no file ({local})")
        self.weights_sha256 = file_sha256(local)
        # DetectionCheckpointer.load logs what did not fit and returns only the checkpoint's other entries:
        # keep the incompatible keys its _load_model step computes, to refuse weights that do not fit
        found: list[Any] = []
        raw_keys: list[str] = []  # the checkpoint's tensor names as stored (before detectron2 renames Caffe2 ones)
        load_model = checkpointer._load_model

        def checked_load_model(checkpoint: Any) -> Any:
            raw_keys.extend(str(k) for k in (checkpoint.get("model") or {}))
            found.append(load_model(checkpoint))
            return found[-1]

        checkpointer._load_model = checked_load_model
        checkpointer._log_incompatible_keys = lambda incompatible: None  # said below, in one sentence
        # model-zoo .pkl weights are pickles from Facebook's download server; a local file is the user's own
        try:
            checkpointer.load(local)
        except Exception as e:  # noqa: BLE001 - truncated, not a pickle/torch file, wrong format
            what = _described_file(local)
            if what:
                raise EstimatorError(f"estimator 'densepose': cannot read the weights {local}: it is {what}, not a "
                                     "detectron2 DensePose checkpoint (.pkl or .pth)") from None
            raise EstimatorError(
                f"estimator 'densepose': cannot read the weights {local} ({_one_line(e)}): pass a detectron2 "
                "DensePose checkpoint (.pkl or .pth)") from None
        if not found or found[-1] is None:
            log.warning("densepose: this detectron2 does not report which tensors of %s fit the model; not checked",
                        self.weights)
            return
        self._check_fit(model, found[-1], raw_keys)

    def _check_fit(self, model: Any, incompatible: Any, raw_keys: list[str]) -> None:
        """Refuse weights that do not fit the model either way: tensors of the model missing from them or of
        another shape, or tensors of the model's modules (backbone, heads) the model does not have, i.e. a
        checkpoint of another model; the sentence names the backbone each has when their depths differ."""
        state = model.state_dict()
        ours, theirs = backbone_blocks(state), backbone_blocks(raw_keys)
        config = Path(self.config).name
        other_model = ""
        if ours and theirs and ours != theirs:
            hint = RESNETS.get(theirs, ("", "the config they were trained with"))[1]
            other_model = (f"they hold {describe_backbone(theirs)} and the config builds {describe_backbone(ours)}: "
                           f"pass the config they were trained with ({hint}) or weights trained with {config}")
        missing = list(getattr(incompatible, "missing_keys", []) or [])
        wrong = [k for k, *_ in (getattr(incompatible, "incorrect_shapes", []) or [])]
        if missing or wrong:
            bad = sorted(set(missing) | set(wrong))
            raise EstimatorError(
                f"estimator 'densepose': the weights {self.weights} do not fit the config {config}: "
                f"{len(bad)} of {len(state)} model tensors are missing or of another shape (e.g. {', '.join(bad[:3])}); "
                + (other_model or "pass the weights trained with this config"))
        modules = {name for name, _ in model.named_children()}
        unexpected = list(getattr(incompatible, "unexpected_keys", []) or [])
        foreign = [k for k in unexpected if k.split(".")[0] in modules]
        if foreign or other_model:
            extra = f"{len(foreign)} of their tensors are not in this model (e.g. {', '.join(foreign[:2])}); " if foreign else ""
            raise EstimatorError(
                f"estimator 'densepose': the weights {self.weights} are of another model than the config {config}: "
                + extra + (other_model or "pass the config they were trained with, or weights trained with this one"))
        if unexpected:
            log.warning("densepose: %d tensors of %s are not used by the model (e.g. %s)", len(unexpected),
                        self.weights, ", ".join(unexpected[:3]))

    def settings(self) -> dict[str, Any]:
        """Contents, never paths: moving or renaming the config or the weights changes nothing here."""
        out: dict[str, Any] = {
            "config_sha256": self.config_sha256, "weights_sha256": self.weights_sha256,
            "min_size": self.min_size, "max_size": self.max_size, "min_body_fraction": self.min_body_fraction,
            "box": "whole crop (no detection)", "batching": self.batching, "threads": self.threads,
            "device_type": self.device.split(":")[0], "software": self.software,
        }
        if self.random:
            out["weights"] = f"{RANDOM_WEIGHTS} (seed {RANDOM_SEED})"
            out["testing_only"] = RANDOM_WARNING
        return out

    def provenance(self) -> dict[str, Any]:
        """Where the config and the weights were read from, the zoo name, and where detectron2 came from."""
        out: dict[str, Any] = {"config": self.config, "weights": self.weights, "device": self.device,
                               "detectron2": _source_of("detectron2"), "densepose": _source_of("detectron2-densepose")}
        if self.zoo_name:
            out["model_zoo"] = self.zoo_name
        out["hardware"] = self._hardware()
        return out

    def _hardware(self) -> dict[str, str]:
        """What the kernels depend on beyond the settings: the CPU's vector instructions, or the GPU. Other
        hardware may give other low-order bits, so the runner refuses to mix shards of two kinds in one store."""
        import torch

        if self.device.startswith("cuda"):
            return {"gpu": torch.cuda.get_device_name(torch.device(self.device))}
        try:
            return {"cpu_capability": str(torch.backends.cpu.get_cpu_capability())}
        except AttributeError:  # an older torch
            return {}

    # ---------------------------------------------------------------------- inference
    def _scaled_size(self, h: int, w: int) -> tuple[int, int]:
        if self.batching == "fixed":
            return self.max_size, self.min_size
        scale = min(self.min_size / min(h, w), self.max_size / max(h, w))
        return max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)

    def _run(self, images: Sequence[np.ndarray]) -> list[Any]:
        """The model's per-image outputs for crops that all resize to one shape (no padding differences)."""
        import torch
        from detectron2.structures import Boxes, Instances

        inputs, given = [], []
        for image in images:
            h, w = image.shape[:2]
            nh, nw = self._scaled_size(h, w)
            resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            if self._input_format == "BGR":
                resized = resized[..., ::-1]
            inputs.append({"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))),
                           "height": h, "width": w})
            inst = Instances((nh, nw))
            inst.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, float(nw), float(nh)]], device=self.device))
            inst.pred_classes = torch.zeros(1, dtype=torch.int64, device=self.device)
            given.append(inst)
        with torch.inference_mode(), pinned_threads(self.threads):
            return list(self._model.inference(inputs, detected_instances=given, do_postprocess=True))

    def shape_groups(self, images: Sequence[np.ndarray]) -> list[list[int]]:
        """The indices of ``images`` by resized shape: each group is one forward pass."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(self._scaled_size(*image.shape[:2]), []).append(i)
        return list(groups.values())

    def infer(self, images: Sequence[np.ndarray]) -> list[Any]:
        """The model's output for each crop, crops of one resized shape run together."""
        outputs: list[Any] = [None] * len(images)
        for members in self.shape_groups(images):
            for i, out in zip(members, self._run([images[i] for i in members])):
                outputs[i] = out
        return outputs

    def estimate(self, images: Sequence[np.ndarray], paths: Sequence[str | Path],
                 keys: Sequence[str]) -> list[IUV | None]:
        outputs = self.infer(images)
        with pinned_threads(self.threads):
            return [self.to_iuv(image, out) for image, out in zip(images, outputs)]

    def to_iuv(self, image: np.ndarray, out: Any) -> IUV | None:
        """One crop's model output as full-crop I/U/V maps (None: too few body pixels)."""
        dp = out["instances"].pred_densepose
        if not hasattr(dp, "u"):
            raise EstimatorError(f"estimator 'densepose': {Path(self.config).name} is not a chart-based (IUV) "
                                 "DensePose model: use a densepose_rcnn_* config, not a CSE one")
        h, w = image.shape[:2]
        # the given box is the whole crop; use it exactly rather than the rescaled float box
        iuv = chart_output_to_iuv(dp.coarse_segm[:1], dp.fine_segm[:1], dp.u[:1], dp.v[:1], (0, 0, w, h), (h, w))
        return iuv if iuv.body_fraction > self.min_body_fraction else None
