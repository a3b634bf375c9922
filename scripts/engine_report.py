"""Side-by-side table of a device run: `videomla bench` vs `videomla generate` per variant (scripts/gpu_engine.sh).

python scripts/engine_report.py OUT_DIR    # reads bench.json and gen-<variant>.json, prints markdown
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from videomla.tables import render_table


def main() -> None:
    out = Path(sys.argv[1])
    bench = json.loads((out / "bench.json").read_text())
    meta = bench["meta"]
    print(f"# bench vs generate ({meta['device']}, {meta['date']}, commit {meta['git_commit']})\n")
    header = ["variant", "bench FPS (no decode)", "generate FPS (no decode)", "ratio", "bench FPS w/ VAE"]
    header += ["generate FPS w/ VAE", "ratio", "bench TTFC ms", "generate first chunk s (cold)"]
    rows = []
    for v in bench["variants"]:
        path = out / f"gen-{v['name']}.json"
        if not path.is_file():
            continue
        g, s = json.loads(path.read_text()), v["stream"]
        a, b = s["fps_transformer"], g["fps_steady_without_decode"]
        c, d = s["fps_with_vae"], g["fps_steady"]
        rows.append([v["name"], f"{a:.1f}", f"{b:.1f}", f"{b / a:.3f}", f"{c:.1f}", f"{d:.1f}", f"{d / c:.3f}",
                     f"{s['ttfc_wall_ms']:.0f}", f"{g['time_to_first_chunk_seconds']:.2f}"])  # fmt: skip
    print(render_table(header, rows, markdown=True))
    seq = out / "gen-mla-auto-sequential-decode.json"
    if seq.is_file():
        g = json.loads(seq.read_text())
        print(f"\nmla-auto generate with --no-decode-overlap: {g['fps_steady']:.1f} FPS with decode, "
              f"{g['fps_steady_without_decode']:.1f} without")  # fmt: skip


if __name__ == "__main__":
    main()
