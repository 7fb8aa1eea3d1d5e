"""The switchboard: flip the engine's switches, run one workload, watch the numbers move.

    from workbench.ui import Switchboard
    sb = Switchboard()        # the embedded sorter model; Switchboard("path/to/checkpoint") for yours
    sb                        # in Jupyter: switches, workload, Run, live plots, history table

Every Run builds a fresh engine with the chosen switches (its load / compile / graph-capture
seconds are recorded, not hidden), warms it up, times the workload, counts kernel launches of a
decode step, appends one row to `history` and one point to each plot, then closes the engine so
its memory returns. Tick "timeline" to also profile a few decode steps of the run and draw
them (torch.profiler: CPU ops, launch calls, GPU kernels by family). Every number shown was measured in this process; a measurement this machine
cannot take (no GPU, no ncu) is shown as "unavailable" with the reason, never as a number.

It also works without a browser, which is how the tests drive it:
    sb.attention.value = "naive"; sb.run_button.click(); sb.history[-1]["tok_s"]
"""
from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path

import ipywidgets as widgets
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from workbench.optimizations.board import ATTENTION_BACKENDS, Optimizations, why_not
from workbench.engine import LLM
from workbench.measure import LaunchRecord, measure_hbm_python, ncu_status
from workbench.measure.bench import make_workload, time_generate
from workbench.measure.steps import engine_launches
from workbench.measure.timing import busy_warning
from workbench.measure.workloads import decode_step_workload
from workbench.model import ModelConfig

from .telemetry_plot import TelemetryPanel
from .timeline_panel import TimelinePanel

COLUMNS = ["run", "setting", "device", "torch_threads", "batch", "prompt_len", "new_tokens", "decode_steps", "output_tokens", "tok_s",
           "tok_s_min", "tok_s_max", "tpot_ms", "ttft_ms", "load_s", "compile_s", "graph_capture_s", "launch_calls_per_step",
           "kernels_per_step", "hbm_bytes_per_step", "launches_note", "hbm_note"]
# The table on screen (the two notes are in the plot panels; exports keep every column).
SHOWN = {"run": "run", "setting": "setting", "device": "device", "torch_threads": "threads", "batch": "batch", "prompt_len": "prompt",
         "new_tokens": "new", "decode_steps": "steps/round", "output_tokens": "out tokens", "tok_s": "tok/s",
         "tok_s_min": "tok/s min", "tok_s_max": "tok/s max", "tpot_ms": "TPOT ms",
         "ttft_ms": "TTFT ms", "load_s": "load s", "compile_s": "compile s", "graph_capture_s": "capture s",
         "launch_calls_per_step": "launches/step", "kernels_per_step": "kernels/step",
         "hbm_bytes_per_step": "HBM bytes/step"}
LAUNCH_STEPS = 4   # decode steps counted by the profiler per run


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


class Switchboard:
    def __init__(self, model_dir=None, *, device: str | None = None, dtype: str | None = None,
                 batch: int = 4, prompt_len: int = 16, new_tokens: int = 16, repeats: int = 1, **engine_kwargs):
        from workbench.assets import DEFAULT_MODEL_DIR
        self.model_dir = Path(model_dir or DEFAULT_MODEL_DIR)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype, self.repeats, self.engine_kwargs = dtype, repeats, engine_kwargs
        self.model_config = ModelConfig.from_hf(self.model_dir)
        self.max_len = min(self.model_config.max_position_embeddings, 4096)
        self.history: list[dict] = []
        self.figure: Figure | None = None
        self.unavailable = self._unavailable()     # switch name -> why it cannot run here

        tip = lambda name, text: text + (f" -- UNAVAILABLE here: {self.unavailable[name]}"  # noqa: E731
                                         if name in self.unavailable else "")
        self.attention = widgets.Dropdown(
            options=[a for a in ATTENTION_BACKENDS if a not in self.unavailable], value="naive",
            description="attention", tooltip=tip("flash", "naive: N x N scores in memory | sdpa: torch's "
                                                  "fused attention | flash: flash-attn"))
        self.fused = self._toggle("fused kernels", "fused_kernels", "Triton add+RMSNorm, SwiGLU, RoPE")
        self.gemv = self._toggle("decode GEMV", "decode_gemv", "Triton GEMV for the linear layers of a decode "
                                 "step (<= 16 tokens); off: cuBLAS")
        self.fdec = self._toggle("fold into GEMV", "fused_decode", "at <= 16 tokens, RMSNorm inside the Triton "
                                 "GEMV after it, SiLU-and-mul in the one before it, q/k norm + RoPE + KV write "
                                 "one kernel (four fewer kernels a layer)")
        self.dattn = self._toggle("decode attention", "decode_attention", "Triton split-KV attention for decode "
                                  "steps; off: the attention backend's")
        self.graphs = self._toggle("CUDA graphs", "cuda_graphs", "capture decode once, replay it")
        self.compile = self._toggle("torch.compile", "compile", "compile the model forward (slow first run)")
        self.pdl = self._toggle("PDL", "pdl", "programmatic dependent launch: each decode kernel starts while the "
                                "one before finishes (Hopper+; acts on the Triton decode kernels)")
        self.hbm = self._toggle("HBM (ncu)", "hbm", "also measure DRAM bytes of one decode step under "
                                "Nsight Compute (a separate process; about a minute)")
        self.timeline = self._toggle("timeline", "timeline", "also profile a few decode steps of the run with "
                                     "torch.profiler and draw them (adds a few seconds per run)")
        half = max(self.max_len // 2, 2)
        self.batch = widgets.BoundedIntText(min(batch, 256), min=1, max=256, description="batch")
        self.prompt_len = widgets.BoundedIntText(min(prompt_len, half), min=1, max=half, description="prompt len")
        self.new_tokens = widgets.BoundedIntText(min(new_tokens, half), min=2, max=half, description="new tokens")
        self.decode_steps = widgets.BoundedIntText(1, min=1, max=32, description="decode steps/round",
                                                   style={"description_width": "initial"},
                                                   tooltip="multi-step decoding: decode steps per scheduling "
                                                           "round (the host waits for the GPU once per round)")
        self.run_button = widgets.Button(description="Run", button_style="success", icon="play")
        self.run_button.on_click(lambda _: self.run())
        self.progress = widgets.IntProgress(value=0, min=0, max=4, description="idle")
        self.status = widgets.Label("press Run: each run builds, times and closes one engine")
        self.plot = widgets.Image(format="png")
        self.table = widgets.HTML()
        self.telemetry = TelemetryPanel()   # the engine step by step, live during the workload's first pass
        self.timeline_panel = TimelinePanel()   # the last run's decode steps, when "timeline" is ticked
        self.export_path = widgets.Text("switchboard-history", description="export to")
        csv_button = widgets.Button(description="Export CSV", icon="download")
        json_button = widgets.Button(description="Export JSON", icon="download")
        csv_button.on_click(lambda _: self.status.set_trait("value", f"wrote {self.export_csv()}, {self.export_telemetry('csv')}"))
        json_button.on_click(lambda _: self.status.set_trait("value", f"wrote {self.export_json()}, {self.export_telemetry('json')}"))
        notes = "; ".join(f"{k}: {v}" for k, v in self.unavailable.items()) or "every switch can run here"
        self.notes = widgets.HTML(f"<small><b>{html.escape(str(self.model_dir.name))}</b> on {self.device}. "
                                  f"Unavailable here: {html.escape(notes)}</small>")
        self.widget = widgets.VBox([
            widgets.HBox([self.attention, self.fused, self.gemv, self.fdec, self.dattn, self.graphs, self.compile,
                          self.pdl]),
            widgets.HBox([self.hbm, self.timeline]),   # what each run also measures (costs time)
            widgets.HBox([self.batch, self.prompt_len, self.new_tokens, self.decode_steps]), self.notes,
            widgets.HBox([self.run_button, self.progress, self.status]), self.plot, self.telemetry.image,
            self.timeline_panel.image, self.table,
            widgets.HBox([self.export_path, csv_button, json_button])])
        self._redraw()

    # Switches --------------------------------------------------------------------------------
    def _unavailable(self) -> dict[str, str]:
        reasons = why_not(self.device)   # the board's one decision
        path, why = ncu_status()
        if path is None or not self.device.startswith("cuda"):
            reasons["hbm"] = why if path is None else "ncu needs the engine on a CUDA GPU"
        return reasons

    def _toggle(self, description: str, name: str, help_text: str) -> widgets.ToggleButton:
        off = name in self.unavailable
        return widgets.ToggleButton(value=False, description=description, disabled=off,
                                    tooltip=f"UNAVAILABLE here: {self.unavailable[name]}" if off else help_text)

    def options(self) -> Optimizations:
        return Optimizations(attention=self.attention.value, fused_kernels=self.fused.value,
                             decode_gemv=self.gemv.value, fused_decode=self.fdec.value,
                             decode_attention=self.dattn.value, cuda_graphs=self.graphs.value,
                             compile=self.compile.value, pdl=self.pdl.value)

    def blocked(self, opts: Optimizations) -> list[str]:
        """Why this machine cannot run `opts` (empty when it can)."""
        return [f"{name}: {why}" for name, why in opts.why_not(self.device).items()]

    def select(self, opts: Optimizations) -> None:
        """Set the switches as a student would click them; refuses what cannot run here."""
        if self.blocked(opts):
            raise ValueError(f"{opts.label()} cannot run here: {'; '.join(self.blocked(opts))}")
        self.attention.value, self.fused.value, self.gemv.value = opts.attention, opts.fused_kernels, opts.decode_gemv
        self.fdec.value = opts.fused_decode
        self.dattn.value, self.graphs.value, self.compile.value = opts.decode_attention, opts.cuda_graphs, opts.compile
        self.pdl.value = opts.pdl

    # One run ---------------------------------------------------------------------------------
    def _phase(self, step: int, text: str) -> None:
        self.progress.value, self.progress.description, self.status.value = step, f"{step}/4", text

    def run(self) -> dict | None:
        """Build, warm up, time, count launches, close. Returns the new history row (None on error)."""
        opts, b, p, n = self.options(), self.batch.value, self.prompt_len.value, self.new_tokens.value
        k, want_timeline = self.decode_steps.value, self.timeline.value   # read once: a tick mid-run waits
        overlapped = self.engine_kwargs.get("async_rounds")   # EngineConfig's default: on wherever k > 1
        overlapped = k > 1 if overlapped is None else overlapped
        setting = opts.label() + (f", {k} steps/round" if k > 1 else "") + \
            ((", async rounds" if overlapped else ", rounds read one at a time") if k > 1 else "")
        launch_len = min(p, self.max_len - 3 * LAUNCH_STEPS - 9)   # engine_launches' requests must fit too
        max_len = min(self.max_len, max(p + n, launch_len + 3 * LAUNCH_STEPS + 8) + 1)
        self.run_button.disabled = True
        try:
            self._phase(1, f"building engine {setting} (load / compile / graph capture)...")
            with LLM(self.model_dir, opts=opts, device=self.device, dtype=self.dtype, max_num_seqs=b,
                     max_model_len=max_len, enable_prefix_caching=False,
                     **{**self.engine_kwargs, "decode_steps": k}) as llm:
                warm = {k: round(v, 3) for k, v in llm.timings().items()}
                self._phase(2, f"running {setting}: {b} x ({p} prompt + {n} new tokens)...")
                timed = self._timed_generate(llm, make_workload("batch", self.model_config.vocab_size,
                                                                num_seqs=b, prompt_len=p, new_tokens=n))
                self._phase(3, "measuring launches (torch.profiler)...")
                launches = (engine_launches(llm, batch=b, prompt_len=max(launch_len, 1), decode_steps=LAUNCH_STEPS)
                            ["decode"] if self.device.startswith("cuda") else LaunchRecord(
                                opts.label(), False, f"no CUDA: the engine runs on {self.device}, and kernel "
                                "launches are counted on a GPU"))
                if want_timeline:   # a profiler that cannot start costs the drawing, not the measured row
                    self._phase(3, "profiling decode steps for the timeline (torch.profiler)...")
                    try:
                        self.timeline_panel.profile(llm, batch=b, prompt_len=max(launch_len, 1), asked_len=p)
                    except RuntimeError as err:
                        self.timeline_panel.skip(f"the profiler could not run: {err}")
            hbm_bytes, hbm_note = self._hbm(opts, b, p)
        except Exception as err:   # show it, keep the board usable
            self._phase(0, f"error: {type(err).__name__}: {err}")
            self.timeline_panel.skip("the last run failed (see the status line)")
            self.last_error = err
            return None
        finally:
            self.run_button.disabled = False
        row = {"run": len(self.history) + 1, "setting": setting, "device": self._device_name(), "torch_threads": torch.get_num_threads(),
               "batch": b, "prompt_len": p, "new_tokens": n, "decode_steps": k, **timed,
               "load_s": warm.get("load_s"), "compile_s": warm.get("compile_s"),
               "graph_capture_s": warm.get("graph_capture_s"),
               "launch_calls_per_step": (launches.launch_calls_per_step + launches.graph_launches_per_step
                                         if launches.available else None),
               "kernels_per_step": launches.kernels_per_step if launches.available else None,
               "hbm_bytes_per_step": hbm_bytes, "launches_note": "" if launches.available else launches.reason,
               "hbm_note": hbm_note}
        self.history.append(row)
        self._redraw()
        if not want_timeline:
            self.timeline_panel.skip("tick 'timeline' before Run to profile the run's decode steps "
                                     "(torch.profiler adds a few seconds per run)")
        tpot = "-" if row["tpot_ms"] is None else f"{row['tpot_ms']:.2f}"
        self._phase(4, f"run {row['run']} {row['setting']}: {row['tok_s']:,.0f} tok/s, "
                       f"{tpot} ms/token (measured, {row['device']})" + (f"; {busy}" if (busy := busy_warning()) else ""))
        return row

    def _timed_generate(self, llm, workload) -> dict:
        # The warm-up is the whole workload once (time_generate's full_warmup: it also covers
        # compile's re-specializations), with the telemetry panel following it live; the timed
        # passes run unwatched (redrawing costs milliseconds).
        watch = self.telemetry.watch(llm, f"{llm.opts.label()}: warm-up pass of the workload, live "
                                          f"(recorded by llm.telemetry, {self._device_name()})")
        timed = time_generate(llm, workload, repeats=self.repeats, full_warmup=True, around_warmup=watch)
        return {k: timed[k] for k in ("output_tokens", "tok_s", "tok_s_min", "tok_s_max", "tpot_ms", "ttft_ms")}

    def _hbm(self, opts: Optimizations, batch: int, context: int) -> tuple[float | None, str]:
        if "hbm" in self.unavailable:
            return None, f"unavailable: {self.unavailable['hbm']}"
        if not self.hbm.value:
            return None, ("not measured: tick 'HBM (ncu)' (ncu replays every kernel, about a minute), "
                          "or see notebook 03 / `python -m workbench measure hbm`")
        self._phase(3, "measuring HBM bytes of one decode step under ncu (slow)...")
        record = measure_hbm_python(decode_step_workload, {"model_dir": str(self.model_dir), "attention": opts.attention,
                                                   "fused_kernels": opts.fused_kernels, "cuda_graphs": opts.cuda_graphs,
                                                   "decode_gemv": opts.decode_gemv, "fused_decode": opts.fused_decode,
                                                   "decode_attention": opts.decode_attention, "pdl": opts.pdl,
                                                   "compile": opts.compile, "batch": batch, "context": context},
                                    nvtx_include="decode/")
        return (record.dram_bytes, "measured by ncu") if record.available else (None, f"unavailable: {record.reason}")

    def _device_name(self) -> str:
        return torch.cuda.get_device_name() if self.device.startswith("cuda") else self.device

    # Plots and table -------------------------------------------------------------------------
    def plotted_runs(self) -> int:
        """Points in the throughput panel of the current figure (read back from the figure)."""
        return len(self.figure.axes[0].patches) if self.figure else 0

    def _redraw(self) -> None:
        runs = self.history
        have = [i for i, r in enumerate(runs) if r["launch_calls_per_step"] is not None]
        have_hbm = [i for i, r in enumerate(runs) if r["hbm_bytes_per_step"] is not None]
        # A panel with nothing to draw collapses to one line under the plots, saying why.
        lower = bool(have or have_hbm)
        fig = Figure(figsize=(12, 6.4 if lower else 3.4), layout="constrained")
        axes = list(fig.subplots(2 if lower else 1, 2).ravel()) + ([] if lower else [None, None])
        workloads = {(r["batch"], r["prompt_len"], r["new_tokens"], r["decode_steps"]) for r in runs}
        mixed = len(workloads) > 1   # bars of different workloads: each tick names its workload
        ticks = [f"{r['run']}\n" + r["setting"].replace("+", "+\n")
                 + (f"\n{r['batch']}x({r['prompt_len']}+{r['new_tokens']})" if mixed else "") for r in runs]
        if mixed:
            fig.suptitle("runs with different workloads (batch x (prompt + new tokens), under each bar): "
                         "compare bars of the same workload only", fontsize=9, color="tab:red")
        x = list(range(len(runs)))
        device = runs[-1]["device"] if runs else self.device
        if runs and not self.device.startswith("cuda"):
            device += f", {runs[-1]['torch_threads']} torch thread(s)"   # CPU figures say their thread count
        panels = [(axes[0], "tok_s", "throughput, output tok/s", "tab:green"),
                  (axes[1], "tpot_ms", "time per output token, ms", "tab:blue")]
        for ax, key, title, color in panels:
            bars = ax.bar(x, [r[key] or 0 for r in runs], color=color)   # None (not measured): no bar
            ax.bar_label(bars, labels=[_fmt(r[key]) for r in runs], fontsize=7)
            if key == "tok_s" and runs and all(r.get("tok_s_min") is not None for r in runs):   # the repeats' spread
                ax.errorbar(x, [r["tok_s"] for r in runs], fmt="none", ecolor="black", capsize=3, linewidth=0.8,
                            yerr=[[r["tok_s"] - r["tok_s_min"] for r in runs], [r["tok_s_max"] - r["tok_s"] for r in runs]])
            ax.set_title(f"{title} (measured, {device})", fontsize=10)
        launch_note = next((r["launches_note"] for r in reversed(runs) if r["launches_note"]), None)
        hbm_note = runs[-1]["hbm_note"] if runs else (
            "unavailable: " + self.unavailable["hbm"] if "hbm" in self.unavailable else "no run yet")
        self.panel_notes = ([] if have else [f"launches per step: {launch_note or 'no run yet'}"]) + \
                           ([] if have_hbm else [f"HBM bytes per step: {hbm_note}"])
        if not lower:
            self._finish(fig, [a for a in axes if a is not None], ticks, len(runs))
            return
        ax = axes[2]
        ax.set_title("per decode step: CPU launch calls vs GPU kernels (measured)", fontsize=10)
        if have:
            ax.bar([i - 0.2 for i in have], [runs[i]["launch_calls_per_step"] for i in have], 0.4,
                   label="CPU launch calls (incl. graph launches)", color="tab:orange")
            ax.bar([i + 0.2 for i in have], [runs[i]["kernels_per_step"] for i in have], 0.4,
                   label="GPU kernels", color="tab:purple")
            ax.legend(fontsize=8)
        else:
            self._say(ax, launch_note or "no run yet")
        ax = axes[3]
        ax.set_title("HBM bytes per decode step (measured by ncu)", fontsize=10)
        if have_hbm:
            ax.bar(have_hbm, [runs[i]["hbm_bytes_per_step"] / 1e6 for i in have_hbm], color="tab:red")
            ax.set_ylabel("MB")
        else:
            self._say(ax, hbm_note)
        self._finish(fig, axes, ticks, len(runs))

    def _finish(self, fig, axes, ticks, n_runs) -> None:
        x = list(range(n_runs))
        for ax in axes:
            ax.set_xticks(x, ticks, fontsize=7)
            ax.set_xlim(-0.6, max(n_runs, 4) - 0.4)
        if self.panel_notes and len(axes) == 2:   # the lower panels collapsed: one line says why
            import textwrap   # one line per panel, wrapped to the figure's width (about 170 characters)
            fig.supxlabel("\n".join(textwrap.fill("not drawn -- " + note, 160) for note in self.panel_notes),
                          fontsize=8, color="dimgray")
        self.figure = fig
        buf = io.BytesIO()
        FigureCanvasAgg(fig).print_png(buf)
        self.plot.value = buf.getvalue()
        self.table.value = self.to_html()

    @staticmethod
    def _say(ax, text: str) -> None:
        import textwrap
        ax.text(0.5, 0.5, textwrap.fill(text, 60), ha="center", va="center", fontsize=8,
                transform=ax.transAxes, color="dimgray")
        ax.set_yticks([])

    def to_html(self) -> str:
        head = "".join(f"<th>{name}</th>" for name in SHOWN.values())
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in SHOWN) + "</tr>"
                       for r in self.history)
        style = "<style>.wb-history td, .wb-history th {padding: 1px 6px; text-align: right}</style>"
        return (f"{style}<table class='wb-history' style='font-size:11px'><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>"
                if self.history else "<i>history: no runs yet</i>")

    # Export ----------------------------------------------------------------------------------
    def export_csv(self, path=None) -> Path:
        path = Path(path or self.export_path.value + ".csv")
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.history)
        return path

    def export_json(self, path=None) -> Path:
        path = Path(path or self.export_path.value + ".json")
        path.write_text(json.dumps(self.history, indent=1))
        return path

    def export_telemetry(self, kind: str = "csv", path=None) -> Path:
        """The last run's per-step telemetry (the pass the panel shows) as CSV or JSON."""
        from workbench.engine.telemetry import Telemetry
        table = Telemetry()
        table.rows = list(self.telemetry.rows)
        path = path or f"{self.export_path.value}-telemetry.{kind}"
        return table.to_csv(path) if kind == "csv" else table.to_json(path)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)
