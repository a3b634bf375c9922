"""Time the streaming Wan-VAE decoder frame by frame against a chunk per call (issue 19's decode cost).

    python scripts/vae_decode_bench.py --device cuda --json OUT.json [--chunks 10] [--size 480x832]

A random-weight Wan2.1 VAE (``AutoencoderKLWan()``'s defaults; decode cost does not depend on the
values), latent chunks of 3 frames: "frame" decodes each latent frame with its own call (diffusers'
own loop, what the decoder did before), "chunk" a whole chunk per call (what it does now). Both
run on the same latents, whose outputs are compared (they must agree to bf16 rounding), with
conv weights channels-last and contiguous. Per chunk: milliseconds after a warm-up chunk,
between device syncs. Needs diffusers.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from videomla.codecs import WanVAECodec
from videomla.tables import render_table


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_stream(codec: WanVAECodec, chunks: list[torch.Tensor], per_frame: bool, device) -> tuple[list, list]:
    """Decode the chunks in order on one stream decoder; returns (outputs, seconds per chunk)."""
    decoder = codec.stream_decoder()
    outputs, seconds = [], []
    for chunk in chunks:
        sync(device)
        start = time.perf_counter()
        if per_frame:
            out = torch.cat([decoder.decode(chunk[:, :, i : i + 1]) for i in range(chunk.shape[2])], dim=2)
        else:
            out = decoder.decode(chunk)
        sync(device)
        seconds.append(time.perf_counter() - start)
        outputs.append(out)
    return outputs, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="480x832", help="video HEIGHTxWIDTH")
    parser.add_argument("--chunks", type=int, default=10, help="timed chunks after the first (warm-up) one")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    height, width = (int(v) for v in args.size.split("x"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device).manual_seed(0)
    rows, result = [], {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                        "size": args.size, "dtype": str(dtype), "cases": {}}  # fmt: skip
    for channels_last in (True, False):
        codec = WanVAECodec.random(device, dtype, channels_last=channels_last)
        shape = (1, codec.latent_channels, 3, height // codec.spatial_stride, width // codec.spatial_stride)
        chunks = [torch.randn(shape, generator=gen, device=device, dtype=dtype) for _ in range(args.chunks + 1)]
        runs = {}
        with torch.no_grad():
            for mode in ("frame", "chunk"):
                runs[mode] = decode_stream(codec, chunks, mode == "frame", device)
        diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(runs["frame"][0], runs["chunk"][0]))
        for mode, (_, seconds) in runs.items():
            ms = 1000 * sum(seconds[1:]) / len(seconds[1:])
            name = f"{mode}, {'channels-last' if channels_last else 'contiguous'}"
            result["cases"][name] = {"ms_per_chunk": ms, "first_chunk_ms": 1000 * seconds[0], "max_abs_diff": diff}
            rows.append([name, f"{ms:.1f}", f"{1000 * seconds[0]:.0f}", f"{diff:.2e}"])
        del codec, chunks, runs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    print(render_table(["decoder", "ms / 3-frame chunk", "first chunk ms", "max |frame - chunk|"], rows))


if __name__ == "__main__":
    main()
