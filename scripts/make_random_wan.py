"""Random-weight Wan-format checkpoints and a random Wan2.1 VAE folder: what the engine's device run streams.

    python scripts/make_random_wan.py OUT [--preset wan2.1-t2v-1.3b] [--dtype bf16]

Writes ``OUT/dense`` (the original Wan2.1 layout: diffusion_pytorch_model.safetensors + a WanModel
config.json, no videomla metadata, so generate treats it as a peer checkpoint), ``OUT/mla`` (the
same model with every self-attention converted to VideoMLA, a videomla checkpoint) and ``OUT/vae``
(a diffusers AutoencoderKLWan folder). Speed and memory do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from videomla.checkpoint import save_model
from videomla.cli.common import DTYPES
from videomla.config import preset
from videomla.model import CausalWanModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--preset", default="wan2.1-t2v-1.3b")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    cfg, dtype = preset(args.preset), DTYPES[args.dtype]
    torch.manual_seed(0)
    for kind, config in (("dense", cfg), ("mla", cfg.with_mla())):
        with torch.device(args.device):
            model = CausalWanModel(config).to(dtype).eval()
        if kind == "dense":
            folder = args.out / "dense"
            folder.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
            save_file(state, folder / "diffusion_pytorch_model.safetensors")
            wan = {"_class_name": "WanModel", "model_type": "t2v", "num_heads": cfg.num_heads, "eps": cfg.eps}
            (folder / "config.json").write_text(json.dumps(wan, indent=2) + "\n")
        else:
            save_model(model, args.out / "mla")
        del model
    from diffusers import AutoencoderKLWan

    vae_config = {}
    if args.preset != "wan2.1-t2v-1.3b":  # a small model gets a small VAE with matching latent channels
        z = cfg.in_channels
        vae_config = {"base_dim": 8, "z_dim": z, "dim_mult": [1, 2, 2, 2], "latents_mean": [0.0] * z}
        vae_config["latents_std"] = [1.0] * z
    AutoencoderKLWan(**vae_config).to(dtype).save_pretrained(args.out / "vae")
    print(f"wrote {args.out}/dense, {args.out}/mla and {args.out}/vae")


if __name__ == "__main__":
    main()
