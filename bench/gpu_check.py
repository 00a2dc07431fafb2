"""The GPU check of issue 19 (part 2): every check that needs a GPU, in one run, with a table at the end.

Stages, most valuable first, each in its own process with its own time limit (a hang costs that stage only)
and a global deadline (default 470 s from ``bench/gpu_check.sh``'s start: the 8 minutes include the wheels):

1. ``env``: versions, the GPU, and that the package imports (from the repository, no installation);
2. ``inference``: ``bench/bench_inference.py`` at real size, 40 slices, K = 1 and 3: our engine in bf16 +
   SDPA (and fp32) against the reference's way (an episode per slice, fp32): latency, peak memory, Dice
   agreement;
3. ``model``: a real-size model folder with random weights (built on the GPU, saved as safetensors);
4. ``training``: ``bench/bench_estimate.py``: a training step at real size in fp32, bf16, bf16 + gradient
   checkpointing, LoRA, and LoRA + checkpointing (s/step, peak memory), each beside the fine-tune wizard's
   estimate;
5. ``segment``: ``sd-fsmis segment --device cuda`` end to end on a CHAOS volume with that model;
6. ``train``: ``sd-fsmis train`` 20 steps on CUDA, interrupted (SIGINT, as Ctrl+C) and resumed;
7. ``pytest``: ``pytest -m gpu`` on the test files that hold GPU tests.

``--small`` (``SMALL=1 bench/gpu_check.sh``): the tiny model, a few slices and steps, on CUDA if there is
one, else on the CPU: the check of this script on a machine without a GPU. Without ``--small`` and without
CUDA, the GPU stages say so and skip.

Output: a line per stage as it ends (with the end of its output when it failed), then the summary tables
(the last thing printed). ``$OUT/gpu_check.log`` holds every stage's full output, ``$OUT/results.json``
every number. Data for ``segment`` and ``train``: ``$GPU_CHECK_DATA``, else ``.gpu-data/chaos-t2`` (the
folder carried to the GPU machine), else ``../shared/data/chaos-t2``; CHAOS layout (images/, labels/).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
STAGES = ("env", "inference", "model", "training", "segment", "train", "pytest", "cohort")
#: time limit of each stage (seconds) at real size on one H200, and in --small mode (2 shared CPU cores)
LIMITS = {
    "env": (60, 120),
    "inference": (150, 600),
    "model": (90, 240),
    "training": (200, 900),
    "segment": (90, 240),
    "train": (200, 900),
    "pytest": (90, 300),
    "cohort": (150, 600),
}
#: studies of the cohort stage (issue 17: studies per hour, 1 process vs several sharing the GPU)
COHORT_STUDIES = (16, 3)
COHORT_PROCESSES = 2
TRAIN_STEPS = 20
INTERRUPT_AT = 5  # SIGINT once the progress bar shows this step; the trainer stops after the current step
#: targets of issue 19 (GiB: a "12 GB" card has 12 GiB)
TARGET_SECONDS_PER_VOLUME = 1.0
TARGET_SPEEDUP = 5.0
TARGET_GIB = {"bf16-ckpt": 12.0, "lora": 8.0}
#: default sd_fsmis layout when pyproject.toml cannot be read (tomllib: Python >= 3.11)
PACKAGE_DIRS = {
    "sd_fsmis": "app",
    "sd_fsmis.core": "core",
    "sd_fsmis.ui": "ui",
    "sd_fsmis.resources": "resources",
}


# -- the package without installation -----------------------------------------------------------------------
def package_dirs() -> dict[str, str]:
    try:
        import tomllib

        with open(ROOT / "pyproject.toml", "rb") as f:
            return dict(tomllib.load(f)["tool"]["setuptools"]["package-dir"])
    except Exception:
        return dict(PACKAGE_DIRS)


def build_package_layout(target: Path) -> Path:
    """``target/sd_fsmis`` = app/ with core/, ui/, resources/ inside, as symbolic links (what pyproject's
    package-dir installs); ``target`` goes first on PYTHONPATH."""
    dirs = package_dirs()
    top = dirs.pop("sd_fsmis")
    shutil.rmtree(target, ignore_errors=True)
    pkg = target / "sd_fsmis"
    pkg.mkdir(parents=True)
    for entry in (ROOT / top).iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, folder in dirs.items():
        parts = name.split(".")[1:]
        link = pkg.joinpath(*parts)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(ROOT / folder)
    return target


# -- running a stage ----------------------------------------------------------------------------------------
@dataclass
class Run:
    rc: int | None
    timed_out: bool
    seconds: float
    text: str

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def tail(self, lines: int = 20) -> str:
        rows = [r for r in self.text.replace("\r", "\n").splitlines() if r.strip()]
        return "\n".join("    " + r[-300:] for r in rows[-lines:])


@dataclass
class Result:
    stage: str
    status: str  # ok | FAIL | TIMEOUT | NO TIME | skipped
    seconds: float = 0.0
    summary: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def _kill(proc: subprocess.Popen) -> None:
    """End the stage's process group (its own session): SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Check:
    def __init__(self, args: argparse.Namespace):
        self.small: bool = args.small
        self.out = Path(args.out).resolve()
        self.work = Path(args.work).resolve()
        self.keep_work: bool = args.keep_work
        self.only = set(args.only or STAGES) - set(args.skip or [])
        t0 = float(os.environ.get("GPU_CHECK_T0") or time.time())
        self.t0 = t0
        budget = args.budget or (1800 if self.small else 470)
        self.deadline = t0 + budget
        self.budget = budget
        self.results: list[Result] = []
        self.info: dict[str, Any] = {}
        self.cuda = False
        self.device = "cpu"
        self.arch = "tiny" if self.small else "real"
        self.model_dir: Path | None = None
        self.data_dir = find_data()
        self.out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.work, ignore_errors=True)
        (self.work / "home").mkdir(parents=True)
        self.log = open(self.out / "gpu_check.log", "a", encoding="utf-8")  # noqa: SIM115
        layout = build_package_layout(self.work / "pkg")
        self.env = dict(os.environ)
        self.env.update(
            PYTHONPATH=os.pathsep.join([str(layout), *filter(None, [os.environ.get("PYTHONPATH")])]),
            SD_FSMIS_HOME=str(self.work / "home"),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            PYTHONUNBUFFERED="1",
            PYTHONWARNINGS="ignore::FutureWarning",
        )
        self.py = sys.executable

    # -- plumbing ----------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def left(self) -> float:
        return self.deadline - time.time() - 5.0  # 5 s for the summary

    def limit(self, stage: str) -> float:
        return min(LIMITS[stage][1 if self.small else 0], self.left())

    def run(
        self,
        label: str,
        argv: list[str],
        timeout: float,
        *,
        use_pty: bool = False,
        on_tick=None,
        env: dict[str, str] | None = None,
    ) -> Run:
        """Run ``argv`` in its own session, output (stdout + stderr) to the log; stop it at ``timeout``.

        ``use_pty``: on a pseudo-terminal (a pipe where there is none); ``on_tick(output so far, process)``
        is called at least once a second."""
        self.log.write(f"\n===== {label}: {' '.join(argv)} (limit {timeout:.0f} s)\n")
        self.log.flush()
        start = time.monotonic()
        common = dict(cwd=ROOT, env=env or self.env, stdin=subprocess.DEVNULL, start_new_session=True)
        if use_pty:  # a terminal: tqdm draws its bar (the step count) only on one
            try:
                master, slave = pty.openpty()
            except OSError as exc:
                self.log.write(f"no pseudo-terminal ({exc}): output through a pipe\n")
                use_pty = False
        if use_pty:
            # a size: on a 0 x 0 terminal tqdm draws an empty bar
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
            proc = subprocess.Popen(argv, stdout=slave, stderr=slave, **common)
            os.close(slave)
            fd = master
        else:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **common)
            fd = proc.stdout.fileno()
        chunks: list[str] = []
        timed_out = False
        quiet_since: float | None = None
        try:
            while True:
                remaining = start + timeout - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
                if ready:
                    try:
                        data = os.read(fd, 65536)
                    except OSError:  # EIO: the terminal's other side is closed
                        data = b""
                    if not data:
                        break
                    text = data.decode("utf-8", errors="replace")
                    chunks.append(text)
                    self.log.write(text.replace("\r\n", "\n").replace("\r", "\n"))
                    self.log.flush()
                    quiet_since = None
                elif proc.poll() is not None:  # exited, but a child of it still holds the output open
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > 3:
                        break
                if on_tick is not None:  # at least once a second
                    on_tick("".join(chunks), proc)
        finally:
            if timed_out:
                _kill(proc)
            try:
                rc = proc.wait(timeout=max(1.0, start + timeout - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill(proc)
                rc = proc.wait()
            with contextlib.suppress(OSError):  # stragglers of the stage (its own session)
                os.killpg(proc.pid, signal.SIGKILL)
            if use_pty:
                os.close(fd)
            else:
                proc.stdout.close()
        seconds = time.monotonic() - start
        self.log.write(f"----- {label}: exit {rc}{' (time limit)' if timed_out else ''}, {seconds:.1f} s\n")
        self.log.flush()
        return Run(rc, timed_out, seconds, "".join(chunks))

    def record(self, result: Result, run: Run | None = None) -> Result:
        self.results.append(result)
        self.say(f"[{result.stage}] {result.status} {result.seconds:.0f} s: {result.summary}")
        if run is not None and result.status != "ok":
            self.say(run.tail())
        return result

    def failed(self, stage: str, run: Run, what: str = "") -> Result:
        status = "TIMEOUT" if run.timed_out else "FAIL"
        why = "time limit" if run.timed_out else f"exit {run.rc}"
        return self.record(Result(stage, status, run.seconds, f"{what or stage} failed ({why})"), run)

    def skip(self, stage: str, why: str) -> Result:
        return self.record(Result(stage, "skipped", 0.0, why))

    def gate(self, stage: str, needs_gpu: bool = True) -> float | None:
        """The stage's time limit, or None (skipped, with the reason recorded)."""
        if stage not in self.only:
            self.skip(stage, "not selected")
            return None
        if needs_gpu and not self.cuda and not self.small:
            self.skip(stage, "no CUDA device (run with --small to check this stage on the CPU)")
            return None
        limit = self.limit(stage)
        if limit < 15:
            why = f"not run: out of time ({max(limit, 0):.0f} s left of the {self.budget:.0f} s budget)"
            self.record(Result(stage, "NO TIME", 0.0, why))
            return None
        return limit

    # -- stages ------------------------------------------------------------------------------------------
    def stage_env(self) -> None:
        limit = self.limit("env")
        run = self.run("env", [self.py, str(Path(__file__)), "probe"], limit)
        found = _last_json(run.text)
        if not run.ok or not found:
            self.failed("env", run, "the environment probe")
            return
        self.info = found
        self.cuda = bool(found.get("cuda"))
        self.device = "cuda" if self.cuda else "cpu"
        gpu = found.get("gpu") or "no CUDA device"
        self.record(Result("env", "ok", run.seconds, f"{gpu}; package from {found.get('sd_fsmis')}"))

    def stage_inference(self) -> None:
        limit = self.gate("inference")
        if limit is None:
            return
        out = self.work / "inference.json"
        argv = [self.py, str(BENCH / "bench_inference.py"), "--device", self.device, "--json", str(out)]
        if self.small:  # bf16 and NHWC on the CPU too: the code paths of the GPU run
            argv += ["--arch", "tiny", "--slices", "4", "--size", "64", "--shots", "1", "3"]
            argv += ["--dtype", "bf16", "--channels-last", "on"]
        else:
            argv += ["--arch", "real", "--slices", "40", "--shots", "1", "3", "--repeats", "3"]
        run = self.run("inference", argv, limit)
        if not run.ok or not out.is_file():
            self.failed("inference", run, "bench_inference")
            return
        data = json.loads(out.read_text())
        rows = data["rows"]
        ours = [r for r in rows if r["method"].startswith("ours")]
        half = [r for r in ours if r["dtype"] != "float32"]
        parts = [
            f"K={r['shots']} {r['dtype']} {r['seconds']:.2f} s/vol "
            f"({_x(r['speedup'])} vs ref, Dice {_f(r['dice_vs_reference'], 3)})"
            for r in half or ours
        ]
        self.record(Result("inference", "ok", run.seconds, "; ".join(parts), {"bench": data}))

    def stage_model(self) -> None:
        limit = self.gate("model")
        if limit is None:
            return
        folder = self.work / f"model-{self.arch}"
        argv = [self.py, str(Path(__file__)), "make-model", "--arch", self.arch, "--device", self.device]
        run = self.run("model", [*argv, "--out", str(folder)], limit)
        found = _last_json(run.text)
        if not run.ok or not found:
            self.failed("model", run, "building and saving the random model")
            return
        self.model_dir = folder
        self.record(
            Result(
                "model",
                "ok",
                run.seconds,
                f"{self.arch}-size random model, {found['gib']:.2f} GiB: built in {found['build_s']:.1f} s, "
                f"saved in {found['save_s']:.1f} s",
                found,
            )
        )

    def stage_training(self) -> None:
        limit = self.gate("training")
        if limit is None:
            return
        out = self.work / "training.json"
        argv = [self.py, str(BENCH / "bench_estimate.py"), "--device", self.device, "--arch", self.arch]
        argv += ["--json", str(out), "--steps", "2" if self.small else "10"]
        if self.small:
            argv += ["--threads", "1"]
        if self.model_dir is not None:
            argv += ["--model", str(self.model_dir)]
        run = self.run("training", argv, limit)
        if not run.ok or not out.is_file():
            self.failed("training", run, "bench_estimate")
            return
        data = json.loads(out.read_text())
        parts = [
            f"{r['variant']} {r['seconds_per_step']:.3f} s/step {_f(r['measured_peak_gib'], 2)} GiB"
            for r in data["rows"]
        ]
        self.record(Result("training", "ok", run.seconds, "; ".join(parts), {"bench": data}))

    def stage_segment(self) -> None:
        limit = self.gate("segment")
        if limit is None:
            return
        if self.model_dir is None:
            self.skip("segment", "no model (the model stage did not run or failed)")
            return
        if self.data_dir is None:
            self.skip("segment", "no CHAOS data (.gpu-data/chaos-t2 or ../shared/data/chaos-t2)")
            return
        image, label = chaos_case(self.data_dir)
        out = self.work / "segment" / "prediction.nii.gz"
        argv = [self.py, "-m", "sd_fsmis", "-v", "segment", "--model", str(self.model_dir)]
        argv += ["--device", self.device, "--query", str(image), "--support-mask", str(label)]
        argv += ["--label", "1", "--out", str(out), "--json"]
        if not self.cuda:
            argv += ["--precision", "bf16"]  # the GPU's default, on the CPU
        run = self.run("segment", argv, limit)
        found = _last_json(run.text)
        if not run.ok or not found or not out.is_file():
            self.failed("segment", run, "sd-fsmis segment")
            return
        slices = found["query_slices"][1] - found["query_slices"][0] + 1
        found.update(wall_s=round(run.seconds, 2), case=image.name, slices=slices)
        self.record(
            Result(
                "segment",
                "ok",
                run.seconds,
                f"{image.name}, liver, {found['shots']}-shot, {slices} slices: segmentation "
                f"{found['seconds']:.2f} s, whole command {run.seconds:.1f} s (start, load, segment, write)",
                found,
            )
        )

    def stage_cohort(self) -> None:
        """Issue 17's GPU table: a cohort with a real-size random model, 1 process vs several sharing it."""
        limit = self.gate("cohort")
        if limit is None:
            return
        if self.data_dir is None:
            self.skip("cohort", "no CHAOS data (.gpu-data/chaos-t2 or ../shared/data/chaos-t2)")
            return
        image, _label = chaos_case(self.data_dir)
        studies = COHORT_STUDIES[1 if self.small else 0]
        argv = [self.py, str(BENCH / "bench_cohort.py"), "--mode", "gpu", "--data", str(self.data_dir)]
        argv += ["--support-id", image.name[6:-7], "--studies", str(studies)]
        argv += ["--processes", str(COHORT_PROCESSES), "--arch", self.arch]
        argv += ["--device", "cuda" if self.cuda else "cpu"]
        run = self.run("cohort", argv, limit)
        rows = [line for line in run.text.splitlines() if line.startswith("| ") and "SD-FSMIS" in line]
        if not run.ok or len(rows) < 2:
            self.failed("cohort", run, "bench_cohort.py --mode gpu")
            return
        cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
        parts = [f"{c[2]} process(es): {float(c[4]):.2f} s/study, {c[5]}/h" for c in cells]
        summary = "; ".join(parts)
        self.record(Result("cohort", "ok", run.seconds, f"{studies} studies, {summary}", {"rows": rows}))

    def stage_train(self) -> None:
        limit = self.gate("train")
        if limit is None:
            return
        if self.model_dir is None:
            self.skip("train", "no model (the model stage did not run or failed)")
            return
        if self.data_dir is None:
            self.skip("train", "no CHAOS data")
            return
        start = time.monotonic()
        out = self.work / "train"
        config = self.work / "train-config.json"
        # every volume of the folder is trained on; no held-out volume, no validation (validation_ids [])
        # (a config file is checked whole before the flags apply: model, data and out must be in it)
        settings = {"model": str(self.model_dir), "data": str(self.data_dir), "out": str(out)}
        config.write_text(json.dumps({**settings, "validation_ids": []}))
        argv = [self.py, "-m", "sd_fsmis", "-v", "train", "--config", str(config)]
        argv += ["--model", str(self.model_dir), "--data", str(self.data_dir), "--out", str(out)]
        argv += ["--steps", str(TRAIN_STEPS), "--device", self.device, "--checkpoint-every", "1000"]
        argv += ["--checkpoints-limit", "2", "--no-validation", "--heldout-episodes", "0"]
        argv += ["--precision", "bf16"]  # on the CPU too: the GPU run's mixed precision
        sent: dict[str, int] = {}

        def interrupt(text: str, proc: subprocess.Popen) -> None:
            """SIGINT (as Ctrl+C) once the progress bar shows step INTERRUPT_AT or a checkpoint of it exists
            (without a terminal there is no bar: hence a checkpoint every INTERRUPT_AT steps)."""
            if sent or proc.poll() is not None:
                return
            steps = [int(a) for a, b in re.findall(r"(\d+)/(\d+) \[", text) if int(b) == TRAIN_STEPS]
            if (out / "checkpoints" / f"checkpoint-{INTERRUPT_AT}").is_dir():
                steps.append(INTERRUPT_AT)
            if steps and max(steps) >= INTERRUPT_AT:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)
                sent["at"] = max(steps)

        if not _has_pty():
            argv[argv.index("--checkpoint-every") + 1] = str(INTERRUPT_AT)
        first = self.run("train (interrupted)", argv, limit, use_pty=True, on_tick=interrupt)
        checkpoints = sorted(
            (int(p.name.split("-")[-1]) for p in (out / "checkpoints").glob("checkpoint-*") if p.is_dir()),
        )
        stopped = checkpoints[-1] if checkpoints else None
        data: dict[str, Any] = {
            "first_rc": first.rc,
            "signal_at_step": sent.get("at"),
            "checkpoint_step": stopped,
            "first_s": round(first.seconds, 1),
        }
        if first.timed_out or first.rc not in (0, 130) or stopped is None:
            self.failed("train", first, "sd-fsmis train (first run)")
            return
        second_limit = min(limit - (time.monotonic() - start), self.left())
        if second_limit < 15:
            self.record(Result("train", "TIMEOUT", first.seconds, "no time left to resume", data), first)
            return
        second = self.run("train (resumed)", [*argv, "--resume"], second_limit, use_pty=True)
        data["second_rc"] = second.rc
        data["second_s"] = round(second.seconds, 1)
        finished = out / "finished.json"
        if not second.ok or not finished.is_file():
            self.failed("train", second, "sd-fsmis train --resume")
            return
        done = json.loads(finished.read_text())
        data.update(finished_step=done.get("step"), resumed_from=done.get("resumed_from"))
        speed = re.search(r"trained (\d+) steps \(([\d.]+) steps/s\)", second.text)
        data["steps_per_s"] = float(speed.group(2)) if speed else None
        loss = re.search(r"training loss: first step ([\d.]+), last step ([\d.]+)", second.text)
        data["loss_first_last"] = [float(loss.group(1)), float(loss.group(2))] if loss else None
        interrupted = first.rc == 130
        good = done.get("step") == TRAIN_STEPS and done.get("resumed_from") == stopped and interrupted
        how = (
            f"interrupted at step {stopped} (SIGINT at {sent.get('at')}, exit 130)"
            if interrupted
            else f"NOT interrupted (exit {first.rc}: finished before the signal)"
        )
        summary = (
            f"{how}, resumed {done.get('resumed_from')} -> {done.get('step')}, "
            f"{_f(data['steps_per_s'], 2)} steps/s (x4 episodes), loss "
            f"{' -> '.join(f'{v:.4f}' for v in data['loss_first_last'] or [])}; "
            f"runs {first.seconds:.0f} s + {second.seconds:.0f} s"
        )
        total = time.monotonic() - start
        self.record(Result("train", "ok" if good else "FAIL", total, summary, data), second)

    def stage_pytest(self) -> None:
        limit = self.gate("pytest", needs_gpu=False)
        if limit is None:
            return
        files = gpu_test_files()
        if not files:
            self.skip("pytest", "no test file marks a test gpu")
            return
        env = dict(self.env, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")  # the GPU machine lacks pytest-qt & co.
        argv = [self.py, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider"]
        if _importable("pytest_timeout"):
            argv += ["-p", "pytest_timeout"]
        argv += [str(f.relative_to(ROOT)) for f in files]
        run = self.run("pytest", argv, limit, env=env)
        counts = {
            word: int(n)
            for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", run.text)
        }
        summary = ", ".join(f"{n} {w}" for w, n in counts.items()) or "no summary line"
        if not self.cuda:
            summary += " (no CUDA: the GPU tests skip)"
        status = (
            "ok" if run.ok or (run.rc == 5 and not self.cuda) else ("TIMEOUT" if run.timed_out else "FAIL")
        )
        self.record(Result("pytest", status, run.seconds, summary, {"counts": counts}), run)

    # -- the whole ---------------------------------------------------------------------------------------
    def main(self) -> int:
        smi = shutil.which("nvidia-smi")
        if smi:
            text = subprocess.run([smi], capture_output=True, text=True, timeout=30).stdout
            self.say(text.rstrip())
        else:
            self.say("# nvidia-smi: not found")
        with contextlib.suppress(OSError):
            usage = shutil.disk_usage(self.work)
            self.say(f"# work folder {self.work}: {usage.free / 2**30:.0f} GiB free")
        mode = "small (tiny model)" if self.small else "real size"
        self.say(
            f"# GPU check, {mode}; budget {self.budget:.0f} s from the start, {self.left():.0f} s left; "
            f"stages: {', '.join(s for s in STAGES if s in self.only)}; data: {self.data_dir}"
        )
        self.stage_env()
        for stage in (
            self.stage_inference,
            self.stage_model,
            self.stage_training,
            self.stage_segment,
            self.stage_train,
            self.stage_pytest,
            self.stage_cohort,
        ):
            try:
                stage()
            except Exception as exc:  # a bug of this script must not cost the other stages
                name = stage.__name__.removeprefix("stage_")
                self.record(Result(name, "FAIL", 0.0, f"gpu_check.py: {type(exc).__name__}: {exc}"))
        total = time.time() - self.t0
        document = {
            "mode": mode,
            "total_s": round(total, 1),
            "budget_s": self.budget,
            "info": self.info,
            "results": [asdict(r) for r in self.results],
        }
        (self.out / "results.json").write_text(json.dumps(document, indent=1, default=str))
        summary = render_summary(document, self.small)
        self.log.write("\n" + summary + "\n")
        self.log.close()
        if not self.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)
        print("\n" + summary, flush=True)
        fine = all(r.status in ("ok", "skipped") for r in self.results) and (self.cuda or self.small)
        return 0 if fine else 1


# -- helpers ------------------------------------------------------------------------------------------------
def _last_json(text: str) -> dict | None:
    """The last JSON object printed (a block from a line "{" to a line "}", or one line)."""
    lines = text.replace("\r", "").splitlines()
    for end in range(len(lines) - 1, -1, -1):
        if lines[end].rstrip().endswith("}"):
            for begin in range(end, -1, -1):
                if lines[begin].lstrip().startswith("{"):
                    with contextlib.suppress(ValueError):
                        value = json.loads("\n".join(lines[begin : end + 1]))
                        if isinstance(value, dict):
                            return value
    return None


def _f(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def default_work() -> str:
    """/tmp/gpu-check-work, or build/gpu-check-work in the repository (ignored by git) where /tmp has less
    than the 40 GiB a real-size run writes (model 4 GB, two training checkpoints of 10 GB, two models)."""
    candidates = [Path("/tmp/gpu-check-work"), ROOT / "build" / "gpu-check-work"]

    def free(path: Path) -> int:
        while not path.exists():
            path = path.parent
        return shutil.disk_usage(path).free

    for path in candidates:
        if free(path) >= 40 * 2**30:
            return str(path)
    return str(max(candidates, key=free))


def _has_pty() -> bool:
    try:
        master, slave = pty.openpty()
    except OSError:
        return False
    os.close(master)
    os.close(slave)
    return True


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def find_data() -> Path | None:
    candidates = [os.environ.get("GPU_CHECK_DATA"), ROOT / ".gpu-data" / "chaos-t2"]
    candidates.append(ROOT.parent / "shared" / "data" / "chaos-t2")
    for c in candidates:
        if c and (Path(c) / "images").is_dir() and (Path(c) / "labels").is_dir():
            return Path(c).resolve()
    return None


def chaos_case(data: Path) -> tuple[Path, Path]:
    """Patient 38 (40 slices) if there, else the first image with a label map."""
    images = sorted(data.glob("images/image_*.nii.gz"), key=lambda p: p.name != "image_38.nii.gz")
    for image in images:
        label = data / "labels" / image.name.replace("image_", "label_")
        if label.is_file():
            return image, label
    raise FileNotFoundError(f"no image with its label map in {data}")


def gpu_test_files() -> list[Path]:
    pattern = re.compile(r"mark\.gpu\b")
    return sorted(p for p in (ROOT / "tests").rglob("test_*.py") if pattern.search(p.read_text("utf-8")))


# -- the summary --------------------------------------------------------------------------------------------
def render_summary(document: dict, small: bool) -> str:
    info = document.get("info") or {}
    results = {r["stage"]: r for r in document["results"]}
    lines = ["=" * 30 + " GPU check: summary " + "=" * 30]
    versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
    lines.append(
        f"{info.get('gpu') or 'no CUDA device'}; python {info.get('python', '?')}; {versions}".strip()
    )
    lines.append(
        f"mode: {document['mode']}; total {document['total_s']:.0f} s (budget {document['budget_s']} s)"
    )
    lines += ["", "| stage | status | s | result |", "|---|---|---|---|"]
    for r in document["results"]:
        lines.append(f"| {r['stage']} | {r['status']} | {r['seconds']:.0f} | {r['summary']} |")

    targets: list[tuple[str, str, bool | None]] = []
    inference = results.get("inference", {}).get("data", {}).get("bench")
    if inference:
        rows = inference["rows"]
        lines += [
            "",
            f"Inference ({inference['args']['arch']}, {rows[0]['slices']} slices, {inference['device']}):",
        ]
        lines += [
            "| K | way | dtype | batch | s/volume | ms/slice | peak GiB | speed-up | Dice vs ref |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            way = "reference (episode per slice)" if r["method"].startswith("reference") else "ours (engine)"
            lines.append(
                f"| {r['shots']} | {way} | {r['dtype']} | {r['batch']} | {r['seconds']:.3f} | "
                f"{1000 * r['seconds'] / r['slices']:.1f} | {r['peak_bytes'] / 2**30:.2f} | "
                f"{_x(r['speedup'])} | {_f(r['dice_vs_reference'], 4)} |"
            )
        for r in rows:
            if r["method"].startswith("ours") and r["dtype"] in ("bfloat16", "float16"):
                targets.append(
                    (
                        f"inference K={r['shots']} {r['dtype']}: < {TARGET_SECONDS_PER_VOLUME:g} s/volume",
                        f"{r['seconds']:.3f} s",
                        r["seconds"] < TARGET_SECONDS_PER_VOLUME,
                    )
                )
                targets.append(
                    (
                        f"inference K={r['shots']} {r['dtype']}: >= {TARGET_SPEEDUP:g}x the reference's way",
                        _x(r["speedup"]),
                        r["speedup"] is not None and r["speedup"] >= TARGET_SPEEDUP,
                    )
                )
    training = results.get("training", {}).get("data", {}).get("bench")
    if training:
        rows = training["rows"]
        lines += [
            "",
            f"Training step ({training['arch']}, {training['machine']}), measured vs the wizard's estimate:",
        ]
        lines += [
            "| variant | s/step | est. s/step | peak GiB | reserved GiB | est. peak GiB | trainable |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['variant']} | {r['seconds_per_step']:.3f} | {r['estimate_seconds_per_step']:.3f} | "
                f"{_f(r['measured_peak_gib'], 2)}{'' if r['peak_kind'].startswith('GPU') else ' (RSS)'} | "
                f"{_f(r.get('peak_reserved_gib'), 2)} | {r['estimate_peak_gib']:.2f} | "
                f"{r['trainable_parameters'] / 1e6:.1f} M |"
            )
            if r["variant"] in TARGET_GIB and r["peak_kind"].startswith("GPU"):
                targets.append(
                    (
                        f"training {r['variant']}: <= {TARGET_GIB[r['variant']]:.0f} GiB",
                        f"{r['measured_peak_gib']:.2f} GiB",
                        r["measured_peak_gib"] <= TARGET_GIB[r["variant"]],
                    )
                )
    if targets:
        lines += ["", "Targets (issue 19)" + (" -- small mode: not meaningful" if small else "") + ":"]
        lines += ["| target | measured | |", "|---|---|---|"]
        for what, value, ok in targets:
            lines.append(f"| {what} | {value} | {'PASS' if ok else 'FAIL'} |")
    bad = [r["stage"] for r in document["results"] if r["status"] not in ("ok", "skipped")]
    if not small and not info.get("cuda"):
        lines += ["", "NO CUDA DEVICE: nothing was measured (--small checks the stages on the CPU)"]
    lines += ["", f"stages not ok: {', '.join(bad)}" if bad else "all stages ok (or skipped)"]
    return "\n".join(lines)


# -- sub-commands run in child processes --------------------------------------------------------------------
def probe() -> int:
    """Print the environment as JSON: versions, the GPU, and that the application's modules import."""
    import platform

    import torch

    versions = {"torch": torch.__version__, "cuda": torch.version.cuda}
    names = (
        "diffusers",
        "transformers",
        "accelerate",
        "peft",
        "huggingface_hub",
        "numpy",
        "SimpleITK",
        "pydicom",
    )
    for name in names:
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", None) or module.Version_VersionString()
        except Exception as exc:  # reported, and the stage that needs it fails with the details
            versions[name] = f"MISSING ({type(exc).__name__})"
    import sd_fsmis
    from sd_fsmis.commands import segment, train  # noqa: F401
    from sd_fsmis.core.model import engine  # noqa: F401

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "versions": versions,
        "cuda": torch.cuda.is_available(),
        "sd_fsmis": str(Path(sd_fsmis.__file__).parent),
    }
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor})"
        info["bf16"] = torch.cuda.is_bf16_supported()
    print(json.dumps(info, indent=1))
    return 0


def make_model(arch: str, device: str, out: str) -> int:
    """A model folder with random weights of ``arch`` (built on ``device``, saved from the CPU)."""
    import torch

    from sd_fsmis.core.model.folder import save_pipeline
    from sd_fsmis.core.model.presets import build_random_pipeline

    start = time.perf_counter()
    pipeline = build_random_pipeline(arch, seed=0, device=device if device == "cuda" else None)
    if device == "cuda":
        torch.cuda.synchronize()
    pipeline.to("cpu")
    built = time.perf_counter() - start
    start = time.perf_counter()
    folder = save_pipeline(pipeline, out, name=f"gpu-check-{arch}")
    saved = time.perf_counter() - start
    size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    print(json.dumps({"folder": str(folder), "gib": size / 2**30, "build_s": built, "save_s": saved}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("probe", help="(internal) print the environment as JSON")
    p = sub.add_parser("make-model", help="(internal) save a random model folder")
    p.add_argument("--arch", default="tiny", choices=["tiny", "real"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    parser.add_argument("--small", action="store_true", help="tiny model, few slices/steps; CPU if no CUDA")
    parser.add_argument("--only", nargs="+", choices=STAGES, metavar="STAGE", help=f"run these: {STAGES}")
    parser.add_argument("--skip", nargs="+", choices=STAGES, metavar="STAGE", help="skip these stages")
    parser.add_argument("--budget", type=float, help="seconds from the start (default 470; small 1800)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "gpu-check-out"))
    parser.add_argument("--work", default=os.environ.get("GPU_CHECK_WORK") or default_work())
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder (models, outputs)")
    args = parser.parse_args(argv)
    if args.command == "probe":
        return probe()
    if args.command == "make-model":
        return make_model(args.arch, args.device, args.out)
    if args.only and "env" not in args.only:
        args.only = ["env", *args.only]  # the probe finds the device: always run
    return Check(args).main()


if __name__ == "__main__":
    sys.exit(main())
