"""Benchmark outputs: raw JSON, a Markdown report (realised-vs-nominal table first), and a PNG plot
of measured against nominal speedup with the ideal line."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from . import engines as eng

NOISY_SPREAD = 0.25  # (p90 − p10) / median of the paired ratios above this is flagged "noisy"
BUSY_CORES = 0.5  # other processes used more than this many cores on average while we timed


def _x(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}×"


def _pct(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f} %"


def flags(group: dict, engine: str) -> list[str]:
    """Why a row's numbers deserve less trust: disturbed passes, wide spread, a busy machine."""
    out = []
    e = group["engines"].get(engine, {})
    if e.get("disturbed"):
        out.append(f"disturbed {e['disturbed']}/{e['passes']}" + (" (kept all)" if e.get("too_disturbed") else ""))
    s = group["speedups"].get(engine, {}).get("vs_eager_dense")
    if s and s["spread"] > NOISY_SPREAD:
        out.append(f"noisy ±{100 * s['spread'] / 2:.0f} %")
    if group["load"].get("foreign_cores", 0) > BUSY_CORES:
        out.append(f"busy: {group['load']['foreign_cores']:.1f} cores used by others")
    err = e.get("info", {}).get("rel_err")
    if err is not None and not (err < eng.tolerance(engine)):
        out.append(f"WRONG OUTPUT rel err {err:.1e}")
    fresh = e.get("info", {}).get("rel_err_fresh")
    if fresh is not None and not (fresh < eng.tolerance(engine)):
        out.append(f"WRONG OUTPUT on a fresh input: rel err {fresh:.1e}")
    return out


def _device(group: dict) -> str:
    return group.get("device", "cpu")  # results written before GPU groups existed are CPU only


def realised_table(results: dict, engines: tuple[str, ...] | None = None, device: str = "cpu") -> str:
    """The main table: per model / level / batch / threads / engine, nominal and measured speedups
    (of the groups timed on `device`, each against eager dense on that device)."""
    lines = ["| model | pruning | batch | threads | engine | nominal | measured vs eager dense (p10–p90) | realised "
             "| measured vs fastest dense | realised | flags |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for g in (g for g in results["groups"] if _device(g) == device):
        for name in eng.ENGINES:
            if name not in g["speedups"] or (engines and name not in engines):
                continue
            s = g["speedups"][name]
            ref = s.get("vs_eager_dense")
            best = s.get("vs_fastest_dense")
            m1 = f"{_x(ref['median'])} ({ref['p10']:.2f}–{ref['p90']:.2f})" if ref else "—"
            m2 = f"{_x(best['median'])} vs {best['ref']}" if best else "—"
            lines.append(f"| {g['model']} | {g['level']} | {g['batch']} | {g['threads']} | {name} | {_x(s['nominal'])} "
                         f"| {m1} | {_pct(ref['realised']) if ref else '—'} | {m2} "
                         f"| {_pct(best['realised']) if best else '—'} | {', '.join(flags(g, name))} |")
    return "\n".join(lines)


def timings_table(results: dict) -> str:
    lines = ["| model | pruning | batch | threads | engine | median ms | p10 ms | p90 ms | passes × calls "
             "| disturbed | CPU util | rel err | rel err, fresh input |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for g in results["groups"]:
        for name, e in g["engines"].items():
            if "stats" not in e:
                continue
            st = e["stats"]
            err = e.get("info", {}).get("rel_err", math.nan)
            fresh = e.get("info", {}).get("rel_err_fresh", math.nan)  # results before session 31: none
            lines.append(f"| {g['model']} | {g['level']} | {g['batch']} | {g['threads']} | {name} "
                         f"| {1e3 * st['median']:.3f} | {1e3 * st['p10']:.3f} | {1e3 * st['p90']:.3f} "
                         f"| {e['passes']} × {e['inner']} | {e['disturbed']} | {e.get('cpu_util', 0):.2f} "
                         f"| {err:.1e} | {fresh:.1e} |")
    return "\n".join(lines)


def skipped_lines(results: dict) -> list[str]:
    """Every engine that did not run everywhere, and every pruning level that was not made, with why."""
    out = []
    for name in eng.ENGINES:
        reasons = sorted({r for r in results["engine_status"].get(name, {}).values() if r != "ok"})
        if reasons:
            out.append(f"- `{name}`: " + "; ".join(reasons))
        elif name in results["config"]["engines"] and name not in results["engine_status"]:
            out.append(f"- `{name}`: not run")
    for model, levels in results["skipped_levels"].items():
        for spec, why in levels.items():
            out.append(f"- pruning level `{spec}` on {model}: {why}")
    return out


def gpu_section(results: dict) -> list[str]:
    """The "GPU" section: the GPU engines' realised table, or per engine why it was not measured."""
    out = ["## GPU", "", "Two-conv cuDNN (PyTorch eager), torch.compile and basisrt's fused Triton plan (with and "
           "without CUDA graphs) on the GPU, each against PyTorch eager dense on the same GPU; full fp32 (TF32 off) "
           "for every engine, every call synchronised.", ""]
    if any(_device(g) == "cuda" for g in results["groups"]):
        return out + [f"GPU: {results['machine'].get('gpu')}.", "", realised_table(results, device="cuda"), ""]
    out += ["| engine | runs | result |", "|---|---|---|"]
    for name in eng.GPU_ENGINES:
        reasons = sorted({r.removeprefix("skipped: ") for r in results["engine_status"].get(name, {}).values()})
        if not reasons:
            reasons = ["not selected (--engines)" if name not in results["config"]["engines"] else "not run"]
        out.append(f"| {name} | {eng.DESCRIPTIONS[eng.kind_of(name)]} | not measured: {'; '.join(reasons)} |")
    return out + [""]


def layers_table(results: dict, model: str, level: str) -> str:
    rows = [r for r in results["layers"] if r["model"] == model and r["level"] == level]
    if not rows:
        return ""
    lines = ["| layer | engine | kind | rank | MMACs | median µs | GFLOP/s | roofline GFLOP/s | % of bound "
             "| plan strategy |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    order = {n: i for i, n in enumerate(dict.fromkeys(r["layer"] for r in rows))}
    for r in sorted(rows, key=lambda r: (order[r["layer"]], r["engine"])):
        lines.append(f"| {r['layer']} | {r['engine']} | {r['kind']} | {r['rank']} | {r['macs'] / 1e6:.2f} "
                     f"| {1e6 * r['median_s']:.1f} | {r['gflops']:.1f} | {r['attainable_gflops']:.1f} "
                     f"| {100 * r['of_bound']:.0f} % | {r['strategy'] or '—'} |")
    return "\n".join(lines)


def conclusions(results: dict) -> list[str]:
    """Ratios only: per model / level / batch / threads, the best pruned engine against dense."""
    out = []
    for g in results["groups"]:
        pruned = {n: s for n, s in g["speedups"].items() if eng.group_of(n) == "pruned" and "vs_eager_dense" in s}
        if not pruned:
            continue
        best = max(pruned, key=lambda n: pruned[n]["vs_eager_dense"]["median"])
        s = pruned[best]
        where = "GPU" if _device(g) == "cuda" else f"{g['threads']} thread(s)"
        line = (f"- {g['model']} {g['level']}, batch {g['batch']}, {where}: nominal {_x(s['nominal'])}; "
                f"best pruned engine `{best}` {_x(s['vs_eager_dense']['median'])} vs eager dense "
                f"(realised {_pct(s['vs_eager_dense']['realised'])})")
        if "vs_fastest_dense" in s:
            line += (f", {_x(s['vs_fastest_dense']['median'])} vs the fastest dense engine `{g['fastest_dense']}` "
                     f"(realised {_pct(s['vs_fastest_dense']['realised'])})")
        out.append(line + ".")
    return out


def markdown(results: dict, plot_path: str | None = None) -> str:
    m = results["machine"]
    cfg = results["config"]
    parts = ["# basisrt benchmark: realised vs nominal speedup", ""]
    if cfg.get("quick"):
        parts += ["> **Smoke run (`--quick`)**: few passes on one small configuration; the numbers show the "
                  "harness works, not how fast anything is.", ""]
    parts += [f"Command: `{results['command'] or 'basisrt bench'}`", "",
              f"Machine: {m['cpu']}, {m['cpu_count']} logical CPUs, {m['platform']}, Python {m['python']}, "
              f"torch {m['torch']} (CPU capability {m['cpu_capability']}), onnxruntime {m['onnxruntime']}.", ""]
    for t, r in results["rooflines"].items():
        bf16 = f", bf16 {r['peak_bf16_gflops']:.1f} GFLOP/s" if r.get("peak_bf16_gflops") else ""
        parts.append(f"Roofline at {t} thread(s): peak {r['peak_gflops']:.1f} GFLOP/s (best float32 matmul up to "
                     f"{r['matmul_n']}²{bf16}), bandwidth {r['bandwidth_gbs']:.1f} GB/s (copy of {r['copy_mb']:.0f} "
                     "MB). basisrt_bf16's steps that run bf16 are measured against the bf16 peak.")
    settle = results.get("config", {}).get("settle_s", 0)
    parts += ["", "Speedups are medians of per-round paired ratios (engines interleaved in one run"
              + (f", at least {settle * 1e3:g} ms idle before each pass and then until the process's threads are "
                 "idle, so no engine's spinning threads run into the next"
                 if settle else "") + "), p10–p90 in "
              "brackets; *nominal* is dense MACs ÷ pruned MACs from `basisrt.profile`; *realised* is measured ÷ "
              "nominal. Quote ratios, not absolute times: the machine may be shared.", ""]
    concl = conclusions(results)
    if concl:
        parts += ["## Conclusions", "", *concl, ""]
    parts += ["## Realised vs nominal", "", realised_table(results), ""]
    if plot_path:
        parts += [f"Plot: `{plot_path}` (measured vs nominal speedup, ideal line dashed).", ""]
    parts += gpu_section(results)
    skipped = skipped_lines(results)
    if skipped:
        parts += ["## Skipped or failed", "", *skipped, ""]
    levels = results.get("levels", {})
    if levels:
        parts += ["## Pruning levels", ""]
        for model, specs in levels.items():
            for spec, desc in specs.items():
                parts.append(f"- {model} `{spec}`: {desc}")
        parts.append("")
    parts += ["## Timings (absolute; for reference only)", "", timings_table(results), ""]
    parts += ["## Machine load while timing", "", "| model | pruning | batch | threads | device | other processes "
              "(cores) | load avg 1 min |", "|---|---|---:|---:|---|---:|---:|"]
    for g in results["groups"]:
        ld = g["load"]
        fc = ld.get("foreign_cores")
        parts.append(f"| {g['model']} | {g['level']} | {g['batch']} | {g['threads']} | {_device(g)} | "
                     f"{'—' if fc is None else f'{fc:.2f}'} | {ld.get('loadavg_1m') or 0:.2f} |")
    parts.append("")
    seen = []
    for r in results["layers"]:
        if (r["model"], r["level"]) not in seen:
            seen.append((r["model"], r["level"]))
    for model, level in seen:
        r0 = next(r for r in results["layers"] if r["model"] == model and r["level"] == level)
        parts += [f"## Per layer: {model} `{level}` (batch {r0['batch']}, {r0['threads']} thread(s))", "",
                  "GFLOP/s = 2·MACs ÷ time; roofline = min(peak, intensity × bandwidth) from the bytes "
                  "`basisrt.profile` counts (a fused basisrt step does not move the rank-r intermediate); "
                  "% of bound = roofline time ÷ measured time.", "", layers_table(results, model, level), ""]
    return "\n".join(parts)


def plot(results: dict, path: str | os.PathLike) -> str | None:
    """Measured (vs eager dense) against nominal speedup per pruned engine, log-log, with y = x.
    Returns the path, or None with matplotlib missing (the caller reports it)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 5.5))
    series: dict[str, list] = {}
    for g in results["groups"]:
        for name, s in g["speedups"].items():
            if eng.group_of(name) != "pruned" or "vs_eager_dense" not in s:
                continue
            r = s["vs_eager_dense"]
            series.setdefault(name, []).append((s["nominal"], r["median"], r["p10"], r["p90"],
                                                f"{g['model']} {g['level']} b{g['batch']} t{g['threads']}"))
    lo, hi = 0.5, 2.0
    markers = dict(zip(eng.PRUNED_ENGINES, "osD^vP*Xph"))
    for name, pts in series.items():
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        err = [[max(0.0, p[1] - p[2]) for p in pts], [max(0.0, p[3] - p[1]) for p in pts]]
        ax.errorbar(xs, ys, yerr=err, fmt=markers.get(name, "o"), label=name, capsize=3, alpha=0.85)
        lo = min(lo, *xs, *ys)
        hi = max(hi, *xs, *ys)
        if len(pts) <= 12:
            for p in pts:
                ax.annotate(p[4], (p[0], p[1]), fontsize=6, alpha=0.6, xytext=(3, 3), textcoords="offset points")
    lo, hi = lo / 1.3, hi * 1.3
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="ideal (measured = nominal)")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":", label="no speedup")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("nominal speedup (dense MACs ÷ pruned MACs)")
    ax.set_ylabel("measured speedup vs PyTorch eager dense (same device)")
    title = "basisrt bench: measured vs nominal speedup"
    if results["config"].get("quick"):
        title += " (smoke run)"
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def write_all(results: dict, out_dir: str | os.PathLike, results_md: str | os.PathLike | None = None) -> dict[str, str]:
    """Write results.json, results.md and speedup.png into `out_dir` (and the Markdown to
    `results_md` too, if given); returns what was written where."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    png = plot(results, out / "speedup.png")
    if png:
        written["png"] = png
    else:
        results.setdefault("notes", []).append('plot skipped: matplotlib not installed (pip install -e ".[bench]")')
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    written["json"] = str(out / "results.json")
    md = markdown(results, png)
    (out / "results.md").write_text(md)
    written["md"] = str(out / "results.md")
    if results_md:
        shown = os.path.relpath(png, Path(results_md).parent) if png else None
        Path(results_md).write_text(markdown(results, shown))
        written["results_md"] = str(results_md)
    return written
