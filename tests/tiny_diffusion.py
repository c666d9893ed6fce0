"""Tiny random diffusion priors and encoders for fast tests (no downloads, a few thousand parameters).

Used by test_sampler.py, test_priors.py and the decode tests. The SD builder writes a complete Stable
Diffusion folder (unet/, vae/, text_encoder/, tokenizer/ with a hand-made BPE vocabulary, scheduler/) so
the real loading path of ``load_prior`` is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from probe.diffusion.priors import Prior, pixel_prior
from probe.models.encoder import Encoder, EncoderParts, Preprocess


def tiny_unet(channels: int = 1, size: int = 16, seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, norm_num_groups=4,
                       block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))


def tiny_scheduler(schedule: str = "squaredcos_cap_v2"):
    from diffusers import DDPMScheduler

    if schedule == "scaled_linear":
        return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                             beta_end=0.012, clip_sample=False)
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, clip_sample=True)


def tiny_pixel_prior(channels: int = 1, size: int = 16, seed: int = 0) -> Prior:
    return pixel_prior("test:tiny-ddpm", tiny_unet(channels, size, seed), tiny_scheduler())


def save_pixel_prior(root: Path, channels: int = 1, size: int = 16) -> Path:
    """A DDPMPipeline folder (unet/ + scheduler/), the layout of the bundled priors."""
    tiny_unet(channels, size).save_pretrained(root / "unet")
    tiny_scheduler().save_pretrained(root / "scheduler")
    return root


class TinyConvNet(nn.Module):
    """A random conv net whose flattened map is the feature (rich enough to steer a 16-px image)."""

    def __init__(self, in_chans: int = 1, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(in_chans, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).flatten(1)


def tiny_encoder(in_chans: int = 1, size: int = 16, seed: int = 0) -> Encoder:
    pre = Preprocess(size=size, mean=(0.5,) * in_chans, std=(0.5,) * in_chans, in_chans=in_chans,
                     interpolation="bilinear")
    parts = EncoderParts(model=TinyConvNet(in_chans, seed), preprocess=pre, embed=lambda m, x: m(x))
    return Encoder("test:tiny-conv", parts)


def _write_tokenizer(root: Path) -> None:
    """A minimal CLIP BPE vocabulary: special tokens and single characters (with and without </w>)."""
    chars = list("abcdefghijklmnopqrstuvwxyz")
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars]
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (root / "merges.txt").write_text("#version: 0.2\n")


def save_tiny_sd(root: Path, image_size: int = 16, seed: int = 0) -> Path:
    """A complete, random Stable Diffusion folder: 4×8×8 latents decoded to 3×16×16 images."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    latent = image_size // 2
    UNet2DConditionModel(
        sample_size=latent, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, cross_attention_dim=16, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).save_pretrained(root / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  norm_num_groups=4, sample_size=image_size, layers_per_block=1).save_pretrained(root / "vae")
    cfg = CLIPTextConfig(vocab_size=54, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                         num_hidden_layers=1, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1)
    CLIPTextModel(cfg).save_pretrained(root / "text_encoder")
    _write_tokenizer(root / "tokenizer")
    tok = CLIPTokenizer(str(root / "tokenizer" / "vocab.json"), str(root / "tokenizer" / "merges.txt"),
                        model_max_length=77)
    tok.save_pretrained(root / "tokenizer")
    tiny_scheduler("scaled_linear").save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDPMScheduler"]}))
    return root
