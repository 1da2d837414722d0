"""OpenCLIP backbones: the image tower of an ``open_clip_torch`` model as a timm-like classifier.

A ``models.<name>`` entry names an OpenCLIP architecture instead of a timm one::

    clip_b16: {open_clip: ViT-B-16, weights: hub:openai}          # open_clip's pretrained tag (network once)
    clip_b16: {open_clip: ViT-B-16-quickgelu, weights: /ckpt/open_clip_model.safetensors}   # offline
    tiny:     {open_clip: tiny-vit, config: tests/tiny-vit.json, weights: none}             # random init

Optional keys: ``normalize_features`` (default true: L2-normalise the image features before the head, as
WiSE-FT, model soups and the zero-shot head need; false: ``encode_image``'s features as they are, as
transfer_learning's ``ClipModel`` fits LP and fine-tunes, AnanyaKumar/transfer_learning@13c3e2b:
unlabeled_extrapolation/models/clip_model.py:197-198), ``config`` (an OpenCLIP model-config JSON file or
folder, registered with ``open_clip.add_model_config`` before the name is looked up), ``model_kwargs``
(overrides of that config, e.g. ``{quick_gelu: true}``), ``mean`` / ``std`` (normalisation; default: the tag's, else
OpenAI's). ``weights``: ``hub:<tag>`` (open_clip downloads the tag's checkpoint through the Hugging
Face cache; ``HF_HUB_OFFLINE=1`` uses the cache only), a checkpoint file (a state dict: safetensors,
or .pt/.bin read with ``weights_only=True``), or ``none``. OpenAI's tags were trained with
QuickGELU; ``hub:openai`` turns it on, a file of those weights needs a ``-quickgelu`` model name
(or ``model_kwargs: {quick_gelu: true}``).

:class:`OpenCLIPClassifier` holds only the image tower (``visual``, under open_clip's own names,
so a CLIP checkpoint's ``visual.*`` keys are the classifier's keys; CLIP's projection stays in it)
and a linear ``head`` over its (by default L2-normalised) image features. The text tower lives in
:mod:`pipeline.models.zeroshot`.
"""
from __future__ import annotations

import contextlib
import difflib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import compat

compat.apply()
import open_clip  # noqa: E402

from pipeline.download.paths import openclip_checkpoint_path  # noqa: E402
from pipeline.io import InputError  # noqa: E402
from pipeline.models.state_files import (  # noqa: E402
    CheckpointError,
    check_fits,
    is_torchscript,
    read_state,
    summarise_load_error,
)

HUB_PREFIX = "hub:"
DEFAULT_NORMALIZE = True   # models.<name>.normalize_features
_REGISTERED: set[str] = set()


class OpenCLIPConfigError(InputError):
    """A ``models.<name>`` OpenCLIP entry that cannot be built; the one-line message names the key."""


def is_openclip(model_cfg: Mapping) -> bool:
    """True for an entry that names an OpenCLIP architecture (``open_clip:``) rather than a timm one."""
    return "open_clip" in model_cfg


def _key(name: str, key: str) -> str:
    return f"models.{name}.{key}"


def register_config(model_cfg: Mapping, name: str = "<model>") -> None:
    """Register the entry's own OpenCLIP model-config JSON (``config:``), once per path."""
    path = model_cfg.get("config")
    if not path:
        return
    resolved = Path(str(path)).expanduser().resolve()
    if not resolved.exists():
        raise OpenCLIPConfigError(f"{_key(name, 'config')}: OpenCLIP model config not found: {resolved}")
    arch = str(model_cfg["open_clip"])
    if resolved.is_file() and resolved.stem != arch:
        # open_clip names a registered config after its file, so a mismatch would look up another model.
        raise OpenCLIPConfigError(f"{_key(name, 'config')}: {resolved} registers OpenCLIP model {resolved.stem!r}, "
                                  f"not {arch!r} (open_clip names a config by its file name)")
    if str(resolved) not in _REGISTERED:
        open_clip.add_model_config(resolved)
        _REGISTERED.add(str(resolved))


def check_arch(model_cfg: Mapping, name: str = "<model>") -> str:
    """The entry's OpenCLIP model name, after checking open_clip knows it (close names in the error)."""
    register_config(model_cfg, name)
    arch = str(model_cfg["open_clip"])
    known = open_clip.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=6, cutoff=0.4)
        raise OpenCLIPConfigError(f"{_key(name, 'open_clip')}: unknown OpenCLIP model {arch!r}; "
                                  f"close names: {', '.join(close) if close else '(none)'} "
                                  f"(all: open_clip.list_models())")
    return arch


def parse_weights(value: object) -> tuple[str, str | None]:
    """``("none", None)``, ``("hub", tag)`` or ``("file", path)`` for a ``weights:`` value."""
    text = "none" if value is None else str(value).strip()
    if text.lower() in ("none", ""):
        return "none", None
    if text.startswith(HUB_PREFIX):
        return "hub", text[len(HUB_PREFIX):]
    return "file", text


def check_entry(name: str, model_cfg: Mapping) -> None:
    """Before any job runs: the architecture, the pretrained tag or the weights file exist (one-line errors)."""
    arch = check_arch(model_cfg, name)
    kind, arg = parse_weights(model_cfg.get("weights"))
    if kind == "hub" and not open_clip.get_pretrained_cfg(arch, arg or ""):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise OpenCLIPConfigError(f"{_key(name, 'weights')}: OpenCLIP has no pretrained tag {arg!r} for {arch} "
                                  f"(tags: {', '.join(tags) if tags else 'none'})")
    if kind == "file" and not Path(arg).is_file():
        raise OpenCLIPConfigError(f"{_key(name, 'weights')}: weights file not found: {arg}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Mute open_clip's root-logger warning "No pretrained weights loaded": weights are loaded after creation."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _arch_kwargs(model_cfg: Mapping, arch: str) -> dict:
    """open_clip.create_model keyword arguments fixing the architecture (identical in every stage)."""
    kwargs = dict(model_cfg.get("model_kwargs") or {})
    kind, tag = parse_weights(model_cfg.get("weights"))
    if kind == "hub" and open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu"):
        # open_clip only warns when a QuickGELU tag (OpenAI's) meets a GELU config: every
        # activation would then differ from training. Follow the tag instead.
        kwargs["force_quick_gelu"] = True
    return kwargs


def preprocess_of(model_cfg: Mapping, arch: str, visual: nn.Module) -> dict:
    """open_clip's eval preprocessing as timm data-config keys: its interpolation and resize mode (the model
    config's, then the pretrained tag's), ``crop_pct`` 1: ``Resize(size) + CenterCrop(size)`` for ``shortest``."""
    kind, tag = parse_weights(model_cfg.get("weights"))
    pre = {**(getattr(visual, "preprocess_cfg", None) or {}),
           **(open_clip.get_pretrained_cfg(arch, tag) if kind == "hub" else {})}
    mode = pre.get("resize_mode") or "shortest"
    return {"interpolation": pre.get("interpolation") or "bicubic", "crop_pct": 1.0,
            "crop_mode": {"shortest": "center", "squash": "squash"}.get(mode, "border")}


def normalization_of(model_cfg: Mapping, arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std): the entry's ``mean``/``std``, else the pretrained tag's, else OpenAI's."""
    kind, tag = parse_weights(model_cfg.get("weights"))
    pre = open_clip.get_pretrained_cfg(arch, tag) if kind == "hub" else {}
    mean = model_cfg.get("mean") or pre.get("mean") or open_clip.OPENAI_DATASET_MEAN
    std = model_cfg.get("std") or pre.get("std") or open_clip.OPENAI_DATASET_STD
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def load_state_file(path: str | Path, key: str = "weights") -> dict[str, torch.Tensor]:
    """A state dict from a safetensors / torch file, never unpickling code.

    TorchScript archives (OpenAI's original ``ViT-B-16.pt``) are refused: loading them runs
    their code. ``{"state_dict": ...}`` wrappers and DataParallel ``module.`` prefixes are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise OpenCLIPConfigError(f"{key}: weights file not found: {path}")
    if path.suffix != ".safetensors" and is_torchscript(path):
        raise CheckpointError(f"{key}: {path} is a TorchScript archive (OpenAI's original .pt), which is not "
                              "loaded; use open_clip's state-dict file of the same weights (e.g. "
                              "open_clip_model.safetensors of hf.co/timm/vit_base_patch16_clip_224.openai)")
    try:
        state = read_state(path)
    except CheckpointError as e:
        raise CheckpointError(f"{key}: {e}") from None
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


def create_clip(model_cfg: Mapping, weights: str | Path | None = None, name: str = "<model>") -> nn.Module:
    """The whole CLIP model (image and text towers), eval mode, float32, on the CPU.

    ``weights``: a state-dict file (the backbone stage's output or a user's checkpoint), or
    None for a random initialisation. Never downloads: hub tags are resolved by
    :func:`resolve_weights`.
    """
    arch = check_arch(model_cfg, name)
    with _quiet():
        # on torch's current default device: the CPU, or "meta" for the shape-only checks before a run
        model = open_clip.create_model(arch, pretrained=None, device=torch.empty(0).device,
                                       **_arch_kwargs(model_cfg, arch))
    if weights is not None:
        state = load_state_file(weights, _key(name, "weights"))
        _load_clip_state(model, state, f"{weights}", arch)
    return model.float().eval()


def check_weights_file(model_cfg: Mapping, name: str = "<model>") -> None:
    """Read an entry's weights file (if it names one) and check it against the architecture on a shapes-only
    (meta) model: the check before any job; :class:`CheckpointError` names the file and the first bad key."""
    kind, arg = parse_weights(model_cfg.get("weights"))
    if kind != "file":
        return
    arch = check_arch(model_cfg, name)
    state = load_state_file(arg, _key(name, "weights"))
    with _quiet():
        model = open_clip.create_model(arch, pretrained=None, device="meta", **_arch_kwargs(model_cfg, arch))
    _fitted(model, state, arg, arch)


def _load_clip_state(model: nn.Module, state: dict[str, torch.Tensor], where: str, arch: str) -> None:
    """Load a full CLIP state dict strictly, after the format fixes open_clip's ``load_checkpoint`` applies."""
    state = _fitted(model, state, where, arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{where} does not fit OpenCLIP {arch}: {summarise_load_error(e)}") from None


def _fitted(model: nn.Module, state: dict[str, torch.Tensor], where: str | Path, arch: str) -> dict:
    """``state`` after open_clip's format fixes, checked to have the model's keys and shapes."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, dict(state))   # third-party layouts (MobileCLIP)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)   # pre-"text." tower names
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    check_fits(state, model.state_dict(), where, f"OpenCLIP {arch}")
    return state


def resolve_weights(model_cfg: Mapping, name: str = "<model>") -> dict[str, torch.Tensor]:
    """The full CLIP state dict an entry's ``weights`` names (for the backbone stage to save).

    ``hub:<tag>`` reads the file ``python -m pipeline fetch`` wrote (``data/hub/open_clip/``), else
    downloads once through open_clip / huggingface_hub (cached; offline with ``HF_HUB_OFFLINE=1`` if
    cached); a file is checked strictly against the architecture.
    """
    check_entry(name, model_cfg)
    arch = str(model_cfg["open_clip"])
    kind, arg = parse_weights(model_cfg.get("weights"))
    if kind == "hub" and openclip_checkpoint_path(arch, arg).is_file():
        model = create_clip(model_cfg, openclip_checkpoint_path(arch, arg), name)   # what fetch put there
    elif kind == "hub":
        try:
            model = open_clip.create_model(arch, pretrained=arg, **_arch_kwargs(model_cfg, arch))
        except RuntimeError as e:
            detail = str(e).splitlines()[0][:200]
            raise OpenCLIPConfigError(f"{_key(name, 'weights')}: could not fetch OpenCLIP {arch} {arg!r} ({detail}); "
                                      f"run `python -m pipeline fetch --params <file>` where there is network (it "
                                      f"writes {openclip_checkpoint_path(arch, arg)}), or set a file path") from None
    else:
        model = create_clip(model_cfg, arg if kind == "file" else None, name)
    return {k: v.detach().float().contiguous().clone() for k, v in model.state_dict().items()}


class OpenCLIPClassifier(nn.Module):
    """An OpenCLIP image tower and a linear head over its L2-normalised (or, with ``normalize=False``, raw) features.

    ``forward(images) = head(normalize(visual(images)))``, images normalised with
    ``pretrained_cfg["mean"/"std"]``; ``num_classes=0`` gives the (normalised) features. The
    attributes the pipeline reads from timm models are here: ``pretrained_cfg`` / ``default_cfg``
    (``mean``, ``std``, ``classifier``, and the eval transform's ``input_size``, ``interpolation``,
    ``crop_pct``, ``crop_mode``: open_clip's preprocess config), ``num_classes``, ``num_features``,
    ``no_weight_decay()``, ``group_matcher()`` (layer decay).
    """

    def __init__(self, visual: nn.Module, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...],
                 arch: str, normalize: bool = DEFAULT_NORMALIZE, preprocess: dict | None = None):
        super().__init__()
        self.visual = visual
        self.normalize = bool(normalize)
        self.num_features = int(visual.output_dim)
        self.num_classes = int(num_classes)
        self.head = nn.Linear(self.num_features, self.num_classes) if self.num_classes > 0 else nn.Identity()
        size = visual.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        self.pretrained_cfg = {"architecture": f"open_clip:{arch}", "mean": tuple(mean), "std": tuple(std),
                               "classifier": "head", "input_size": (3, *size), "num_classes": self.num_classes,
                               "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
                               "normalize_features": self.normalize, **(preprocess or {})}
        self.default_cfg = self.pretrained_cfg

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        # Zero-shot rows are unit text embeddings x logit_scale, so the image side must be unit too.
        features = self.visual(x)
        return F.normalize(features, dim=-1) if self.normalize else features

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Position and class embeddings, as open_clip's ViT lists them (full names)."""
        return {f"visual.{n}" for n in getattr(self.visual, "no_weight_decay", set)()}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style layer grouping for layer-wise lr decay: embedding, blocks, final norm; the head last.

        Only the block indices are capture groups (timm turns captures into ordinals).
        """
        kind = type(self.visual).__name__
        if kind == "VisionTransformer":
            return {"stem": r"^visual\.(?:class_embedding|positional_embedding|conv1|ln_pre)",
                    "blocks": [(r"^visual\.transformer\.resblocks\.(\d+)", None),
                               (r"^visual\.(?:ln_post|proj|attn_pool)", (99999,))]}
        if kind == "ModifiedResNet":
            blocks = r"^visual\.layer(\d+)" if coarse else r"^visual\.layer(\d+)\.(\d+)"
            return {"stem": r"^visual\.(?:conv[123]|bn[123])\.",
                    "blocks": [(blocks, None), (r"^visual\.attnpool", (99999,))]}
        raise ValueError(f"no layer groups for the OpenCLIP image tower {kind} (supported: VisionTransformer, "
                         "ModifiedResNet)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)


def classifier_from_clip(clip: nn.Module, num_classes: int, model_cfg: Mapping) -> OpenCLIPClassifier:
    """The classifier over ``clip``'s image tower (shared, not copied); the text tower is left behind."""
    arch = str(model_cfg["open_clip"])
    mean, std = normalization_of(model_cfg, arch)
    normalize = model_cfg.get("normalize_features", DEFAULT_NORMALIZE)
    return OpenCLIPClassifier(clip.visual, num_classes, mean, std, arch, normalize,
                              preprocess_of(model_cfg, arch, clip.visual))


def model_from_config(model_cfg: Mapping, num_classes: int, weights: str | Path | None,
                      name: str = "<model>") -> OpenCLIPClassifier:
    """The classifier of a ``models.<name>`` OpenCLIP entry (same contract as the timm path).

    ``weights``: the full CLIP state-dict file (the backbone stage's output), or None for a
    random image tower (callers then load a fine-tuned state dict). The head is fresh.
    """
    clip = create_clip(model_cfg, weights, name)
    model = classifier_from_clip(clip, num_classes, model_cfg)
    del clip   # drops the text tower: only the image tower is referenced by the classifier
    return model.train()
