"""The printed table and JSON of ``mmssl bench``."""
from __future__ import annotations

from mmssl.bench.models import MODEL_TASKS
from mmssl.bench.peers import NO_PEER


def _mem(mb: float | None) -> str:
    return "-" if mb is None else f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def format_table(report: dict) -> str:
    """The throughput table (model and data-path rows), then one block per learning row."""
    learning = [r for t, r in report["tasks"].items() if t.startswith("learning:")]
    others = {t: r for t, r in report["tasks"].items() if not t.startswith("learning:")}
    lines = [(f"mmssl bench on {report['device_name']}, torch {report['torch']}, {report['threads']} threads; "
             f"size {report['size']}; host allocator: {report.get('host_allocator', 'not recorded')}")]
    if others:
        lines.append(throughput_table({**report, "tasks": others}))
    for row in learning:
        lines += ["", learning_table(row)]
    return "\n".join(lines)


def throughput_table(report: dict) -> str:
    s = report["settings"]
    lines = [f"median of {s['repeats']} x {s['steps']} steps after {s['warmup']} warm-up"]
    peak = report.get("matmul_peak")
    if peak:
        lines.append(f"matmul peak: {peak['flops_per_s'] / 1e9:,.1f} GFLOP/s ({peak['dtype']} {peak['n']}x{peak['n']}, "
                     f"best of {peak['tries']}); ratio = mmssl samples/s / peer samples/s")
    lines.append("")
    rows = [("task", "size", "samples/s", "peak mem", "GFLOP/sample", "GFLOP/s", "util %", "peer", "ratio")]

    def model_row(task: str, r: dict) -> tuple:
        return (task, r["size"], f"{r['samples_per_s']:.2f}", _mem(r["peak_memory_mb"]),
                f"{r['flops_per_sample'] / 1e9:.3f}", f"{r['flops_per_s'] / 1e9:.1f}", f"{100 * r['utilisation']:.1f}")

    for task, r in report["tasks"].items():
        if task in MODEL_TASKS:
            peer = r["peer"]
            if "samples_per_s" in peer:
                rows.append((*model_row(task, r), f"{peer['name']}: {peer['samples_per_s']:.2f}/s",
                             f"{r['ratio']:.2f}"))
            else:
                rows.append((*model_row(task, r), peer["name"], str(r["ratio"])))
            if "compiled" in r:
                c = r["compiled"]
                size = f"torch.compile: x{c['speedup_vs_eager']:.2f} eager, {c['compile_s']:.0f} s to compile"
                rows.append((*model_row(task + " compiled", {**c, "size": size}), rows[-1][7],
                             f"{c['ratio']:.2f}" if "ratio" in c else str(r["ratio"])))
        elif task == "clip_loading":
            if "backends" not in r:
                rows.append((task, "-", "-", "-", "-", "-", "-", r["status"], "-"))
                continue
            ours = r["backend"]
            peers = [(b, v) for b, v in r["backends"].items() if b != ours] or [(None, None)]
            for b, v in peers:
                peer = f"{b}: {v['clips_per_s_open_per_clip']:.1f} clips/s" if b else NO_PEER
                ratio = f"{r['ratio'][f'{ours}/{b}']:.2f}" if b else NO_PEER
                rows.append((f"clip_loading ({ours})", r["size"], f"{r['samples_per_s']:.1f} clips",
                             _mem(r["peak_memory_mb"]), "-", "-", "-", peer, ratio))
        else:
            rows.append((task, r["size"], f"{r['samples_per_s']:.2f} frames", _mem(r["peak_memory_mb"]),
                         "-", "-", "-", NO_PEER, "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4, 5, 6, 8}
    for row in rows:
        lines.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    samples = {"mae_image": "images", "mae_video": "clips", "simclr_image": "images of 2 views"}
    shown = [f"{t} {samples[t]}" for t in report["tasks"] if t in samples]
    lines.append(f"\n{'samples: ' + ', '.join(shown) + '. ' if shown else ''}peak mem: {report['memory_kind']} "
                 "while that row ran (the peer's is in the JSON).")
    return "\n".join(lines)


def learning_table(r: dict) -> str:
    """One learning row: the two kNN curves at matched training seconds, the final ratio and views/s."""
    v = r["views_per_s"]
    precision = "" if r.get("mixed_precision", "no") == "no" else f", mixed precision {r['mixed_precision']} on both sides"
    lines = [(f"{r['task']} on {r['dataset']} ({r['device']}, batch {r['batch_size']}{precision}): kNN top-1 (k = 20, "
             f"{r['monitor_items']} items per split) against training seconds; {r['clock']}"),
             f"peer: {r['peer']}; random init {100 * r['random_init_knn_top1']:.1f}%"]
    rows = [("seconds", "mmssl kNN %", "plain kNN %", "plain at s", "mmssl step", "plain step")]
    rows += [(f"{p['seconds']:.1f}", f"{100 * p['mmssl']:.1f}", f"{100 * p['plain']:.1f}", f"{p['plain_at_s']:.1f}",
              str(p["mmssl_step"]), str(p["plain_step"])) for p in r["curve"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    lines.append(f"final ratio mmssl / plain kNN: {r['final_ratio']:.3f}")
    if "pairs" in r:  # the figures above are means over pairs of runs taken in turn
        each = r["pairs"]
        lines.append(f"means of {len(each)} pairs of runs (mmssl, plain, mmssl, plain, ...), seeds "
                     + ", ".join(str(q["seed"]) for q in each) + "; each pair's final ratio "
                     + ", ".join(f"{q['final_ratio']:.3f}" for q in each) + ", mmssl / per-item "
                     + ", ".join(f"{q['speedup_vs_per_item']:.2f}" for q in each) + ", curve at or above: "
                     + ", ".join("yes" if q["curve_at_or_above_plain"] else "no" for q in each))
        gap = r["mean_gap"]
        lines.append(f"mmssl - plain kNN over every point: {100 * gap['mean']:+.1f} points (each pair "
                     + ", ".join(f"{100 * g:+.1f}" for g in gap["per_pair"])
                     + f"; standard error {100 * gap['standard_error']:.1f})")
    per_image = f"{r['views']} view{'s' if r['views'] != 1 else ''} per image"
    lines.append(f"training views/s (kNN excluded): mmssl {v['mmssl']:.0f} ({per_image}), "
                 f"plain loop {v['plain']:.0f}, per-item torchvision reference {v['per_item_reference']:.0f} "
                 f"({r['per_item_reference']}); mmssl / per-item {r['speedup_vs_per_item']:.2f}")
    met = r["targets"]
    lines.append(f"targets: mmssl curve at or above the plain loop's at every point: "
                 f"{'yes' if met['curve_at_or_above_plain'] else 'no'}; mmssl views/s at least 2x per-item: "
                 f"{'yes' if met['views_per_s_2x_per_item'] else 'no'}")
    return "\n".join(lines)
