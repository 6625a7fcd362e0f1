"""report.png: the run's figures at a glance (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

MODES = ("script", "trace", "freeze")
COLORS = {"uncompressed": "#9ecae1", "compressed": "#3182bd", "script": "#31a354",
          "trace": "#fd8d3c", "freeze": "#756bb1", "bar": "#6baed6", "naive": "#bdbdbd"}


def _missing(ax, title: str) -> None:
    ax.set_title(title, loc="left", fontweight="bold")
    ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", color="#777777",
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _label_bars(ax, bars, texts: list[str], tops: list[float] | None = None) -> None:
    """Write each bar's value above it (above its whisker when `tops` gives that)."""
    for i, (bar, text) in enumerate(zip(bars, texts, strict=True)):
        top = max(bar.get_height(), tops[i]) if tops else bar.get_height()
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, top),
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                    fontsize=8)


def _errors(summaries: list[dict], scale: float = 1.0) -> list[list[float]]:
    return [[(s["median"] - s["min"]) / scale for s in summaries],
            [(s["max"] - s["median"]) / scale for s in summaries]]


def _sizes(ax, data: dict) -> None:
    title = "Image size (GB)"
    size, naive = data.get("size"), (data.get("build") or {}).get("naive_image")
    if not size and not naive:
        _missing(ax, title)
        return
    names, raw, packed = [], [], []
    for name in ("dev", "prod"):
        if size:
            names.append(name)
            raw.append(size["images"][name]["size_bytes"] / 1e9)
            packed.append(size["images"][name]["compressed_bytes"] / 1e9)
    if naive:
        names.append("naive")
        raw.append(naive["size_bytes"] / 1e9)
        packed.append(naive["compressed_bytes"] / 1e9)
    if size:
        names.append("floor")
        raw.append(size["floor"]["floor_bytes"] / 1e9)
        packed.append(0.0)
    xs = range(len(names))
    width = 0.38
    b1 = ax.bar([x - width / 2 for x in xs], raw, width, color=COLORS["uncompressed"],
                label="uncompressed")
    b2 = ax.bar([x + width / 2 for x in xs], packed, width, color=COLORS["compressed"],
                label="compressed (gzip)")
    _label_bars(ax, b1, [f"{v:.2f}" for v in raw])
    _label_bars(ax, b2, [f"{v:.2f}" if v else "" for v in packed])
    ax.set_xticks(list(xs), names)
    ax.set_title(title, loc="left", fontweight="bold")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_ylim(0, max(raw) * 1.25)


def _build(ax, data: dict) -> None:
    title = "Build time (min)"
    b = data.get("build")
    if not b:
        _missing(ax, title)
        return
    rows = [("cold\ndev+prod", b["cold"]["total_s"], COLORS["bar"]),
            ("naive", b["naive"]["seconds"], COLORS["naive"]),
            ("dev-only\nchange", b["dev_change"]["seconds"], COLORS["bar"]),
            ("no-op\ndev", b["noop"]["dev"]["seconds"], COLORS["bar"]),
            ("no-op\nprod", b["noop"]["prod"]["seconds"], COLORS["bar"])]
    values = [r[1]["median"] / 60 for r in rows]
    bars = ax.bar(range(len(rows)), values, color=[r[2] for r in rows],
                  yerr=_errors([r[1] for r in rows], 60), capsize=3)
    _label_bars(ax, bars, [f"{v:.1f}" if v >= 1 else f"{v * 60:.0f} s" for v in values],
                [r[1]["max"] / 60 for r in rows])
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.set_title(title, loc="left", fontweight="bold")
    ax.text(0.98, 0.97, f"{b['build_runs']} cold/naive run(s)\n{b['runs']} no-op runs",
            transform=ax.transAxes, ha="right", va="top", fontsize=8)
    ax.set_ylim(0, max(r[1]["max"] for r in rows) / 60 * 1.3)


def _startup(ax, data: dict) -> None:
    title = "Startup: docker run to ... (s)"
    s = data.get("startup")
    if not s:
        _missing(ax, title)
        return
    rows = [("first\ninference", s["first_inference"]), ("server\nready", s["ready"]),
            ("import\ntorch", s["import_torch"]), ("`true`", s["true"])]
    values = [r[1]["median"] for r in rows]
    bars = ax.bar(range(len(rows)), values, color=COLORS["bar"], yerr=_errors([r[1] for r in rows]),
                  capsize=3)
    _label_bars(ax, bars, [f"{v:.2f}" for v in values], [r[1]["max"] for r in rows])
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.set_title(title, loc="left", fontweight="bold")
    ax.set_ylim(0, max(r[1]["max"] for r in rows) * 1.25)


def _server(ax, data: dict) -> None:
    title = "Model server latency (ms)"
    s = data.get("server")
    if not s:
        _missing(ax, title)
        return
    rows = [("p50", s["p50_ms"]), ("p99", s["p99_ms"])]
    values = [r[1]["median"] for r in rows]
    bars = ax.bar(range(len(rows)), values, color=COLORS["bar"], yerr=_errors([r[1] for r in rows]),
                  capsize=3, width=0.5)
    _label_bars(ax, bars, [f"{v:.1f}" for v in values], [r[1]["max"] for r in rows])
    ax.set_xticks(range(len(rows)), [r[0] for r in rows])
    ax.set_title(title, loc="left", fontweight="bold")
    ax.set_ylim(0, max(r[1]["max"] for r in rows) * 1.3)
    ax.text(0.02, 0.97, f"{s['req_per_s']['median']:.0f} req/s, {s['clients']} clients\n"
                        f"RSS {s['rss_before_bytes'] / 1e6:.0f} -> {s['rss_after_bytes'] / 1e6:.0f} MB",
            transform=ax.transAxes, va="top", fontsize=8)


def _inference(ax, data: dict) -> None:
    title = "Inference: speed-up of TorchScript over eager (higher is faster; bars: range over rounds)"
    inf = data.get("inference")
    if not inf:
        _missing(ax, "Inference speed-up vs eager")
        return
    groups = []
    for device in inf["devices"]:
        for model in inf["models"]:
            for batch in sorted({r["batch"] for r in inf["results"]}):
                rows = {r["mode"]: r for r in inf["results"]
                        if (r["model"], r["batch"], r["device"]) == (model, batch, device)}
                if rows:
                    groups.append((f"{model} b={batch}" + (f" {device}" if device != "cpu" else "")
                                   + f"\neager {_micro(rows['eager']['median_us'])}", rows))
    _speedup_bars(ax, groups)
    ax.set_title(title, loc="left", fontweight="bold")


def _speedup_bars(ax, groups: list[tuple[str, dict]]) -> None:
    """Bars of script/trace/freeze speed-up per (label, rows by mode) group, whiskers over rounds."""
    width = 0.26
    for i, mode in enumerate(MODES):
        xs = [g + (i - 1) * width for g in range(len(groups))]
        ups = [rows[mode]["speedup_vs_eager"] for _, rows in groups]
        err = [[u - rows[mode]["speedup_round_min"] for u, (_, rows) in zip(ups, groups, strict=True)],
               [rows[mode]["speedup_round_max"] - u for u, (_, rows) in zip(ups, groups, strict=True)]]
        err = [[max(0.0, e) for e in side] for side in err]
        bars = ax.bar(xs, ups, width, color=COLORS[mode], label=mode, yerr=err, capsize=2)
        _label_bars(ax, bars, [f"{u:.2f}" for u in ups], [u + e for u, e in zip(ups, err[1],
                                                                                  strict=True)])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    ax.set_ylabel("eager latency / variant latency")
    ax.legend(fontsize=8, ncols=3, loc="upper right")
    top = max(r.get("speedup_round_max", 1.0) for _, rows in groups for r in rows.values())
    ax.set_ylim(0, max(1.5, top * 1.15))


def _gpu(ax, data: dict) -> None:
    """Speed-ups from a gpu-proof report: that machine and its torch, not the image."""
    g = data["gpu_proof"]
    m, lat = g["machine"], g.get("latency")
    title = (f"GPU host, not the image: {m.get('gpu') or m['device']}, driver "
             f"{m.get('driver') or '?'}, torch {m['torch']} (gpu-proof on {m['hostname']}, "
             f"{m['date'][:10]}): speed-up over eager")
    if not lat:
        _missing(ax, title)
        return
    groups = []
    for (model, batch) in dict.fromkeys((r["model"], r["batch"]) for r in lat["results"]):
        rows = {r["mode"]: r for r in lat["results"] if (r["model"], r["batch"]) == (model, batch)}
        groups.append((f"{model} b={batch}\neager {_micro(rows['eager']['median_us'])}", rows))
    _speedup_bars(ax, groups)
    ax.set_title(title, loc="left", fontweight="bold")


def _micro(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def render(data: dict, path: Path) -> None:
    """Draw the charts of one run into `path`."""
    gpu = bool(data.get("gpu_proof"))
    fig = plt.figure(figsize=(16, 14 if gpu else 9.5), dpi=100)
    grid = fig.add_gridspec(3 if gpu else 2, 4, height_ratios=[1, 1.15, 1.15][:3 if gpu else 2],
                            hspace=0.45, wspace=0.28)
    _sizes(fig.add_subplot(grid[0, 0]), data)
    _build(fig.add_subplot(grid[0, 1]), data)
    _startup(fig.add_subplot(grid[0, 2]), data)
    _server(fig.add_subplot(grid[0, 3]), data)
    _inference(fig.add_subplot(grid[1, :]), data)
    if gpu:
        _gpu(fig.add_subplot(grid[2, :]), data)
    m = data["machine"]
    fig.suptitle(f"pytorch-cuda {data['cell']} on {m['cpu_model']} ({m['cpu_cores']} cores), "
                 f"{m['date'][:10]}; medians of {data['options']['runs']} runs, "
                 "whiskers min-max", fontsize=12)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
