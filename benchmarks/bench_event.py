"""What one probe event costs, against a bare forward pass and against the usual tutorial workflow.

    python benchmarks/bench_event.py --model vgg16 --batch 8
    python benchmarks/bench_event.py --model all            # resnet18, vgg16, convnext_tiny at 224 px
    python benchmarks/bench_event.py --quick                # a tiny CNN at 32 px: every column in a few seconds
    python benchmarks/bench_event.py --model resnet18 --against 4006d26   # also the package at a git revision

Per model (random weights, eval, batch of random images), measured side by side in one process with
interleaved repeats (the order rotates each repeat) and medians:

- bare: ``model(x)`` under ``torch.no_grad()``;
- event: ``FeatureMapProbe(model).run(x)``: statistics of every conv layer and the default 6 pictures
  (grid and overlay each, plus the probe input), all the way to the small CPU results;
- stats only: the same probe with ``image_layers=[]``, to show what the statistics alone cost;
- event, no similarity: the event with ``similarity=False`` (no Gram matrix for CKA, no value histogram per
  layer), to show what the representation-change statistics cost (the Gram matrix is N²·D per layer);
- event, own outputs: the event with ``follow_activations=False`` (each conv output judged alone, the default
  before 0.2), to show what following each conv to its ReLU costs;
- event+TB: the event, then every tag written through the BackgroundWriter to a real SummaryWriter, flushed;
- with ``--against REV``, event (REV) and event+TB (REV): the same two with the package as it was at that git
  revision (imported from ``git archive`` as a package of its own), interleaved with the others, each writer with
  its own event file, so one run gives before/after figures side by side;
- tutorial: hooks keeping ``.detach().cpu()`` of every conv output, then one matplotlib figure per layer
  (an 8x8 grid of ``imshow`` of the first sample's channels) saved as PNG.

Memory: extra peak of each variant over a bare forward. On CPU, in fresh subprocesses: each warms every
variant up on a tiny model (so lazy imports and caches are alike), builds the real model, runs one bare
forward, then resets its peak-RSS mark (``/proc/self/clear_refs``) and runs the variant once; its figure
is how far RSS rose above the level at the reset. The extra is the median over ``--memory-runs``
processes minus the same for a bare forward. On CUDA, ``torch.cuda.max_memory_allocated`` in this
process. The target compares it with the largest single activation of the model. Also: event-file
bytes per event and the forward hooks left on the model after an event.

Prints markdown tables and writes the numbers to JSON (``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a fresh clone runs without installing the package

from results_json import save_results  # noqa: E402

from fm_callback import FeatureMapProbe, background  # noqa: E402
from fm_callback import tensorboard_writer as tb  # noqa: E402
from fm_callback.select import select_layers  # noqa: E402

MODELS = ("resnet18", "vgg16", "convnext_tiny")
VARIANTS = ("bare", "event", "event_own", "event_stats", "event_nosim", "event_tb", "tutorial")
THEN_VARIANTS = ("event_then", "event_tb_then")  # with --against REV
MEMORY_VARIANTS = ("bare", "event", "event_tb", "tutorial")
MEMORY_KIND = ("RSS rise over a bare forward's, fresh processes", "cuda max_memory_allocated over a bare forward's")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MB = 1e6

TIME_COLUMNS = [
    "model",
    "input",
    "layers",
    "bare forward (ms)",
    "event (ms)",
    "event / bare",
    "event, own outputs / bare",
    "stats only / bare",
    "event, no similarity (ms)",
    "event / event, no similarity",
    "event+TB (ms)",
    "event+TB / bare",
    "tutorial (ms)",
    "tutorial / bare",
]
MEMORY_COLUMNS = [
    "model",
    "largest activation (MB)",
    "event extra peak (MB)",
    "event / largest",
    "event+TB extra peak (MB)",
    "tutorial extra peak (MB)",
    "tutorial / largest",
    "event file (bytes/event)",
    "hooks left after event",
]


class TinyCNN(nn.Module):
    """The ``--quick`` model: three conv layers, enough for every column at 32 px in a few seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(name: str, batch: int, size: int, device: torch.device) -> tuple[nn.Module, torch.Tensor]:
    """A model with random weights (seeded; nothing is downloaded) in eval mode, and a random input batch."""
    torch.manual_seed(0)
    if name == "tiny":
        model = TinyCNN()
    else:
        import torchvision

        model = getattr(torchvision.models, name)(weights=None)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model.eval().to(device), x.to(device)


def count_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def largest_activation(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the largest tensor any leaf module outputs during one forward."""
    largest = 0

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel() * output.element_size())

    hooked_forward(model, x, [(m, hook) for m in model.modules() if not list(m.children())])
    return largest


def hooked_forward(model: nn.Module, x: torch.Tensor, hooks: list[tuple[nn.Module, Callable]]) -> None:
    """One ``model(x)`` under ``no_grad`` with the forward ``hooks`` on, and off again whatever happens."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()


class Variants:
    """The four things measured, as zero-argument callables on one model and input."""

    def __init__(self, model: nn.Module, x: torch.Tensor, workdir: Path, then: Any = None) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from torch.utils.tensorboard import SummaryWriter

        self.model, self.x, self.plt = model, x, plt
        self.layers = select_layers(model, None)  # every Conv1d/2d/3d: what the probe watches by default
        self.probe = FeatureMapProbe(model, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        self.stats_probe = FeatureMapProbe(model, image_layers=[])  # the same statistics, no picture at all
        self.own_probe = FeatureMapProbe(model, mean=IMAGENET_MEAN, std=IMAGENET_STD, follow_activations=False)
        self.nosim_probe = FeatureMapProbe(model, mean=IMAGENET_MEAN, std=IMAGENET_STD, similarity=False)
        self.figures = workdir / "tutorial"
        self.figures.mkdir(parents=True, exist_ok=True)
        self.logdir = workdir / "tb"
        self.writer = background.BackgroundWriter(SummaryWriter(str(self.logdir)))
        self.step = 0
        self.cuda = x.device.type == "cuda"
        if then is not None:  # the package at --against REV
            try:  # the SummaryWriter calls: tensorboard_writer.py, in tensorboard.py before the house issue
                self.then_tb = importlib.import_module(f"{then.__name__}.tensorboard_writer")
            except ModuleNotFoundError:
                self.then_tb = importlib.import_module(f"{then.__name__}.tensorboard")
            try:  # a submodule is an attribute of its package only once imported
                self.then_background = importlib.import_module(f"{then.__name__}.background")
            except ModuleNotFoundError:  # older trees: in tensorboard.py
                self.then_background = self.then_tb
            self.then_probe = then.FeatureMapProbe(model, mean=IMAGENET_MEAN, std=IMAGENET_STD)
            self.then_writer = self.then_background.BackgroundWriter(SummaryWriter(str(workdir / "tb_then")))

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def bare(self) -> None:
        with torch.no_grad():
            self.model(self.x)
        self.sync()

    def event(self) -> None:
        self.probe.run(self.x)
        self.sync()

    def event_own(self) -> None:
        self.own_probe.run(self.x)
        self.sync()

    def event_stats(self) -> None:
        self.stats_probe.run(self.x)
        self.sync()

    def event_nosim(self) -> None:
        self.nosim_probe.run(self.x)
        self.sync()

    def event_tb(self) -> None:
        self._event_written(self.probe, self.writer, tb.write_result)

    def event_then(self) -> None:
        self.then_probe.run(self.x)
        self.sync()

    def event_tb_then(self) -> None:
        self._event_written(self.then_probe, self.then_writer, self.then_tb.write_result)

    def _event_written(self, probe: Any, writer: Any, write_result: Callable) -> None:
        """One event of ``probe``, every tag written through ``writer`` (a BackgroundWriter) and flushed."""
        result = probe.run(self.x)
        self.step += 1
        writer.submit(write_result, result, self.step, what=f"writing step {self.step}")
        writer.flush()

    def tutorial(self) -> None:
        """Hooks that keep a CPU copy of every layer, then one matplotlib figure per layer, saved as PNG.

        The figure is the tutorials' 8x8 grid of ``imshow``, one per channel of the first sample (fewer rows
        for a layer with fewer than 64 channels).
        """
        kept: dict[str, torch.Tensor] = {}

        def keep(name: str) -> Callable:
            def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
                kept[name] = output.detach().cpu()

            return hook

        handles = [module.register_forward_hook(keep(name)) for name, module in self.layers]
        try:
            with torch.no_grad():
                self.model(self.x)
        finally:
            for handle in handles:
                handle.remove()
        for name, act in kept.items():
            rows = min(8, -(-act.shape[1] // 8))
            fig, axes = self.plt.subplots(rows, 8, figsize=(8, rows), squeeze=False)
            for i, ax in enumerate(axes.flat):
                if i < act.shape[1]:
                    ax.imshow(act[0, i].numpy(), cmap="viridis")
                ax.axis("off")
            fig.savefig(self.figures / f"{name}.png")
            self.plt.close(fig)

    def event_file_bytes(self, logdir: Path | None = None) -> int:
        return sum(f.stat().st_size for f in (logdir or self.logdir).glob("events.out.tfevents.*"))

    def close(self) -> None:
        self.writer.close(close_writer=True)
        if hasattr(self, "then_writer"):
            self.then_writer.close(close_writer=True)


def package_at(revision: str, into: Path) -> Any:
    """``fm_callback`` as it was at a git revision, imported as a package of its own (``fm_callback_then``)."""
    archive = subprocess.run(["git", "archive", revision, "fm_callback"], cwd=ROOT, check=True, capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    spec = importlib.util.spec_from_file_location(
        "fm_callback_then", into / "fm_callback" / "__init__.py", submodule_search_locations=[str(into / "fm_callback")]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["fm_callback_then"] = package
    spec.loader.exec_module(package)
    return package


def timed(fn: Callable[[], None], clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    fn()
    return clock() - start


def measure_times(
    v: Variants, repeats: int, tutorial: bool = True, clock: Callable[[], float] = time.perf_counter
) -> tuple[dict[str, list[float]], int, int | None]:
    """Seconds per run of each variant, interleaved (the order rotates each repeat); and event-file bytes per
    event of this tree's writer and of the ``--against`` revision's (None without one)."""
    names = [*VARIANTS, *(THEN_VARIANTS if hasattr(v, "then_probe") else ())]
    fns = {name: getattr(v, name) for name in names if tutorial or name != "tutorial"}
    for fn in fns.values():  # warm-up: first-call costs (allocator, oneDNN primitives, imports) are not timed
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    then_dir = v.logdir.parent / "tb_then"
    size_before, then_before = v.event_file_bytes(), v.event_file_bytes(then_dir)
    for r in range(repeats):
        order = list(fns)[r % len(fns) :] + list(fns)[: r % len(fns)]
        for name in order:
            times[name].append(timed(fns[name], clock))
    per_event = (v.event_file_bytes() - size_before) // repeats
    then_per_event = (v.event_file_bytes(then_dir) - then_before) // repeats if "event_tb_then" in fns else None
    return times, per_event, then_per_event


# ---- memory ------------------------------------------------------------------------------------------------


def _status_bytes(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status in bytes (None off Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return None


def rss_rise(fn: Callable[[], None]) -> int:
    """How far this process's resident memory rose above its level at the start while ``fn`` ran.

    The high-water mark is reset first (``/proc/self/clear_refs``), so building the model or the
    imports before cannot hide what ``fn`` needs. Without that file: the whole process's peak.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        start = _status_bytes("VmRSS") or 0
    except OSError:
        start = 0
    fn()
    peak = _status_bytes("VmHWM")
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return peak - start


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: warm-ups, one bare forward, then the variant once; print its RSS rise as JSON.

    Every child first runs all the variants on the tiny model, so that one-time costs (lazy imports,
    matplotlib's font cache, the colormap table) are alike in every child, then one bare forward of the
    real model (allocator and oneDNN warm), and only then measures.
    """
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        warm = Variants(*build("tiny", 2, 32, torch.device("cpu")), Path(tmp) / "warm-up")
        for name in VARIANTS:
            getattr(warm, name)()
        warm.close()
        model, x = build(args.model, args.batch, args.size, torch.device("cpu"))
        v = Variants(model, x, Path(tmp) / "measured")
        v.bare()
        rise = rss_rise(getattr(v, args.memory_child))
        v.close()
    print(json.dumps({"rss_rise": rise}))


def cpu_extra_memory(args: argparse.Namespace, model: str, jobs: int) -> tuple[dict[str, int], dict[str, list]]:
    """Extra peak RSS of each variant over a bare forward, each measured in fresh processes.

    Each variant's figure is the median over ``--memory-runs`` processes of how far RSS rose while it
    ran, minus the same for a bare forward; also returned: every run's rise, in bytes.
    """
    base = [sys.executable, str(Path(__file__).resolve()), "--model", model, "--batch", str(args.batch)]
    base += ["--size", str(args.size), "--threads", str(args.threads)]

    def child(variant: str) -> int:
        out = subprocess.run([*base, "--memory-child", variant], capture_output=True, text=True, check=False, cwd=ROOT)
        if out.returncode != 0:
            raise RuntimeError(f"memory child {variant} of {model} failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])["rss_rise"]

    runs = [name for name in MEMORY_VARIANTS for _ in range(args.memory_runs)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        measured = list(pool.map(child, runs))
    rises = {name: [m for r, m in zip(runs, measured, strict=True) if r == name] for name in MEMORY_VARIANTS}
    median = {name: statistics.median(values) for name, values in rises.items()}
    return {name: int(median[name] - median["bare"]) for name in MEMORY_VARIANTS if name != "bare"}, rises


def cuda_extra_memory(v: Variants) -> dict[str, int]:
    """Extra ``max_memory_allocated`` of each variant over a bare forward, in this process."""
    peaks = {}
    for name in VARIANTS:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        getattr(v, name)()
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated()
    return {name: peaks[name] - peaks["bare"] for name in VARIANTS if name != "bare"}


# ---- one model, the tables ---------------------------------------------------------------------------------


def bench_model(args: argparse.Namespace, name: str, device: torch.device) -> dict[str, Any]:
    model, x = build(name, args.batch, args.size, device)
    largest = largest_activation(model, x)
    with tempfile.TemporaryDirectory() as tmp:
        then = package_at(args.against, Path(tmp) / "then") if args.against else None
        v = Variants(model, x, Path(tmp), then)
        hooks_before = count_hooks(model)
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        times, bytes_per_event, then_bytes_per_event = measure_times(v, args.repeats, not args.no_tutorial, clock)
        hooks_left = count_hooks(model) - hooks_before
        extra = cuda_extra_memory(v) if device.type == "cuda" else None
        layers = len(v.layers)
        v.close()
    del model, v
    rises = None
    if extra is None and not args.no_memory:
        extra, rises = cpu_extra_memory(args, name, args.jobs)
    medians = {k: statistics.median(t) for k, t in times.items()}
    return {
        "model": name,
        "batch": args.batch,
        "size": args.size,
        "layers": layers,
        "device": device.type,
        "repeats": args.repeats,
        "seconds": times,
        "median_s": medians,
        "ratio_to_bare": {k: medians[k] / medians["bare"] for k in medians},
        "largest_activation_bytes": largest,
        "extra_peak_bytes": extra,
        "rss_rise_runs_bytes": rises,
        "extra_peak_memory_kind": MEMORY_KIND[device.type == "cuda"],
        "event_file_bytes_per_event": bytes_per_event,
        "against": args.against,
        "against_event_file_bytes_per_event": then_bytes_per_event,
        "hooks_left_after_event": hooks_left,
    }


def markdown(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def tables(results: list[dict[str, Any]]) -> str:
    time_rows, memory_rows = [], []
    for r in results:
        ms, ratio = r["median_s"], r["ratio_to_bare"]
        time_rows.append(
            [
                r["model"],
                f"{r['batch']}x3x{r['size']}x{r['size']}",
                str(r["layers"]),
                f"{ms['bare'] * 1e3:.1f}",
                f"{ms['event'] * 1e3:.1f}",
                f"{ratio['event']:.3f}",
                f"{ratio['event_own']:.3f}",
                f"{ratio['event_stats']:.3f}",
                f"{ms['event_nosim'] * 1e3:.1f}",
                f"{ms['event'] / ms['event_nosim']:.3f}",
                f"{ms['event_tb'] * 1e3:.1f}",
                f"{ratio['event_tb']:.3f}",
                f"{ms['tutorial'] * 1e3:.1f}" if "tutorial" in ms else "n/a",
                f"{ratio['tutorial']:.2f}" if "tutorial" in ratio else "n/a",
            ]
        )
        largest, extra = r["largest_activation_bytes"], r["extra_peak_bytes"]

        def mem(key: str, extra: dict | None = extra) -> str:
            return "n/a" if extra is None else f"{extra[key] / MB:.1f}"

        def rel(key: str, extra: dict | None = extra, largest: int = largest) -> str:
            return "n/a" if extra is None else f"{extra[key] / largest:.2f}"

        memory_rows.append(
            [
                r["model"],
                f"{largest / MB:.1f}",
                mem("event"),
                rel("event"),
                mem("event_tb"),
                mem("tutorial"),
                rel("tutorial"),
                str(r["event_file_bytes_per_event"]),
                str(r["hooks_left_after_event"]),
            ]
        )
    text = f"{markdown(TIME_COLUMNS, time_rows)}\n\n{markdown(MEMORY_COLUMNS, memory_rows)}"
    then_rows = [
        [r["model"], label, f"{r['median_s'][event] * 1e3:.1f}", f"{r['ratio_to_bare'][event]:.3f}"]
        + [f"{r['median_s'][event_tb] * 1e3:.1f}", f"{r['ratio_to_bare'][event_tb]:.3f}", str(r[size])]
        for r in results
        if r.get("against")
        for label, event, event_tb, size in (
            (r["against"], "event_then", "event_tb_then", "against_event_file_bytes_per_event"),
            ("this tree", "event", "event_tb", "event_file_bytes_per_event"),
        )
    ]
    columns = ["model", "package", "event (ms)", "event / bare", "event+TB (ms)", "event+TB / bare", "bytes/event"]
    return f"{text}\n\n{markdown(columns, then_rows)}" if then_rows else text


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError):
        info["load_average"] = os.getloadavg()
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg16", help=f"one of {', '.join(MODELS)}, tiny, or 'all' (default vgg16)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224, help="input height and width in pixels")
    p.add_argument("--repeats", type=int, default=7, help="timed runs of each variant (after one warm-up)")
    p.add_argument("--threads", type=int, default=cores, help=f"torch.set_num_threads (default: {cores}, the cores)")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="what a run costs: wall time, or this process's CPU time (steadier on a machine others load; "
        "with --threads 1 it is the work done)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--jobs", type=int, default=1, help="memory subprocesses run at once (1: no interference)")
    p.add_argument("--memory-runs", type=int, default=3, help="fresh processes per variant for peak RSS (median)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses (CPU)")
    p.add_argument("--no-tutorial", action="store_true", help="skip the slow tutorial-workflow variant (timing)")
    p.add_argument("--against", metavar="REV", help="also time the package at this git revision (before/after)")
    p.add_argument("--quick", action="store_true", help="tiny CNN, batch 2, 32 px, 3 repeats: a few seconds")
    p.add_argument("--json", type=Path, default=None, help="where to write the results (default benchmarks/results/)")
    p.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.batch, args.size, args.repeats = "tiny", 2, 32, 3
        args.jobs, args.memory_runs = len(MEMORY_VARIANTS), 1
    if args.model not in (*MODELS, "tiny", "all"):
        p.error(f"--model: unknown model {args.model!r}; choose one of {', '.join(MODELS)}, tiny or all")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return {}
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    names = list(MODELS) if args.model == "all" else [args.model]
    results = []
    for name in names:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        results.append(bench_model(args, name, device))
    report = {"machine": machine(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "results": results}
    print(tables(results))
    save_results(report, args.json, "bench_event", args.quick)
    return report


if __name__ == "__main__":
    main()
