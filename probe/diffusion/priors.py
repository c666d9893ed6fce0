"""Diffusion priors: the noise predictor ε(z, t) and the map from the diffusion variable z to an image.

One interface serves pixel DDPMs (z is the image; ``decode`` is the identity) and latent Stable
Diffusion (z is the VAE latent; ``decode`` runs the VAE decoder *with* gradients, because the guided
sampler back-propagates the feature loss through it). The sampler needs nothing else: the cumulative
noise schedule ᾱ, the shape of z, and the image the prior produces.

Spec forms accepted by :func:`load_prior`:
  ``bundled:NAME``   a prior shipped with probe (``probe models list``)
  ``PATH``           a local diffusers folder: DDPMPipeline layout (unet/ + scheduler/) or Stable
                     Diffusion layout (unet/, vae/, text_encoder/, tokenizer/, scheduler/)
  ``OWNER/NAME``     a Hugging Face hub repository in either layout (``hf:OWNER/NAME`` also works)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from probe.errors import InputError, UsageError
from probe.models.bundled import BUNDLED_DIR

DEFAULT_PRIOR = "bundled:fashion-ddpm"
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
PRECISIONS = ("fp32", "bf16")
CHECKPOINTS = ("none", "vae", "unet", "all")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


@dataclass
class Prior:
    """A loaded diffusion prior with explicit state.

    ``alphas_cumprod``/``betas`` are float64 CPU tensors of length ``num_train_timesteps`` (the sampler
    does its schedule arithmetic in double precision); ``latent_shape`` is z's [C, H, W]; ``channels``
    and ``image_size`` describe the decoded image. ``text_embedding`` is the empty-prompt condition of a
    Stable Diffusion UNet (computed once; the paper's prior is unconditional).

    Compute options (they change cost, not the method; ``benchmarks/sd_cost.py`` measures them):
    ``precision`` "bf16" runs the UNet and the VAE decoder under bfloat16 autocast (weights stay fp32;
    ε and x̂0 come back as float32, so the guidance arithmetic and the loss stay float32);
    ``checkpoint`` turns on gradient checkpointing of the VAE decoder, the UNet or both ("all"):
    activations are recomputed in the backward pass instead of stored, trading time for memory.
    """

    spec: str
    unet: nn.Module
    alphas_cumprod: torch.Tensor
    betas: torch.Tensor
    latent_shape: tuple[int, int, int]
    channels: int
    image_size: int
    prediction_type: str = "epsilon"
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    vae: nn.Module | None = None
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    text_embedding: torch.Tensor | None = None
    info: dict = field(default_factory=dict)
    precision: str = "fp32"
    checkpoint: str = "none"

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise UsageError(f"{self.spec}: unsupported prediction type {self.prediction_type!r}")
        self.unet.eval().requires_grad_(False)
        if self.vae is not None:
            self.vae.eval().requires_grad_(False)
        self.alphas_cumprod = self.alphas_cumprod.detach().double().cpu()
        self.betas = self.betas.detach().double().cpu()
        self.configure(self.precision, self.checkpoint)

    def configure(self, precision: str | None = None, checkpoint: str | None = None) -> Prior:
        """Set the compute options (see the class docstring); ``None`` keeps the current value."""
        check_compute(precision, checkpoint)
        self.precision = self.precision if precision is None else precision
        self.checkpoint = self.checkpoint if checkpoint is None else checkpoint
        _set_checkpointing(self.unet, checkpoint in ("unet", "all"))
        if self.vae is not None:
            _set_checkpointing(self.vae, checkpoint in ("vae", "all"))
        return self

    def _autocast(self, device: torch.device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    # -- schedule ---------------------------------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def to(self, device: str | torch.device) -> Prior:
        self.unet.to(device)
        if self.vae is not None:
            self.vae.to(device)
        if self.text_embedding is not None:
            self.text_embedding = self.text_embedding.to(device)
        return self

    # -- the two maps the sampler uses --------------------------------------------------------------------
    def eps(self, z: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Noise prediction ε(z_t, t), unconditional; differentiable with respect to ``z``. ``t`` is one
        timestep for the whole batch or a [B] tensor, one per chain.

        v- and x0-predicting networks are converted to ε with the schedule, so the guided step is the
        same for every prior.
        """
        b = z.shape[0]
        if isinstance(t, torch.Tensor) and t.dim() == 1:  # one timestep per chain (the sampler's queue)
            tt = t.to(device=z.device, dtype=torch.long)
        else:
            tt = torch.full((b,), int(t), device=z.device, dtype=torch.long)
        zin = z.to(self.dtype)
        with self._autocast(z.device):
            if self.text_embedding is not None:
                cond = self.text_embedding.expand(b, -1, -1)
                out = self.unet(zin, tt, encoder_hidden_states=cond).sample
            else:
                out = self.unet(zin, tt).sample
        out = out.float()
        c = self.latent_shape[0]
        if out.shape[1] == 2 * c:  # learned-variance models (improved DDPM): the first half is the mean part
            out = out[:, :c]
        if self.prediction_type == "epsilon":
            return out
        if tt.unique().numel() == 1:
            a = float(self.alphas_cumprod[int(tt[0])])
            sa, s1a = a ** 0.5, (1 - a) ** 0.5
        else:  # per-chain coefficients, each computed in float64 as the scalar path does
            a64 = self.alphas_cumprod[tt.cpu()]
            shape = (-1, *([1] * (z.dim() - 1)))
            sa, s1a = (a64.sqrt().float().to(z.device).view(shape), (1 - a64).sqrt().float().to(z.device).view(shape))
        if self.prediction_type == "v_prediction":
            return sa * out + s1a * z
        return (z - sa * out) / s1a

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """x̂0 in (about) [−1, 1] from the predicted clean variable; keeps gradients."""
        if self.vae is None:
            return z0
        with self._autocast(z0.device):
            x = self.vae.decode((z0 / self.scaling_factor + self.shift_factor).to(self.dtype)).sample
        return x.float()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The diffusion variable z0 of an image x in [−1, 1] (the inverse of :meth:`decode`): the image
        itself for pixel priors, the VAE posterior mean (scaled as the UNet expects) for latent ones."""
        if self.vae is None:
            return x
        latent = self.vae.encode(x.to(self.dtype)).latent_dist.mean
        return ((latent - self.shift_factor) * self.scaling_factor).float()

    def describe(self) -> dict:
        return {"spec": self.spec, "latent": self.is_latent, "latent_shape": list(self.latent_shape),
                "channels": self.channels, "image_size": self.image_size,
                "num_train_timesteps": self.num_train_timesteps, "prediction_type": self.prediction_type,
                "precision": self.precision, "checkpoint": self.checkpoint, **self.info}


def weights_digest(spec: str | None) -> str | None:
    """sha256 over a local (or bundled) prior's weight files: what the caches of a prior's own samples (seed
    pool, realism reference) are keyed by, so a retrained prior gets new ones. Files over 64 MB (latent
    priors) enter by name, size and modification time. None for hub specs (the spec names the weights)."""
    spec = str(spec or "")
    root = BUNDLED_DIR / spec.split(":", 1)[1] if spec.startswith("bundled:") else Path(spec)
    if not spec or not root.exists():
        return None
    files = sorted(f for f in (root.rglob("*") if root.is_dir() else [root]) if f.suffix in WEIGHT_SUFFIXES)
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        st = f.stat()
        h.update(f.read_bytes() if st.st_size <= 64 << 20 else f"{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()


def check_compute(precision: str | None, checkpoint: str | None) -> None:
    """Refuse a compute option :meth:`Prior.configure` does not know (None = not given), so a decode
    option fails before the models load, with the message ``configure`` gives."""
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise UsageError(f"gradient checkpointing must be one of {', '.join(CHECKPOINTS)}, not {checkpoint!r}")


def _set_checkpointing(model: nn.Module, on: bool) -> None:
    """diffusers models checkpoint their blocks whenever grad is enabled and the flag is on (eval mode too)."""
    if on and getattr(model, "_supports_gradient_checkpointing", False):
        model.enable_gradient_checkpointing()
    elif not on and getattr(model, "is_gradient_checkpointing", False):
        model.disable_gradient_checkpointing()


def _scheduler_state(scheduler: object, latent: bool = False) -> dict:
    """ᾱ, β and the sampling conventions from any diffusers scheduler config (SD ships a PNDM config).

    Clipping x̂0 to [−1, 1] is a pixel-DDPM convention (DDPMScheduler's clip_sample); latents are never
    clipped, whatever a foreign scheduler config defaults to.
    """
    from diffusers import DDPMScheduler

    cfg = dict(scheduler.config)
    ddpm = DDPMScheduler.from_config(cfg)
    return {"alphas_cumprod": ddpm.alphas_cumprod.clone(), "betas": ddpm.betas.clone(),
            "prediction_type": cfg.get("prediction_type", "epsilon"),
            "clip_sample": bool(cfg.get("clip_sample", False)) and not latent,
            "clip_sample_range": float(cfg.get("clip_sample_range", 1.0))}


def pixel_prior(spec: str, unet: nn.Module, scheduler: object) -> Prior:
    """A pixel-space DDPM (DDPMPipeline layout): z is the image in [−1, 1]."""
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else int(cfg.sample_size[0])
    c = int(cfg.in_channels)
    return Prior(spec=spec, unet=unet, latent_shape=(c, size, size), channels=c, image_size=size,
                 info={"kind": "pixel"}, **_scheduler_state(scheduler))


@torch.no_grad()
def empty_prompt_embedding(text_encoder: nn.Module, tokenizer: object) -> torch.Tensor:
    """The embedding of "" that makes an SD UNet unconditional (the paper's c_empty), [1, L, D]."""
    length = int(tokenizer.model_max_length)
    if length > 100_000:  # a tokenizer saved without a length: use the text model's positions (77 for SD)
        length = int(text_encoder.config.max_position_embeddings)
    ids = tokenizer([""], padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0].detach()


def latent_prior(spec: str, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer: object,
                 scheduler: object) -> Prior:
    """A Stable-Diffusion-style latent prior; the text encoder is used once for the empty prompt."""
    emb = empty_prompt_embedding(text_encoder, tokenizer)
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else int(cfg.sample_size[0])
    down = 2 ** (len(vae.config.block_out_channels) - 1)
    return Prior(spec=spec, unet=unet, vae=vae, text_embedding=emb,
                 latent_shape=(int(cfg.in_channels), size, size), channels=int(vae.config.out_channels),
                 image_size=size * down, scaling_factor=float(vae.config.scaling_factor or 1.0),
                 shift_factor=float(getattr(vae.config, "shift_factor", None) or 0.0),
                 info={"kind": "latent"}, **_scheduler_state(scheduler, latent=True))


def _quiet_loaders() -> None:
    """diffusers/transformers print progress bars and 'install accelerate' notes while loading; probe
    reports what it loaded itself, so those only clutter the CLI's output."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()


def _load_components(source: str, layout: str, spec: str, **kw: object) -> Prior:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel

    _quiet_loaders()

    scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw)
    if layout == "pixel":
        unet = UNet2DModel.from_pretrained(source, subfolder="unet", **kw)
        return pixel_prior(spec, unet, scheduler)
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kw)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
    prior = latent_prior(spec, unet, vae, text_encoder, tokenizer, scheduler)
    del text_encoder
    return prior


def _layout_of_dir(root: Path) -> str:
    """'pixel' or 'latent' from which component folders exist; InputError naming what is missing."""
    if not root.is_dir():
        raise InputError(f"{root}: prior directory does not exist")
    has = {p.name for p in root.iterdir() if p.is_dir()}
    if {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= has:
        return "latent"
    if {"unet", "scheduler"} <= has and "vae" not in has:
        return "pixel"
    need = ("unet/ and scheduler/ (DDPM) or unet/, vae/, text_encoder/, tokenizer/, scheduler/ "
            "(Stable Diffusion)")
    raise InputError(f"{root}: not a diffusers prior folder: needs {need}")


def _layout_of_index(index: dict) -> str:
    if "vae" in index and "unet" in index:
        return "latent"
    if "unet" in index and "scheduler" in index:
        return "pixel"
    name = index.get("_class_name", "?")
    raise InputError(f"pipeline {name} is neither a DDPM nor a Stable Diffusion layout")


def load_prior(spec: str | Prior | None = None, device: str | torch.device | None = None,
               precision: str | None = None, checkpoint: str | None = None) -> Prior:
    """A diffusion prior: ``bundled:fashion-ddpm`` (default), a diffusers folder or hub id (see the module
    docstring), or a Prior as is (moved to ``device`` when given), on ``device``. ``precision`` ("fp32",
    "bf16") and ``checkpoint`` ("none", "vae", "unet", "all") set how it computes (:meth:`Prior.configure`,
    also on a Prior passed in); None keeps what it has."""
    check_compute(precision, checkpoint)  # before a slow load
    if isinstance(spec, Prior):
        prior = spec if device is None or torch.device(device) == spec.device else spec.to(device)
    else:
        prior = _load_spec(spec or DEFAULT_PRIOR, device)
    return prior.configure(precision, checkpoint)


def _load_spec(spec: str, device: str | torch.device | None) -> Prior:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("bundled:"):
        from probe.models.bundled import bundled_entry

        entry = bundled_entry(spec.split(":", 1)[1], "prior")
        root = entry.require()
        return _load_local(root, spec, recipe=entry.recipe).to(device)
    hub = spec[3:] if spec.startswith("hf:") else None
    path = Path(spec).expanduser()
    if hub is None and path.exists():
        return _load_local(path, spec).to(device)
    repo = hub or spec
    if hub is None and (repo.count("/") != 1 or repo.startswith((".", "/", "~"))):
        raise InputError(f"{path}: prior directory does not exist")
    return _load_hub(repo, spec).to(device)


def _load_local(root: Path, spec: str, recipe: str | None = None) -> Prior:
    layout = _layout_of_dir(root)
    try:
        return _load_components(str(root), layout, spec)
    except (OSError, ValueError, KeyError, RuntimeError, json.JSONDecodeError) as exc:
        hint = f"; rebuild it with '{recipe}'" if recipe else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{root}: prior is unreadable ({first[:160]}){hint}") from exc


def _load_hub(repo: str, spec: str) -> Prior:
    """Hub repositories: read model_index.json to pick the layout, then load the components.

    Offline (or with HF_HUB_OFFLINE set) only the local cache is used, without retries (probe.models.hub).
    """
    from probe.errors import ProbeError
    from probe.models.hub import hub_access

    with hub_access(repo):
        try:
            from huggingface_hub import hf_hub_download

            index = json.loads(Path(hf_hub_download(repo, "model_index.json")).read_text())
        except ProbeError:
            raise
        except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated: all mean "cannot get it"
            raise InputError(f"{repo}: no such prior directory, and it could not be fetched as a Hugging Face "
                             f"hub repository ({type(exc).__name__}: {_first(exc)})") from exc
        layout = _layout_of_index(index)
        try:
            return _load_components(repo, layout, spec)
        except ProbeError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{repo}: hub prior could not be loaded ({type(exc).__name__}: {_first(exc)})") from exc


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else ""
