"""Sample rollouts during training: what ``videomla generate`` makes of the exported model, every few steps.

The exported module (the EMA when one is kept) streams each prompt once per seed through
:class:`~videomla.pipeline.Pipeline` (the streaming engine, the run's codec, the writers of
:mod:`videomla.video_io`) in eval mode, without gradients, from noise of a generator seeded by
the sample's seed alone: the training draws and the global RNG states are left as they were, so
a run with samples trains bit-identically to one without, and seed ``s`` gives comparable videos
across steps. A step's videos and ``samples.json`` are written into a temporary folder that is
renamed to ``RUN/samples/step_XXXXXXXX`` when complete (:func:`videomla.io_utils.atomic_folder`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from ..engine import EngineOptions
from ..io_utils import atomic_folder
from ..model import CausalWanModel
from ..pipeline import GenerationRequest, GenerationSpec, Pipeline, build_codec, build_text_encoder
from ..text import TextEncoder
from .checkpointing import STEP_DIR, step_dir_name
from .config import HeldoutSection, SamplesSection
from .data import ClipSource, LatentFolder, WorldSource
from .distributed import DistInfo, reshard

SAMPLES_DIR = "samples"
INDEX_FILE = "samples.json"


@dataclass(frozen=True)
class Sample:
    """One written video: its place in the step's list, prompt, seed, file and (when kept) frames."""

    index: int
    prompt: str
    seed: int
    path: Path
    frames: np.ndarray | None  # uint8 [T, H, W, 3], kept when a logger shows videos


class EncodedPrompts:
    """A text encoder of fixed prompts: their features, computed once (UMT5 is not kept for the run)."""

    def __init__(self, encoder: TextEncoder, prompts: list[str]):
        self.text_dim, self.max_tokens = encoder.text_dim, encoder.max_tokens
        self.features = dict(zip(prompts, encoder.encode(prompts).float().cpu()))

    def encode(self, prompts: list[str] | str) -> torch.Tensor:
        return torch.stack([self.features[p] for p in ([prompts] if isinstance(prompts, str) else prompts)])


def heldout_captions(source: ClipSource, heldout: HeldoutSection, count: int) -> list[str]:
    """The captions of ``count`` held-out clips (world: the first clips past the training ones)."""
    if isinstance(source, WorldSource):
        from ..data.world import caption

        return [caption(source.params(len(source) + i)) for i in range(count)]
    if heldout.path is None:
        raise ValueError(
            "samples.prompts: null takes the captions of held-out clips, and a latent-folder run has them only "
            "with heldout.path; set heldout.path or samples.prompts"
        )
    folder = LatentFolder(heldout.path)
    if len(folder) < count:
        raise ValueError(f"samples.count {count} is more than the {len(folder)} clips of heldout.path {heldout.path}")
    captions = [folder[i].caption for i in range(count)]
    if not all(captions):
        raise ValueError(f"clips of heldout.path {heldout.path} carry no 'caption' metadata: set samples.prompts")
    return captions


def gathered_model(module: CausalWanModel, info: DistInfo) -> CausalWanModel | None:
    """``module`` as a plain model on the main process (None elsewhere).

    One process: the module itself. FSDP2: its full weights gathered (a collective every process
    joins) into an unsharded copy on the main process's device.
    """
    if not info.sharded:
        return module
    from ..checkpoint import model_from_state

    reshard(module)
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not info.is_main:
        return None
    return model_from_state(state, module.config, "the trained model", device=info.device, dtype=torch.float32)


class RolloutSampler:
    """Writes ``samples.every``'s rollouts of a model under ``root`` (the main process's job).

    Built at start-up so that everything that can be wrong (codec and text-encoder folders,
    prompts, video size and format) fails before the first step. ``resume_step``: sample folders
    of later steps (written after the checkpoint being resumed) are removed, as metrics rows are.
    """

    def __init__(
        self,
        section: SamplesSection,
        spec: GenerationSpec,
        prompts: list[str],
        root: Path,
        model: CausalWanModel,
        resume_step: int = 0,
    ):
        self.section, self.spec, self.root = section, spec, root
        device = next(model.parameters()).device
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # what generate loads them in
        try:
            self.codec = build_codec(spec.codec, device, dtype)
            encoder = build_text_encoder(spec.text_encoder, model.config.text_dim, device, dtype)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"samples: {err}. In a training config the folders go into the exported model's metadata: checkpoint."
                f"metadata: {{codec: {{type: wan-vae, path: VAE}}, text_encoder: {{type: umt5, path: UMT5}}}}"
            ) from None
        self.text = EncodedPrompts(encoder, prompts)
        self.jobs = [(prompt, seed) for prompt in prompts for seed in section.seeds]
        frames = spec.codec.frames_for(section.chunks * spec.stream.frames_per_chunk)
        self.seconds = frames / spec.video.fps
        root.mkdir(parents=True, exist_ok=True)
        for stale in self.step_dirs():
            if int(STEP_DIR.match(stale.name).group(1)) > resume_step:
                shutil.rmtree(stale)
        self._pipeline(model)  # the model's channels, text width and patches against the codec and video size
        for i in range(len(self.jobs)):
            self._request(i, root / self.file_name(i), keep_frames=False)  # prompts, format, frame size

    def step_dirs(self) -> list[Path]:
        """The sample folders written so far, oldest first."""
        return sorted(p for p in self.root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))

    def file_name(self, index: int) -> str:
        return f"{index}.{self.section.format}"

    def _pipeline(self, model: CausalWanModel) -> Pipeline:
        eager = EngineOptions(compile=False, cuda_graphs=False)
        return Pipeline(model, self.spec, self.codec, self.text, options=eager)

    def _request(self, index: int, out: Path, keep_frames: bool) -> GenerationRequest:
        prompt, seed = self.jobs[index]
        output = "numpy" if keep_frames else "none"
        return GenerationRequest.build(
            self.spec, prompt, self.seconds, seed=seed, out=out, format=self.section.format, output=output
        )

    @torch.no_grad()
    def write(self, model: CausalWanModel, step: int, keep_frames: bool = False) -> list[Sample]:
        """Stream every prompt x seed with ``model`` (eval mode, restored after) into step ``step``'s folder."""
        folder = self.root / step_dir_name(step)
        names = {self.file_name(i) for i in range(len(self.jobs))} | {INDEX_FILE}
        pipe = self._pipeline(model)
        training = model.training
        model.eval()
        samples = []
        try:
            with atomic_folder(folder, owned=names) as tmp:
                for i, (prompt, seed) in enumerate(self.jobs):
                    chunks = [c.frames for c in pipe.run(self._request(i, tmp / self.file_name(i), keep_frames))]
                    frames = np.concatenate(chunks) if keep_frames else None
                    samples.append(Sample(i, prompt, seed, folder / self.file_name(i), frames))
                index = {
                    "step": step,
                    "chunks": self.section.chunks,
                    "fps": self.spec.video.fps,
                    "videos": [{"file": s.path.name, "prompt": s.prompt, "seed": s.seed} for s in samples],
                }
                (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        finally:
            model.train(training)
        return samples
