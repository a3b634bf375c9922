"""Screen samplers on a teacher: renoise (stage-1) vs Euler ODE, with CFG. CPU.

The ad-hoc script exactly as run on 2026-12-02 (kept as the record of the screen, not maintained;
it expects the repository at /work/main and writes its JSON under /tmp). The maintained tool is
scripts/score_teacher.py --solver.
"""
import sys, json, time, torch
sys.path.insert(0, '/work/main/scripts')
from score_teacher import PROMPT_SEED, even_steps
from reproduce import STREAM, WORLD
from videomla.checkpoint import load_model
from videomla.codecs import PixelCodec
from videomla.config import StreamConfig
from videomla.data.world import caption, clip_params_at
from videomla.engine.engine import StreamEngine, LatentGeometry, EngineOptions
from videomla.evaluation import evaluate
from videomla.pipeline.pipeline import build_text_encoder, resolve_spec
from videomla.schedule import SamplingSchedule, sigma_of, to_x0, add_noise
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
m = sys.argv[1]
model = load_model(m, dtype=torch.float32)
enc = build_text_encoder(resolve_spec(m)[1].text_encoder, model.config.text_dim, 'cpu', torch.float32)
prompts = [caption(clip_params_at(PROMPT_SEED, i)) for i in range(16)]
B = len(prompts)
codec = PixelCodec(WORLD["spatial_stride"], WORLD["scale"], WORLD["offset"])

@torch.no_grad()
def run(sampler, n, cfg, noise_seed, frames=21):
    cond = model.embed_text(enc.encode(prompts))
    text = torch.cat([cond, model.embed_text(torch.zeros_like(enc.encode(prompts)))]) if cfg != 1 else cond
    nb = text.shape[0]
    eng = StreamEngine(model, StreamConfig(**STREAM), LatentGeometry(48, 16, 16), batch=nb,
                       schedule=SamplingSchedule(even_steps(n)), options=EngineOptions(compile=False, cuda_graphs=False))
    gen = torch.Generator().manual_seed(noise_seed)
    ts = eng.timesteps
    out = []
    for c in range(frames // 3):
        x = torch.randn(B, 48, 3, 16, 16, generator=gen)
        for i, t in enumerate(ts):
            xin = torch.cat([x, x]) if cfg != 1 else x
            v = model.forward_chunk(xin, eng._timestep(t), text, eng.cache)
            if cfg != 1:
                v = v[B:] + cfg * (v[:B] - v[B:])
            s = sigma_of(t)
            if i + 1 == len(ts):
                x0 = to_x0(x, v, s)
            elif sampler == 'euler':
                x = x + (sigma_of(ts[i + 1]) - s).item() * v
            else:
                x = add_noise(to_x0(x, v, s), torch.randn(x.shape, generator=gen), sigma_of(ts[i + 1]))
        model.forward_chunk(torch.cat([x0, x0]) if cfg != 1 else x0, eng._timestep(0.0), text, eng.cache, write=True)
        out.append(x0)
    return codec.decode(torch.cat(out, dim=2))

results = {}
for spec in sys.argv[2].split(','):
    sampler, n, cfg = spec.split(':'); n = int(n); cfg = float(cfg)
    t0 = time.time(); vids = []
    for ns in (0,):
        v = run(sampler, n, cfg, ns)
        vids += [evaluate(v[i], p).overall for i, p in enumerate(prompts)]
    mean = {k: sum(r[k] for r in vids) / len(vids) for k in ('overall', 'adherence', 'persistence', 'shape', 'objects')}
    zero = sum(r['objects'] == 0 for r in vids)
    results[spec] = {'mean': mean, 'zero_object_videos': zero, 'videos': vids}
    print(spec, {k: round(v, 3) for k, v in mean.items()}, 'empty', zero, f'{time.time()-t0:.0f}s', flush=True)
    json.dump(results, open('/tmp/samplers-' + m.strip('/').replace('/', '_') + '.json', 'w'))
