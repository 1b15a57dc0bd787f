"""Training throughput: the engine a job runs vs the lecture's DataLoader loop vs a hand-written loop.

Network 784-256-256-10 ReLU (no dropout), 60 000 generated samples, the same optimizer settings, epochs and seed for
each: Adam (lr 1e-3) and SGD (lr 0.01, momentum 0.9). The engine is `service.training.loop.train` exactly as a job
calls it, per-epoch train figures included (the full set at the last epoch); it gets no validation data (so all
60 000 rows train and early stopping has nothing to monitor; patience is 0 too). (a) is the lecture's loop over
`DataLoader(TensorDataset(X, y), batch_size=B, shuffle=True)`; (b) is a hand-written loop over pre-loaded tensors
with randperm slicing and torch's default optimizer implementation. Rounds interleave the three loops; each figure is
the median over rounds with its spread (max − min over rounds, as a share of the median), each ratio the median of
the per-round ratios. FLOP/s ≈ 6 × parameters × samples/s, against a large float32 torch.mm timed in the same run.

Under load: the same engine with the thread count a job would choose (`service.server.runner.Threads`: the CPUs
this process may use, less those other work keeps busy) and the lecture's loop with torch's default threads, each
timed quiet and then with a second process burning one core, interleaved; the figure is loaded speed / quiet speed.

With CUDA available, the same comparison runs on the GPU at batch 1024 and 4096, with and without bf16 autocast.

One torch thread by default for the first table: on a small machine shared with other work, a second OpenMP thread
makes each parallel region wait for a thread that may not be scheduled (minibatch steps measured up to 20× slower),
which would measure the neighbours rather than the loops; `--threads 0` uses torch's default.

Usage: python bench/training.py [--epochs 2] [--rounds 3] [--samples 60000] [--threads 1] [--load-rounds 3]
       [--load-samples 15000]
"""

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, median  # noqa: E402

from service.server.runner import Threads  # noqa: E402
from service.training.loop import TrainConfig, TrainData, train  # noqa: E402
from service.training.nets import NetSpec, build_network, count_parameters  # noqa: E402

HIDDEN = (256, 256)
N_INPUTS, N_CLASSES = 784, 10
LR = {"adam": 1e-3, "sgd": 0.01}
MOMENTUM = 0.9


def generate(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-shaped inputs with labels from a random linear teacher (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, N_INPUTS), dtype=np.float32)
    teacher = rng.standard_normal((N_INPUTS, N_CLASSES), dtype=np.float32)
    y = (X @ teacher).argmax(axis=1).astype(np.int64)
    return X, y


def network() -> nn.Sequential:
    torch.manual_seed(0)
    return build_network(NetSpec(hidden_layers=HIDDEN, dropout=0.0), N_INPUTS, N_CLASSES)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def autocast(device: str, bf16: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    """The lecture's optimizer with torch's default implementation."""
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=LR["sgd"], momentum=MOMENTUM)
    return torch.optim.Adam(model.parameters(), lr=LR["adam"])


def run_engine(X: np.ndarray, y: np.ndarray, batch: int, epochs: int, device: str = "cpu", bf16: bool = False,
               optimizer: str = "adam") -> float:
    data = TrainData(task="classification", X_train=X, y_train=y, X_val=X[:0], y_val=y[:0], n_classes=N_CLASSES)
    config = TrainConfig(epochs=epochs, batch_size=batch, optimizer=optimizer, learning_rate=LR[optimizer],
                         momentum=MOMENTUM, early_stopping_patience=0, seed=0)
    sync(device)
    t0 = time.perf_counter()
    with autocast(device, bf16):
        train(data, NetSpec(hidden_layers=HIDDEN, dropout=0.0), config, device=device)
    sync(device)
    return len(X) * epochs / (time.perf_counter() - t0)


def run_dataloader(X: np.ndarray, y: np.ndarray, batch: int, epochs: int, optimizer_name: str = "adam") -> float:
    """The lecture's loop."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = network()
    optimizer = make_optimizer(optimizer_name, model)
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(TensorDataset(torch.as_tensor(X), torch.as_tensor(y)), batch_size=batch, shuffle=True)
    model.train()
    for _ in range(epochs):
        for features, targets in loader:
            loss = loss_fn(model(features), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return len(X) * epochs / (time.perf_counter() - t0)


def run_handwritten(X: np.ndarray, y: np.ndarray, batch: int, epochs: int, device: str = "cpu",
                    bf16: bool = False, optimizer_name: str = "adam") -> float:
    """Pre-loaded tensors, randperm slicing, nothing else."""
    torch.manual_seed(0)
    sync(device)
    t0 = time.perf_counter()
    Xt, yt = torch.as_tensor(X, device=device), torch.as_tensor(y, device=device)
    model = network().to(device)
    optimizer = make_optimizer(optimizer_name, model)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    n = len(Xt)
    for _ in range(epochs):
        perm = torch.randperm(n, device=device)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            with autocast(device, bf16):
                loss = loss_fn(model(Xt[idx]), yt[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    sync(device)
    return n * epochs / (time.perf_counter() - t0)


def matmul_flops(device: str = "cpu", size: int = 2048, repeats: int = 7, dtype=torch.float32) -> float:
    """Median FLOP/s of a size × size matrix product (2·size³ FLOP)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / median(times)


def fmt(x: float) -> str:
    return f"{x:,.0f}"


def spread(values: list[float]) -> str:
    """max − min over rounds as a share of the median."""
    return f"±{100 * (max(values) - min(values)) / median(values) / 2:.0f}%"


def cpu_section(X: np.ndarray, y: np.ndarray, epochs: int, rounds: int) -> str:
    params = count_parameters(network())
    # warm-up: kernels, thread pool, the optimizer's lazy imports
    for name in ("adam", "sgd"):
        run_engine(X[:4096], y[:4096], 256, 1, optimizer=name)
        run_dataloader(X[:4096], y[:4096], 256, 1, name)
        run_handwritten(X[:4096], y[:4096], 256, 1, optimizer_name=name)
    rows, notes = [], []
    peak = []
    for name in ("adam", "sgd"):
        for batch in (128, 1024):
            figures: dict[str, list[float]] = {"engine": [], "a": [], "b": []}
            for _ in range(rounds):
                peak.append(matmul_flops())
                figures["engine"].append(run_engine(X, y, batch, epochs, optimizer=name))
                figures["a"].append(run_dataloader(X, y, batch, epochs, name))
                figures["b"].append(run_handwritten(X, y, batch, epochs, optimizer_name=name))
            vs_a = median([e / a for e, a in zip(figures["engine"], figures["a"], strict=True)])
            vs_b = median([e / b for e, b in zip(figures["engine"], figures["b"], strict=True)])
            engine = median(figures["engine"])
            rows.append([name, batch, f"{fmt(engine)} {spread(figures['engine'])}",
                         f"{fmt(median(figures['a']))} {spread(figures['a'])}",
                         f"{fmt(median(figures['b']))} {spread(figures['b'])}", f"{vs_a:.2f}", f"{vs_b:.2f}",
                         f"{6 * params * engine / 1e9:.1f}", f"{6 * params * median(figures['b']) / 1e9:.1f}"])
            notes.append((name, batch, engine))
    mm = median(peak)
    table = markdown_table(["optimizer", "batch", "engine (samples/s)", "(a) DataLoader (samples/s)",
                            "(b) hand-written (samples/s)", "engine / (a)", "engine / (b)", "engine GFLOP/s",
                            "(b) GFLOP/s"], rows)
    share = ", ".join(f"{n} batch {b}: {100 * 6 * params * s / mm:.0f}%" for n, b, s in notes)
    return (f"{table}\n\nParameters: {params:,}; {len(X):,} samples × {epochs} epochs per run, median of {rounds} "
            f"rounds (± half the range over rounds). Measured float32 matmul (2048², median of {7 * len(peak)}): "
            f"{mm / 1e9:.1f} GFLOP/s. Engine FLOP/s as a share of it: {share}.")


def burner() -> subprocess.Popen:
    """A second process keeping one core busy."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def load_section(X: np.ndarray, y: np.ndarray, epochs: int, rounds: int, batch: int = 128) -> str:
    """Quiet vs one core burnt by another process: the engine with a job's thread rule, the lecture's loop with
    torch's default threads."""
    default_threads = torch.get_num_threads()
    figures: dict[str, list[float]] = {"engine quiet": [], "engine loaded": [], "a quiet": [], "a loaded": []}
    chosen: dict[str, list[int]] = {"quiet": [], "loaded": []}
    work = count_parameters(network()) * batch
    for _ in range(rounds):
        for state in ("quiet", "loaded"):
            other = burner() if state == "loaded" else None
            try:
                if other is not None:
                    time.sleep(0.5)  # let it take its core
                threads = Threads(configured=0, jobs=1)
                chosen[state].append(threads.start(work))
                figures[f"engine {state}"].append(run_engine(X, y, batch, epochs))
                torch.set_num_threads(default_threads)
                figures[f"a {state}"].append(run_dataloader(X, y, batch, epochs))
            finally:
                if other is not None:
                    other.kill()
                    other.wait()
    rows = []
    for label, key in (("service engine, a job's thread rule", "engine"), ("(a) DataLoader, torch's default threads",
                                                                          "a")):
        quiet, loaded = figures[f"{key} quiet"], figures[f"{key} loaded"]
        ratio = median([b / a for a, b in zip(quiet, loaded, strict=True)])
        threads = (f"{sorted(set(chosen['quiet']))} / {sorted(set(chosen['loaded']))}" if key == "engine"
                   else f"{default_threads} / {default_threads}")
        rows.append([label, threads, f"{fmt(median(quiet))} {spread(quiet)}", f"{fmt(median(loaded))} {spread(loaded)}",
                     f"{ratio:.2f}"])
    table = markdown_table(["loop (Adam, batch 128)", "threads quiet / loaded", "quiet (samples/s)",
                            "one core burnt elsewhere (samples/s)", "loaded / quiet"], rows)
    return (f"{table}\n\n{len(X):,} samples × {epochs} epochs per run, quiet and loaded interleaved, median of "
            f"{rounds} rounds (± half the range).")


def gpu_section(X: np.ndarray, y: np.ndarray, epochs: int, rounds: int) -> str:
    if not torch.cuda.is_available():
        return "GPU part skipped: torch.cuda.is_available() is False on this machine."
    device = "cuda"
    params = count_parameters(network())
    run_engine(X[:8192], y[:8192], 1024, 1, device)
    run_handwritten(X[:8192], y[:8192], 1024, 1, device)
    fp32 = matmul_flops(device, 8192)
    bf16_peak = matmul_flops(device, 8192, dtype=torch.bfloat16)
    rows = []
    for batch in (1024, 4096):
        for bf16 in (False, True):
            engine, hand = [], []
            for _ in range(rounds):
                engine.append(run_engine(X, y, batch, epochs, device, bf16))
                hand.append(run_handwritten(X, y, batch, epochs, device, bf16))
            e = median(engine)
            ratio = median([a / b for a, b in zip(engine, hand, strict=True)])
            peak = bf16_peak if bf16 else fp32
            rows.append([batch, "bf16 autocast" if bf16 else "float32", fmt(e), fmt(median(hand)), f"{ratio:.2f}",
                         f"{6 * params * e / 1e9:.0f}", f"{100 * 6 * params * e / peak:.1f}%"])
    table = markdown_table(["batch", "precision", "engine (samples/s)", "hand-written (samples/s)", "engine / hand",
                            "engine GFLOP/s", "of matmul peak"], rows)
    return (f"{table}\n\nGPU: {torch.cuda.get_device_name(0)}; measured matmul (8192²): float32 {fp32 / 1e12:.1f} "
            f"TFLOP/s, bf16 {bf16_peak / 1e12:.1f} TFLOP/s (the share uses the one matching the row).")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=60_000)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for every loop and the matmul (0: torch's default, one per core)")
    ap.add_argument("--load-rounds", type=int, default=3, help="rounds of the under-load comparison (0: none)")
    ap.add_argument("--load-samples", type=int, default=15_000,
                    help="samples of the under-load comparison (the lecture's loop on two busy threads is slow)")
    args = ap.parse_args()
    X, y = generate(args.samples)
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("### CPU\n")
    print(cpu_section(X, y, args.epochs, args.rounds))
    if args.load_rounds:
        torch.set_num_threads(default_threads)
        print("\n### CPU under load\n")
        print(load_section(X[:args.load_samples], y[:args.load_samples], 1, args.load_rounds))
    print("\n### GPU\n")
    print(gpu_section(X, y, args.epochs, args.rounds))
    print(f"\nMachine: {machine()}.")


if __name__ == "__main__":
    main()
