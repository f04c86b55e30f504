"""Helpers shared by the benchmark scripts: models, timing, memory, machine facts, tables."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vpg_pipelines import VARVQVAE, VARTransformer, VPGVARPipeline, load_demo_pipeline

try:  # POSIX only (peak RSS where /proc is missing, e.g. macOS); Windows has neither
    import resource
except ImportError:
    resource = None

REPO = Path(__file__).resolve().parents[1]
PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
FULL_SIZE_DEPTHS = (16, 20, 24, 30)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# -- models ----------------------------------------------------------------------------------------
def var_config(depth: int) -> dict:
    """Constructor arguments of the released 256 px VAR-d{depth} (width 64·depth, depth heads)."""
    return {"vocab_size": 4096, "vae_channels": 32, "num_classes": 1000, "depth": depth,
            "embed_dim": 64 * depth, "num_heads": depth, "mlp_ratio": 4.0, "norm_eps": 1e-6,
            "shared_aln": False, "attn_l2_norm": True, "patch_nums": PATCH_NUMS_256}


def vqvae_config() -> dict:
    """Constructor arguments of the released ``vae_ch160v4096z32``."""
    return {"vocab_size": 4096, "z_channels": 32, "ch": 160, "ch_mult": (1, 1, 2, 2, 4), "num_res_blocks": 2,
            "share_quant_resi": 4, "v_patch_nums": PATCH_NUMS_256, "test_mode": True}


def random_models(depth: int, device: str = "cpu", seed: int = 0):
    """Seeded random-weight ``(VARTransformer, VARVQVAE)`` of VAR-d{depth} (256 px) on ``device``.

    Transformer parameters are drawn N(0, 0.02) (about the official ``init_std``), except the
    attention's log scale, which keeps its log(4) start; the VQVAE keeps PyTorch's default init
    under the seed. Real weights are not needed for timing.
    """

    torch.manual_seed(seed)
    with torch.device(device):
        transformer = VARTransformer(**var_config(depth))
        vae = VARVQVAE(**vqvae_config())
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if not name.endswith("scale_mul_1H11"):
                param.normal_(0.0, 0.02, generator=gen)
    return transformer.eval(), vae.eval()


def build_random_pipeline(depth: int, device: str, dtype: torch.dtype, seed: int = 0):
    """A :class:`VPGVARPipeline` of VAR-d{depth} with seeded random weights on ``device``."""

    transformer, vae = random_models(depth, device, seed)
    pipe = _to(VPGVARPipeline(transformer=transformer, vae=vae), device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parity_dir() -> Path:
    return Path(os.environ.get("VPG_SHARED", REPO.parent / "shared")) / "parity" / "var"


def load_parity_pipeline(device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The tiny official-format model of the parity fixtures (``../shared/parity/var``)."""

    root = parity_dir()
    if not (root / "var.safetensors").exists():
        raise FileNotFoundError(f"the parity model is missing from {root} (set VPG_SHARED)")
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    pipe = VPGVARPipeline.from_official(root / "var.safetensors", root / "vqvae.safetensors", config=config)
    pipe = _to(pipe, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


PARITY_NAME = "tiny parity model (depth 2, width 128, scales 1-4, 64 px)"


def load_tiny_pipeline(device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Any, str]:
    """The bundled demo model when installed, else the tiny parity model; returns (pipe, description)."""

    try:
        pipe = _to(load_demo_pipeline(device), device, dtype)
    except FileNotFoundError:
        return load_parity_pipeline(device, dtype), PARITY_NAME
    pipe.set_progress_bar_config(disable=True)
    return pipe, "bundled demo model"


def build_pipeline(model: str, device: str, dtype: torch.dtype, seed: int = 0) -> tuple[Any, str]:
    """``model``: ``tiny`` (demo model, else parity model), ``parity``, or ``d16``/``d20``/``d24``/``d30``."""
    if model == "tiny":
        return load_tiny_pipeline(device, dtype)
    if model == "parity":
        return load_parity_pipeline(device, dtype), PARITY_NAME
    depth = parse_depth(model)
    return build_random_pipeline(depth, device, dtype, seed), f"VAR-d{depth} 256 px, random weights"


def parse_depth(model: str) -> int:
    if not model.startswith("d") or not model[1:].isdigit() or int(model[1:]) not in FULL_SIZE_DEPTHS:
        choices = ["tiny", "parity"] + [f"d{d}" for d in FULL_SIZE_DEPTHS]
        raise ValueError(f"`--model` must be one of {choices}, got {model!r}")
    return int(model[1:])


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _to(pipe, device: str, dtype: torch.dtype):
    pipe = pipe.to(device)
    if dtype != pipe.transformer.dtype:  # (diffusers warns on every dtype cast, even a no-op one)
        pipe = pipe.to(dtype=dtype)
    return pipe


class TransformerFlops:
    """Matmul FLOPs of every :class:`VARTransformer` call (a forward pre-hook; the cost model of the sampler).

    Per row: linear layers per token, the AdaLN projections per row, and attention scores and values
    over everything the call attends to (the cached tokens plus the call's own, as SDPA computes them).
    """

    def __init__(self, transformer: torch.nn.Module) -> None:
        cfg = transformer.config
        self.dim, self.depth, self.vocab = cfg.embed_dim, cfg.depth, cfg.vocab_size
        self.hidden = round(cfg.embed_dim * cfg.mlp_ratio)
        self.ada = 0 if cfg.shared_aln else 6 * cfg.embed_dim * cfg.embed_dim
        self.total = 0.0
        self._handle = transformer.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        position_ids = kwargs["position_ids"] if "position_ids" in kwargs else args[2]
        cache = kwargs.get("kv_cache")
        last = kwargs.get("last_tokens")
        rows, n = position_ids.shape
        context = (cache.length if cache is not None else 0) + n
        c = self.dim
        per_token = 2 * (4 * c * c + 2 * c * self.hidden) + 4 * c * context
        per_row = self.depth * (n * per_token + 2 * self.ada) + 2 * 2 * c * c
        self.total += rows * (per_row + 2 * c * self.vocab * (n if last is None else last))

    def remove(self) -> None:
        self._handle.remove()


# -- timing and memory -----------------------------------------------------------------------------
def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


CLOCKS = ("wall", "cpu")


def timed(fn: Callable[[], Any], device: str) -> tuple[float, float, Any]:
    """``(wall seconds, process CPU seconds, result)`` of ``fn()`` (CUDA work synchronised)."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, out


@dataclass
class Series:
    """Repeated measurements of one configuration: ``times`` on the chosen clock, both clocks kept."""

    clock: str = "wall"
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return self.wall if self.clock == "wall" else self.cpu

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: str,
                clock: str = "wall") -> dict[str, Series]:
    """Time every run ``repeats`` times, round-robin (rotating the order), after ``warmup`` rounds.

    ``clock="cpu"`` ranks by the process's CPU time, which other processes competing for the cores
    inflate much less than wall time (use one torch thread with it: spinning threads count too).
    """
    if clock not in CLOCKS:
        raise ValueError(f"`clock` must be one of {CLOCKS}, got {clock!r}")
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    series = {name: Series(clock) for name in names}
    for rep in range(repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu, _ = timed(runs[name], device)
            series[name].wall.append(wall)
            series[name].cpu.append(cpu)
    return series


class ScaleClock:
    """When each scale's codes were sampled in a call: ``(key, seconds since the call began)`` on both clocks.

    The key names the scale (its grid width, or its index in the schedule); a scale stamped several
    times in a call (InfinityStar's repetitions) adds up in :meth:`per_scale`.
    """

    def __init__(self) -> None:
        self.calls: dict[str, list[list[tuple[int, float, float]]]] = {}
        self._start: tuple[float, float] | None = None
        self._stamps: list[tuple[int, float, float]] = []

    def stamp(self, key: int) -> None:
        if self._start is None:  # outside a timed call (an agreement check): not recorded
            return
        wall, cpu = time.perf_counter(), time.process_time()
        self._stamps.append((key, wall - self._start[0], cpu - self._start[1]))

    def stamps(self) -> int:
        """Stamps so far in the current call."""
        return len(self._stamps)

    def around(self, name: str, fn: Any) -> Any:
        def run(*a: Any, **kw: Any) -> Any:
            self._start, self._stamps = (time.perf_counter(), time.process_time()), []
            try:
                out = fn(*a, **kw)
            finally:
                self._start = None
            self.calls.setdefault(name, []).append(self._stamps)
            return out
        return run

    def per_scale(self, name: str, clock: str, skip: int) -> dict[int, float]:
        """Median seconds per scale (by key) over the calls after the first ``skip`` ones."""
        column = 1 if clock == "wall" else 2
        per: dict[int, list[float]] = {}
        for stamps in self.calls.get(name, [])[skip:]:
            before, call = 0.0, {}
            for stamp in stamps:
                call[stamp[0]] = call.get(stamp[0], 0.0) + stamp[column] - before
                before = stamp[column]
            for key, seconds in call.items():
                per.setdefault(key, []).append(seconds)
        return {key: statistics.median(v) for key, v in per.items()}


def paired_ratios(series: dict[str, Series], baseline: str) -> dict[str, list[float]]:
    """Per-round ratio to the baseline of the same round (robust to load drifting between rounds)."""
    base = series[baseline].times
    return {name: [t / b for t, b in zip(s.times, base)] for name, s in series.items()}


def current_rss() -> int:
    """Resident set size of this process in bytes (Linux: ``/proc``; the memory benchmarks need it)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError as err:
        raise OSError("the CPU memory benchmarks read /proc/self/statm (Linux only)") from err


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where not supported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident set size in bytes (VmHWM, which :func:`reset_peak_rss` resets)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if resource is None:
        raise OSError("peak RSS needs /proc (Linux) or the resource module (POSIX); not available on Windows")
    # ru_maxrss: kilobytes on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if platform.system() == "Darwin" else 1024)


# -- reporting -------------------------------------------------------------------------------------
def machine_info(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["load_average"] = os.getloadavg()[0]
    except (OSError, AttributeError):  # Windows has no load average
        pass
    return info


def run_header(result: dict, settings: str) -> str:
    """One line saying what ran where, for the top of a results table."""
    m, a = result["machine"], result["args"]
    gpu = f" ({m['gpu']})" if "gpu" in m else ""
    return (f"**{result['model']}** ({result['params'] / 1e6:.1f} M transformer parameters) on `{a['device']}`{gpu}, "
            f"{a['dtype']}; {a['repeats']} interleaved rounds after {a['warmup']} warm-up, {a['clock']} clock; "
            f"{m['date']}; {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread(s), torch {m['torch']}; "
            f"cfg {a['guidance_scale']}, top-k {a['top_k']}, top-p {a['top_p']}; {settings}.")


def fmt_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_range(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(min(values))}–{fmt.format(max(values))}"


def fmt_mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f} MiB" if abs(n) >= 2**24 else f"{n / 2**20:.1f} MiB"


def speed_rows(times: dict[str, list[float]], speedup: dict[str, list[float]], names: dict[str, str],
               diffs: dict[str, float], baseline: str = "official") -> list[list[str]]:
    """Rows of a same-run comparison: each run's median [min–max] time, its paired ratio to ``baseline``
    (per-round ``speedup``) and its output difference (``diffs``); the baseline's row first as it comes."""
    rows = []
    for name, t in times.items():
        row = [names[name], f"{fmt_seconds(statistics.median(t))} [{fmt_seconds(min(t))}–{fmt_seconds(max(t))}]"]
        if name == baseline:
            row += ["1", "—"]
        else:
            s = speedup[name]
            row += [f"{statistics.median(s):.2f}× [{fmt_range(s)}]", f"{diffs[name]:.2e}"]
        rows.append(row)
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(result: dict, markdown: str, out_json: str | None, out_md: str | None) -> None:
    """The result as JSON (``markdown`` included under ``"markdown"``) and the Markdown table, each written whole
    (a temporary file beside it, then one ``os.replace``) so an interrupted run never leaves half a result."""
    result["markdown"] = markdown
    for path, text in ((out_json, json.dumps(result, indent=2, default=_jsonable) + "\n"), (out_md, markdown + "\n")):
        if path:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            partial.write_text(text, encoding="utf-8")
            os.replace(partial, target)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Series):
        return asdict(obj)
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")
