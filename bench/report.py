"""The report of one benchmark run: report.json (every figure), report.md (tables)
and report.png (charts)."""

from __future__ import annotations

import json
from pathlib import Path

from pytorch_cuda.core.progress import human_bytes

from . import chart

MODES = ("eager", "script", "trace", "freeze")


def write(data: dict, out: Path) -> list[Path]:
    """Write the three report files into `out`; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.md", out / "report.png"]
    paths[0].write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    paths[1].write_text(markdown(data))
    chart.render(data, paths[2])
    return paths


# --- formatting ---------------------------------------------------------------------


def seconds(s: dict | None) -> str:
    if not s:
        return "-"
    if s["n"] == 1:
        return f"{s['median']:.1f} s (1 run)"
    return f"{s['median']:.2f} s ({s['min']:.2f}-{s['max']:.2f})"


def minutes(s: dict | None) -> str:
    if not s:
        return "-"
    if s["median"] < 120:
        return seconds(s)
    text = f"{s['median'] / 60:.1f} min"
    return text + (" (1 run)" if s["n"] == 1 else f" ({s['min'] / 60:.1f}-{s['max'] / 60:.1f})")


def micro(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.1f} µs"


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows), ""]


# --- sections -----------------------------------------------------------------------


def _header(data: dict) -> list[str]:
    m = data["machine"]
    o = data["options"]
    parts = ",".join(data["parts"])
    gpus = ", ".join(m["gpus"]) or "none visible: CPU figures only"
    load = data.get("load_average_start"), data.get("load_average_end")
    lines = [
        "# Benchmarks of the pytorch-cuda images", "",
        f"`python -m bench --only {parts} --runs {o['runs']}"
        + (f" --build-runs {o['build_runs']}" if "build" in data["parts"] else "")
        + f"` measured cell `{data['cell']}` on {m['date']} (revision "
        + f"`{data['revision'].removesuffix('-dirty')[:12]}"
        + ("-dirty" if data["revision"].endswith("-dirty") else "") + "`).",
        "",
        f"Every figure is the median of {o['runs']} runs with the min-max range in brackets, "
        "unless a row says otherwise; every ratio compares figures measured side by side in "
        "this run. These are measurements, not tests: nothing here is asserted.",
        "",
        *_table(["machine", ""], [
            ["CPU", f"{m['cpu_model']}, {m['cpu_cores']} cores"],
            ["memory", human_bytes(m["memory_bytes"] or 0)],
            ["kernel", m["kernel"]],
            ["engine", f"Docker {m['engine_version']} (API {m['engine_api_version']}), storage "
                       f"driver {m['storage_driver']}, cgroup v{m['cgroup_version']}"],
            ["GPU", gpus],
            ["load average (1/5/15 min)", f"{_load(load[0])} at start, {_load(load[1])} at end"],
            ["other running containers", f"{data.get('other_containers_start', 0)} at start, "
                                         f"{data.get('other_containers_end', 0)} at end"],
            ["time per part", ", ".join(f"{k} {v:.0f} s" for k, v in data["seconds"].items())],
        ]),
    ]
    for note in data.get("notes", []):
        lines.append(f"> Note: {note}.")
        lines.append("")
    for part, why in data.get("failures", {}).items():
        lines.append(f"> **{part} failed**: {why}")
        lines.append("")
    return lines


def _load(values: list[float] | None) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "?"


def _sizes(data: dict) -> list[str]:
    size = data.get("size")
    naive = (data.get("build") or {}).get("naive_image")
    if not size and not naive:
        return []
    lines = ["## Image size", ""]
    rows = []
    if size:
        images = size["images"]
        for name in ("dev", "prod"):
            im = images[name]
            rows.append([f"{name} (`{im['ref'].split(':', 1)[1]}`)", human_bytes(im["size_bytes"]),
                         human_bytes(im["compressed_bytes"]), im["layers"]])
    if naive:
        rows.append(["naive single-stage (build part)", human_bytes(naive["size_bytes"]),
                     human_bytes(naive["compressed_bytes"]), naive["layers"]])
    if size:
        im = size["images"]["base"]
        rows.append([f"base OS (`{im['ref']}`)", human_bytes(im["size_bytes"]),
                     human_bytes(im["compressed_bytes"]), im["layers"]])
        fl = size["floor"]
        rows.append([f"floor: base + files torch loads ({'+'.join(fl['devices'])})",
                     human_bytes(fl["floor_bytes"]), "-", "-"])
        if "gpu_floor_bytes" in fl:
            rows.append(["GPU floor: the floor + libraries that load only on a GPU",
                         human_bytes(fl["gpu_floor_bytes"]), "-", "-"])
    lines += _table(["image", "uncompressed (engine)", "compressed (gzip -6 layers)", "layers"],
                    rows)
    if size:
        sh, dev, prod = size["dev_prod_shared"], size["images"]["dev"], size["images"]["prod"]
        fl = size["floor"]
        both = dev["compressed_bytes"] + prod["compressed_bytes"]
        lines += [
            f"- dev and prod share {sh['layers']} layer(s): {human_bytes(sh['layer_tar_bytes'])} "
            f"uncompressed, {human_bytes(sh['compressed_bytes'])} compressed; a registry or a "
            f"host that has both stores {human_bytes(both - sh['compressed_bytes'])} compressed "
            f"instead of {human_bytes(both)}.",
            f"- The floor is the base image ({human_bytes(fl['base_bytes'])}) plus the "
            f"{fl['venv_loaded_files']} files under /opt/venv* that `import torch` and a "
            f"scripted model map or import ({human_bytes(fl['venv_loaded_bytes'])} of the "
            f"{human_bytes(fl['venv_installed_bytes'])} installed there) plus "
            f"{fl['other_loaded_files']} loaded files the base lacks (Python and its standard "
            f"library, {human_bytes(fl['other_loaded_bytes'])}). prod is "
            f"{times(prod['size_bytes'] / fl['floor_bytes'])} the floor"
            + (f" and {times(prod['size_bytes'] / fl['gpu_floor_bytes'])} the GPU floor (plus "
               f"{human_bytes(fl['gpu_only_bytes'])} of cuDNN sub-libraries and NVRTC builtins "
               "that load only on a GPU)." if "gpu_floor_bytes" in fl else "."),
            "- Largest installed files that were not loaded: " + ", ".join(
                f"`{Path(p).name}` ({human_bytes(s)})" for p, s in fl["largest_not_loaded"][:6])
            + ("" if "cuda" in fl["devices"] else
               " (on the CPU; some of these load once CUDA kernels run)") + ".",
        ]
        if naive:
            lines.append(f"- prod is {times(prod['size_bytes'] / naive['size_bytes'])} the naive "
                         f"image uncompressed, "
                         f"{times(prod['compressed_bytes'] / naive['compressed_bytes'])} "
                         "compressed.")
        own = dev["compressed_bytes"] - sh["compressed_bytes"]
        lines.append(f"- dev's own layers on top of what it shares with prod: {human_bytes(own)} "
                     "compressed (what a host that has prod pulls for dev).")
        lines.append("")
    return lines


def _split(figure: dict, normalizes: bool) -> str:
    if not normalizes:
        return ""
    return (f"engine build {minutes(figure['build_s'])} + normalize "
            f"{minutes(figure['normalize_s'])}; ")


def _saved(saved: dict | bool | None) -> str:
    """Which builds normalization had to save (the others had only known layers: no save)."""
    if saved is None:
        return ""
    if isinstance(saved, bool):
        return "; normalized " + ("with a save" if saved else "without a save (all layers known)")
    return "; normalized " + ", ".join(
        f"{variant} {'with a save' if was else 'without a save'}" for variant, was in saved.items())


def _build(data: dict) -> list[str]:
    b = data.get("build")
    if not b:
        return []
    cold, naive, noop, change = b["cold"], b["naive"], b["noop"], b["dev_change"]
    norm = b["normalizes"]
    same = cold["reproduces_tagged"]
    lines = ["## Build", "",
             f"Cold and naive builds and the dev-only change ran {b['build_runs']} time(s) each "
             f"(`--build-runs`), no-op rebuilds {b['runs']} times"
             + ("; project builds include normalization, as `make image` does" if norm else "")
             + ".", ""]
    rows = [
        ["cold default cell: dev + prod, no build cache, empty wheelhouse, base cached",
         minutes(cold["total_s"]),
         (f"wheels downloaded {seconds(cold['wheels_s'])} + " if "wheels_s" in cold else "")
         + _split(cold, norm) + f"dev {minutes(cold['dev']['seconds'])}, prod "
         f"{minutes(cold['prod']['seconds'])} ({cold['prod_cached_steps']}/{cold['prod_steps']} "
         f"steps from the dev build); same image IDs as the tagged ones: dev "
         f"{'yes' if same['dev'] else 'no'}, prod {'yes' if same['prod'] else 'no'}"
         + _saved(cold.get("normalize_saved"))],
        ["naive single-stage Dockerfile, no cache, stock base", minutes(naive["seconds"]),
         "`pip install torch` into a venv (below); not normalized"],
    ]
    for variant in ("dev", "prod"):
        n = noop[variant]
        rows.append([f"no-op rebuild of {variant}", seconds(n["seconds"]),
                     _split(n, norm) + f"{n['cached_steps']}/{n['steps']} steps cached; same "
                     f"image ID as the tagged one: {'yes' if n['same_image_as_tagged'] else 'no'}"])
    rows.append(["dev rebuild after a dev-only change", minutes(change["seconds"]),
                 _split(change, norm) + f"{change['rebuilt_steps']}/{change['steps']} steps "
                 f"rebuilt; pip downloads from an index: {change['python_download_lines']}; apt "
                 f"fetches: {change['apt_fetches']}" + _saved(change.get("normalize_saved"))])
    lines += _table(["build", "time", "detail"], rows)
    lines += [f"- Cold project build / naive build: {times(b['ratio_cold_vs_naive'])}"
              + (f" ({times(b['ratio_cold_build_only_vs_naive'])} without normalization)"
                 if norm else "") + ".",
              f"- The dev-only change: {change['change']}; "
              + ("no Python package was downloaded again." if not change["python_download_lines"]
                 else "Python packages were downloaded again: "
                 + "; ".join(change["python_download_examples"][:3]) + "."),
              "", "The naive Dockerfile:", "", "```dockerfile", naive["dockerfile"].rstrip(), "```",
              ""]
    return lines


def _startup(data: dict) -> list[str]:
    s = data.get("startup")
    if not s:
        return []
    lines = ["## Startup", "",
             f"From the container create call to ... (prod image, {'GPU' if s['gpu'] else 'CPU'}, "
             "warm page cache):", ""]
    lines += _table(["from `docker run` to", "time"], [
        ["first successful inference on the model server", seconds(s["first_inference"])],
        ["server ready (every model loaded)", seconds(s["ready"])],
        ['`python -c "import torch"` exited', seconds(s["import_torch"])],
        ["`true` exited (the engine's own cost of a container)", seconds(s["true"])],
    ])
    own = s["true"]["median"]
    lines += [f"- First inference / `import torch`: "
              f"{times(s['ratio_first_inference_vs_import_torch'])}. Net of the container's own "
              f"cost (`true`): first inference {s['first_inference']['median'] - own:.2f} s, "
              f"`import torch` {s['import_torch']['median'] - own:.2f} s.", ""]
    return lines


def _inference(data: dict) -> list[str]:
    inf = data.get("inference")
    if not inf:
        return []
    lines = ["## Inference latency", "",
             f"In the prod image (torch {inf['torch']}, {inf['threads']} intra-op threads), "
             f"{inf['rounds']} interleaved rounds per model and batch size after warm-up. Models: "
             + "; ".join(f"**{k}**: {v}" for k, v in inf["models"].items()) + ".", ""]
    for device in inf["devices"]:
        rows_lat, rows_up = [], []
        keys = sorted({(r["model"], r["batch"]) for r in inf["results"] if r["device"] == device},
                      key=lambda k: (list(inf["models"]).index(k[0]), k[1]))
        for model, batch in keys:
            by_mode = {r["mode"]: r for r in inf["results"]
                       if (r["model"], r["batch"], r["device"]) == (model, batch, device)}
            rows_lat.append([model, batch] + [f"{micro(by_mode[m]['median_us'])} "
                                              f"(p99 {micro(by_mode[m]['p99_us'])})"
                                              for m in MODES])
            rows_up.append([model, batch] + [
                f"{times(by_mode[m]['speedup_vs_eager'])} "
                f"({by_mode[m]['speedup_round_min']:.2f}-{by_mode[m]['speedup_round_max']:.2f})"
                for m in MODES[1:]])
        lines += [f"### {device.upper()}: median latency per call (p99)", ""]
        lines += _table(["model", "batch", *MODES], rows_lat)
        lines += [f"### {device.upper()}: speed-up vs eager (range over rounds; above 1 is faster)",
                  ""]
        lines += _table(["model", "batch", *MODES[1:]], rows_up)
    ups = {m: [r["speedup_vs_eager"] for r in inf["results"] if r["mode"] == m] for m in MODES[1:]}
    lines += ["- The design expects TorchScript to be typically 20-50 % faster than eager. "
              "On this machine the speed-ups range: " + "; ".join(
                  f"{m} {min(v):.2f}x to {max(v):.2f}x" for m, v in ups.items()) + "."]
    traced = [r for r in inf["results"] if r["mode"] == "trace" and r["tracer_warnings"]]
    if traced:
        lines.append("- Tracing " + ", ".join(sorted({r["model"] for r in traced}))
                     + " raised TracerWarnings: the traced model keeps only the branch the "
                       "example input took (the timed inputs take that branch too).")
    diffs = max(r["max_abs_diff_vs_eager"] for r in inf["results"])
    lines += [f"- Largest difference of any variant's output from eager's: {diffs:.1e}.", ""]
    return lines


def _server(data: dict) -> list[str]:
    s = data.get("server")
    if not s:
        return []
    lines = ["## Model server", "",
             f"{s['runs']} rounds of {s['requests']} requests from {s['clients']} concurrent "
             f"tritonclient HTTP clients (after {s['warmup_requests']} warm-up requests), "
             f"{'GPU' if s['gpu'] else 'CPU'}:", ""]
    lines += _table(["per round", "median", "min-max"], [
        ["requests/s", f"{s['req_per_s']['median']:.0f}",
         f"{s['req_per_s']['min']:.0f}-{s['req_per_s']['max']:.0f}"],
        ["latency p50", f"{s['p50_ms']['median']:.1f} ms",
         f"{s['p50_ms']['min']:.1f}-{s['p50_ms']['max']:.1f} ms"],
        ["latency p99", f"{s['p99_ms']['median']:.1f} ms",
         f"{s['p99_ms']['min']:.1f}-{s['p99_ms']['max']:.1f} ms"],
    ])
    grew = s["rss_after_bytes"] - s["rss_before_bytes"]
    lines += [f"- Failed requests: {s['errors']}.",
              f"- Server RSS: {human_bytes(s['rss_before_bytes'])} when ready, "
              f"{human_bytes(s['rss_after_bytes'])} after all rounds "
              f"({'+' if grew >= 0 else '-'}{human_bytes(abs(grew))}).", ""]
    for c in s["compare"]:
        lines += _server_compare(c)
    return lines


def _server_compare(c: dict) -> list[str]:
    """ptserve with and without dynamic batching against a Flask app, one model, one image."""
    names = {"conv": "ptserve", "conv_batched": "ptserve, dynamic batching",
             "flask": "Flask + waitress (hand-written)"}
    rows = [[names[key], f"{t['req_per_s']['median']:.0f}",
             f"{t['req_per_s']['min']:.0f}-{t['req_per_s']['max']:.0f}",
             f"{t['p50_ms']['median']:.1f} ms", f"{t['p99_ms']['median']:.1f} ms",
             f"{t['non_2xx']} / {t['socket_errors']}"]
            for key, t in c["targets"].items()]
    overhead = c["overhead_ms"]
    return [f"### ptserve against the alternatives: {c['model'].split(',')[1].strip()}", "",
            f"{c['model']}: {c['runs']} rounds of {c['seconds']} s per server, each from "
            f"{c['clients']} keep-alive connections of {c['client']}, same image:", "",
            *_table(["server", "requests/s", "min-max", "p50", "p99", "non-2xx / socket errors"],
                    rows),
            f"- Dynamic batching: {times(c['batching_speedup'])} the unbatched throughput "
            "(goal: 3x)." + _batch_bound(c),
            f"- Batched ptserve against Flask: {times(c['vs_flask'])} its throughput (goal: 2x); "
            f"unbatched: {times(c['unbatched_vs_flask'])}.",
            f"- One client: p50 {c['single_client_p50_ms']['ptserve']:.2f} ms (ptserve), "
            f"{c['single_client_p50_ms']['flask']:.2f} ms (Flask), against "
            f"{c['inprocess_ms']:.2f} ms for an in-process call: ptserve adds "
            f"{overhead['ptserve']:.2f} ms (goal: at most 1 ms), Flask "
            f"{overhead['flask']:.2f} ms.", ""]


def _batch_bound(c: dict) -> str:
    """What batching can gain at most: the model's own per-item saving at batch 32, with the
    threads a lone call gets and on one thread (a worker's share of busy CPUs)."""
    return (f" The model alone, in-process: a batch of 32 takes {c['inprocess_batch32_ms']:.2f} ms, "
            f"{c['inprocess_batch32_ms'] / 32:.3f} ms per item against {c['inprocess_ms']:.3f} ms "
            f"for one, so batching makes the model at most {times(c['model_batch_gain'])} cheaper "
            "per request; the HTTP and JSON work per request is the same either way, so the "
            "end-to-end gain stays below that. On one thread (each server worker's share of the "
            f"CPUs), the model takes {c['one_thread_ms']:.3f} ms for one and "
            f"{c['one_thread_batch32_ms'] / 32:.3f} ms per item in a batch of 32: "
            f"{times(c['model_batch_gain_one_thread'])} less CPU per request, the most batching "
            "can gain once the CPUs are saturated.")


METHOD = """\
## How each figure is measured

- **Uncompressed size**: the engine's image size (the sum of its layers' files).
- **Compressed size**: every layer of `docker save` streamed through gzip level 6
  (deflated in parallel 1 MiB blocks, as pigz does); an image's figure sums its
  distinct layers, which is what a registry stores and a pull downloads.
  Results are kept per layer digest in `bench/work/`, so each layer is
  compressed once.
- **Shared**: layers of dev and prod with the same digest (diff_id).
- **Floor**: the base image plus every file under the virtual environments that
  `import torch`, scripting and running a small model maps (`/proc/self/maps`)
  or imports (`sys.modules`) inside the prod image, plus loaded files the base
  lacks. Files that only load on a GPU count only where a GPU is visible.
- **Cold build**: the cell's locked wheels downloaded on the host into an empty
  wheelhouse, dev with `nocache` (the base image stays), then prod with only
  the dev build's images as its cache (`cache_from`), as a first `make image`
  on a new machine; then both are normalized together as `make image` does
  (one save and one load, so their shared heavy layers are copied once; each
  image's figure is its share, by the bytes it added). A normalized layer the
  engine already holds (the tagged images of the same commit) is not loaded
  again, so this is the cold build of a machine that built the commit before;
  on a fresh machine every layer is loaded (time `make image` there). The naive
  Dockerfile is built with `nocache` and not normalized, on the stock base a
  hand-written image starts from: the same bootstrap with apt and nothing else
  (the project's base carries the runtime packages and no apt). Python
  wheels come from the network each time (the project's through the empty
  wheelhouse), so the index's speed is part of both figures.
- **No-op rebuild**: the same context again, cache on, then normalization
  (which reuses an earlier result for the same raw build). **Dev-only change**: a
  `LABEL` inserted after `FROM runtime AS dev` (in a copy of the context),
  so every step of the dev stage runs again; pip's output is searched for
  `Downloading` from an index (the host's wheelhouse does not count).
- **Startup**: from the container create call until the server answers an
  inference with 200 (polled every 10 ms) or the command exits.
- **Inference**: per-call wall time inside the prod image after warm-up; the
  four variants of a model are timed in interleaved rounds.
- **Server**: wall time of each `infer` call in the clients; requests/s is
  successful requests over the round's wall time; RSS is the VmRSS of the
  server's Python process.
"""

LIMITS = """\
## Limits

- One machine, one run: figures move with other work on the machine and the
  engine (see the load averages and running containers above). Compare ratios
  from one run rather than absolute figures from different runs.
- The server's load clients run on the same machine and compete with the
  server for its CPUs.
- Builds download wheels and Debian packages; their times include the
  network and the package index or proxy in between.
- An interrupted run removes its containers and tagged images; intermediate
  images of a build killed hard (SIGKILL) can stay behind as untagged images.
"""


def _gpu(data: dict) -> list[str]:
    """The section of a gpu-proof report: figures of the machine and torch it ran on."""
    g = data.get("gpu_proof")
    if not g:
        return []
    m = g["machine"]
    result = "passed" if g["ok"] else "FAILED: " + "; ".join(g["failed"])
    lines = ["## GPU (from a gpu-proof report, not from these images)", "",
             f"From `{data.get('gpu_proof_file', 'the gpu-proof report')}`: `python -m ptc_checks "
             f"gpu-proof` ran on the {m['where']} `{m['hostname']}` on {m['date']} with that "
             f"machine's own Python and torch. These figures describe that machine, its driver "
             "and that torch build, not the images measured above.", ""]
    rows = [["GPU", f"{m.get('gpu') or '-'} (capability {m.get('capability') or '-'}, "
                    f"{m.get('gpu_count') or 0} visible, "
                    f"{human_bytes(m.get('gpu_memory_bytes') or 0)})"],
            ["driver", m.get("driver") or "?"],
            ["torch", f"{m['torch']} (CUDA {m['cuda']}, cuDNN {m['cudnn']}), Python {m['python']}"],
            ["checks", f"{len(g['checks'])} checks {result}"]]
    serve = g.get("serve") or {}
    if serve.get("load"):
        lo = serve["load"]
        rows.append(["model server", f"ready in {serve['ready_s']:.1f} s on {serve['device']}; "
                     f"{lo['clients']} clients for {lo['seconds']:.0f} s: {lo['req_per_s']:.0f} "
                     f"req/s, p50 {lo['p50_ms'] or 0:.1f} ms, p99 {lo['p99_ms'] or 0:.1f} ms, "
                     f"{lo['errors']} errors"])
    if serve.get("drain"):
        dr = serve["drain"]
        rows.append(["SIGTERM drain", f"{dr['answered']}/{dr['requests']} slow requests answered, "
                     f"exit {dr['exit_code']} after {dr['seconds']:.2f} s"])
    lines += _table(["gpu-proof", ""], rows)
    lat = g.get("latency")
    if lat:
        by_key: dict = {}
        for r in lat["results"]:
            by_key.setdefault((r["model"], r["batch"]), {})[r["mode"]] = r
        lines += [f"### GPU: median latency per call and speed-up vs eager ({lat['rounds']} "
                  f"interleaved rounds, {lat['device']})", ""]
        lines += _table(["model", "batch", "eager", *MODES[1:]], [
            [model, batch, micro(modes["eager"]["median_us"])]
            + [f"{micro(modes[m]['median_us'])} ({times(modes[m]['speedup_vs_eager'])})"
               for m in MODES[1:]]
            for (model, batch), modes in by_key.items()])
    fl = g.get("floor")
    if fl:
        lines += ["### GPU floor: files mapped for TorchScript inference on the GPU", ""]
        lines += _table(["package (site-packages)", "mapped"],
                        [[name, human_bytes(size)] for name, size in fl["packages"].items()]
                        + [["**total**", f"**{human_bytes(fl['site_packages_bytes'])}**"]])
        libs = sorted({lib["file"] for lib in fl["nvidia_libs"]})
        lines += [f"- NVIDIA libraries mapped ({len(libs)}): "
                  + (", ".join(f"`{name}`" for name in libs) or "none") + ".",
                  f"- triton imported: {'yes' if fl['triton_imported'] else 'no'}.", ""]
    return lines


def markdown(data: dict) -> str:
    lines = _header(data)
    for section in (_sizes, _build, _startup, _inference, _server, _gpu):
        lines += section(data)
    lines += ["![charts](report.png)", "", METHOD, LIMITS]
    return "\n".join(lines).rstrip() + "\n"
