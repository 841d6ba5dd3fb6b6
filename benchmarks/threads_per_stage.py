"""Each sampling stage of the bench presets and the embedded models timed with the C++
engine on 1 thread, on 2 threads (auto mode) and, at batch 1, in mode 3 (a team over the
row starts, one thread for the pixels): best of 3 (1 for the flat 64x64 model at batch 1).

    python benchmarks/threads_per_stage.py

The stages are timed alone (``engines.runner("cached", "cpp", kind)``, random uniforms,
no window), each conditional one given its encoder's map of a random lower image.
benchmarks/results/cpu_engine.md ("Threads at batch 1") holds the table that set the auto
mode's smallest team (``kTeamMinHidden``, ``kTeamMinWidth`` in csrc/cpu/team.cpp).
"""
import time

import torch

import pixelaux
from pixelaux import bench, engines
from pixelaux.auxiliary import chain


def stage_time(stage, b, size, cond, threads, reps=3, mode=0):
    run = engines.runner("cached", "cpp", stage.kind)
    x = torch.zeros(b, stage.channels, *size, dtype=torch.long)
    u = torch.rand(b, *size, stage.dist.num_uniforms)
    best = float("inf")
    for _ in range(reps):
        with pixelaux.resources.num_threads(threads):
            t = time.perf_counter()
            run(stage, x, None, cond, u, 1.0, mode=mode)
            best = min(best, time.perf_counter() - t)
    return best


def main():
    torch.manual_seed(0)
    models = {"pyramid-64": bench.build_model(bench.PRESETS["pyramid-64"])[0],
              "flat-pp64": bench.build_model(bench.PRESETS["flat-pp64"])[0],
              "default": pixelaux.load("default"), "pyramid": pixelaux.load("pyramid"),
              "bench-32": bench.build_model(bench.PRESETS["bench-32"])[0]}
    for name, m in models.items():
        links = chain(m)
        for b in (1, 16):
            for k, link in enumerate(links):
                cond = None
                if link.owner is not None:
                    low = links[k + 1]
                    view = torch.randint(0, 2 ** low.bits, (b, low.channels, *low.size))
                    with torch.no_grad():
                        cond = link.cond(view)
                    cond = tuple(c.contiguous() for c in cond) if isinstance(cond, tuple) else cond.contiguous()
                reps = 1 if (name == "flat-pp64" and b == 1) else 3
                t1 = stage_time(link.stage, b, link.size, cond, 1, reps)
                t2 = stage_time(link.stage, b, link.size, cond, 2, reps)
                t3 = stage_time(link.stage, b, link.size, cond, 2, reps, mode=3) if b == 1 else float("nan")
                print(f"{name:11s} b={b:2d} {link.name:14s} {link.size} hidden={link.stage.config.get('hidden')}: "
                      f"1 thread {t1 * 1e3:8.1f} ms  2 threads {t2 * 1e3:8.1f} ms  mode 3 {t3 * 1e3:8.1f} ms  "
                      f"2/1 {t2 / t1:.2f}", flush=True)


if __name__ == "__main__":
    main()
