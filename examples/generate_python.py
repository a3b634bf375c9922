"""Generate a video from Python: one call, or a reusable Pipeline with a prompt switch.

    python examples/generate_python.py            # the embedded default model, on CPU in seconds
    python examples/generate_python.py --checkpoint PATH [--vae DIR --text-encoder DIR]
    python examples/generate_python.py --demo     # a tiny random model: noise, but every step runs

The default model was trained on the procedural world (docs/world.md), so its prompts name shapes,
colours and sizes; a Wan2.1 checkpoint takes any prompt.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import videomla
from videomla.pipeline import Pipeline


def demo_checkpoint(folder: Path) -> Path:
    """A tiny random model with the pixel codec and hash text encoder (what the tests use)."""
    from videomla.checkpoint import save_model
    from videomla.pipeline import CodecSpec, GenerationSpec, TextSpec, VideoSpec

    cfg = dataclasses.replace(videomla.preset("tiny"), in_channels=12, out_channels=12)
    spec = GenerationSpec(
        codec=CodecSpec("pixel", spatial_stride=2),
        text_encoder=TextSpec("hash", max_tokens=16),
        video=VideoSpec(height=48, width=64, fps=8),
        stream=videomla.StreamConfig(sink_frames=1, window_frames=6),
    )
    return save_model(videomla.CausalWanModel(cfg).eval(), folder / "demo", metadata=spec.to_dict())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint")
    parser.add_argument("--vae")
    parser.add_argument("--text-encoder")
    parser.add_argument("--demo", action="store_true", help="use a tiny random model")
    parser.add_argument("--out", default="example")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    checkpoint = demo_checkpoint(Path(tmp.name)) if args.demo else args.checkpoint

    # 1. One call: frames arrive chunk by chunk while the mp4 is written.
    for chunk in videomla.generate(
        "a large red circle and a small blue square bouncing",
        seconds=3,
        checkpoint=checkpoint,
        out=f"{args.out}.mp4",
        seed=0,
        vae=args.vae,
        text_encoder=args.text_encoder,
    ):
        print(f"chunk {chunk.index}: frames {chunk.start_frame}..{chunk.start_frame + len(chunk.frames) - 1}")

    # 2. Load once, generate several videos; switch prompts at 2 s and rebuild the cache there.
    pipe = Pipeline.from_checkpoint(checkpoint, vae=args.vae, text_encoder=args.text_encoder)
    prompts = [("a large yellow triangle bouncing", 0.0), ("a small cyan circle bouncing", 2.0)]
    current = None
    for chunk in pipe.stream(prompts, seconds=4, recache=True, out=f"{args.out}.gif", seed=0):
        if chunk.prompt != current:
            current = chunk.prompt
            print(f"from chunk {chunk.index} (frame {chunk.start_frame}): {chunk.prompt!r}")
    print(pipe.summary.text())
    for _ in pipe.stream("a large white square bouncing", seconds=4, out=f"{args.out}.png", seed=0, grid_frames=9):
        pass
    print(f"wrote {args.out}.mp4, {args.out}.gif and {args.out}.png")
    tmp.cleanup()


if __name__ == "__main__":
    main()
