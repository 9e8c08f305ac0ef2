"""All terminal output lives here: rich tables on a terminal, JSON lines for scripts.

Results go to stdout; progress, warnings and errors to stderr, so `--json` output can be
piped into `jq` untouched. JSON never contains NaN or Infinity (they become null).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, highlight=False)


def clean_json(obj: Any) -> Any:
    """NaN/Inf -> None, tuples -> lists, numpy scalars -> Python numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean_json(v) for v in obj]
    if hasattr(obj, "tolist"):
        return clean_json(obj.tolist())
    return obj


def dumps(obj: Any, **kw) -> str:
    return json.dumps(clean_json(obj), allow_nan=False, ensure_ascii=False, **kw)


def write_json_line(obj: Any) -> None:
    sys.stdout.write(dumps(obj) + "\n")
    sys.stdout.flush()


def error_line(message: str) -> None:
    err.print(
        f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True
    ) if err.is_terminal else print(f"tinytriage: error: {message}", file=sys.stderr)


# -- predict ----------------------------------------------------------------------------


def print_predictions(results: Iterable, *, as_json: bool) -> tuple[int, int]:
    """Print each result as it arrives (JSON) or as one table (terminal). Returns (ok, failed)."""
    from tinytriage.predict import PhotoFailure

    ok = failed = 0
    rows = []
    for r in results:
        if isinstance(r, PhotoFailure):
            failed += 1
            error_line(r.reason)
            continue
        ok += 1
        if as_json:
            write_json_line(r.to_json())
        else:
            rows.append(r)
    if not as_json and rows:
        table = Table(title=None, show_lines=False)
        for col, kw in (
            ("photo", {"overflow": "fold"}),
            ("class", {}),
            ("conf.", {"justify": "right"}),
            ("top 3", {}),
            ("route", {}),
        ):
            table.add_column(col, **kw)
        for r in rows:
            route = f"[yellow]{r.route}[/yellow] ({r.review_reason})" if r.needs_review else f"[green]{r.route}[/green]"
            top3 = ", ".join(f"{c} {p:.2f}" for c, p in r.top3)
            table.add_row(r.path, r.label, f"{r.confidence:.3f}", top3, route)
        out.print(table)
    return ok, failed


# -- train -------------------------------------------------------------------------------


class TrainProgress:
    """A rich progress bar on stderr fed by the training loop's events."""

    def __init__(self, quiet: bool = False) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.quiet = quiet
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}  {task.fields[ips]:.0f} img/s"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=quiet,
        )
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def __call__(self, e: dict) -> None:
        kind = e["event"]
        if kind == "scan":
            err.print(f"dataset: {e['summary']}")
            for path, why in e["unreadable"][:20]:
                err.print(f"  [yellow]unreadable[/yellow] {path}: {why}")
        elif kind == "duplicates":
            err.print(
                f"[yellow]warning:[/yellow] {len(e['pairs'])} photo(s) in validation are exact copies of training photos:"
            )
            for a, b in e["pairs"][:10]:
                err.print(f"  {b} == {a}")
        elif kind == "unreadable":
            err.print(f"  [yellow]skipped[/yellow] {e['reason']}")
        elif kind == "cache":
            err.print(f"decoding {e['n']} photos once (cached as small uint8 arrays)...")
        elif kind == "resume":
            err.print(f"resuming after epoch {e['epoch']}")
        elif kind == "step":
            fields = dict(epoch=f"{e['epoch']}/{e['epochs']}", loss=e["loss"], acc=e["acc"], ips=e["images_per_s"])
            if self.task is None:
                self.task = self.progress.add_task("train", total=e["steps"], **fields)
            self.progress.update(self.task, completed=e["step"], total=e["steps"], **fields)
        elif kind == "epoch":
            m = e["metrics"]
            self.progress.console.print(
                f"epoch {m['epoch']:>3}  train loss {m['train_loss']:.4f} acc {m['train_acc']:.3f}  "
                f"val loss {m['val_loss']:.4f} acc {m['val_acc']:.3f}  lr {m['lr']:.4f}  "
                f"{m['images_per_s']:.0f} img/s  {m['seconds']:.1f}s"
            )
            if self.task is not None:
                self.progress.reset(self.task)
        elif kind == "interrupted":
            where = e["checkpoint"]
            msg = f"interrupted after {e['completed_epochs']} complete epoch(s)"
            err.print(
                f"[yellow]{msg}[/yellow]; "
                + (f"checkpoint kept at {where}; continue with --resume" if where else "no checkpoint yet")
            )


def print_train_result(r, *, as_json: bool) -> None:
    summary = {
        "model": str(r.model_path),
        "run_dir": str(r.run_dir),
        "best_epoch": r.best_epoch,
        "best_val_acc": r.best_val_acc,
        "temperature": r.temperature,
        "threshold": r.threshold,
        "ece_before": r.ece_before,
        "ece_after": r.ece_after,
        "train_seconds": r.train_seconds,
        "interrupted": r.interrupted,
        "duplicates": len(r.duplicates),
    }
    if as_json:
        write_json_line(summary)
        return
    out.print(
        f"saved {r.model_path} (best epoch {r.best_epoch}, val acc {r.best_val_acc:.3f}); "
        f"calibrated: T={r.temperature:.3f}, ECE {r.ece_before:.3f} -> {r.ece_after:.3f}; "
        f"review below confidence {r.threshold:.3f}; trained in {r.train_seconds:.0f}s"
    )


# -- evaluate -----------------------------------------------------------------------------


def print_eval(r, *, as_json: bool) -> None:
    if as_json:
        write_json_line(r.to_json())
        return
    for path, why in r.failures:
        error_line(f"{why}" if str(path) in str(why) else f"{path}: {why}")
    out.print(f"{r.scan_summary}; evaluated {r.n} photos")
    out.print(
        f"accuracy [bold]{r.accuracy:.4f}[/bold]   ECE {r.ece:.4f}   sent to review {r.review_rate:.1%}   "
        + (f"auto-routed to the right queue {r.routed_accuracy:.2%}" if r.routed_accuracy == r.routed_accuracy else "nothing auto-routed")
    )
    if r.open_set_review_rate is not None:
        out.print(f"non-ticket photos reaching a human: {r.open_set_review_rate:.1%}")
    t = Table(title="per class")
    for col in ("class", "precision", "recall", "F1", "support"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for c, s in r.per_class.items():
        t.add_row(c, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", str(s["support"]))
    out.print(t)
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for c in r.classes:
        cm.add_column(c[:10], justify="right")
    for c, row in zip(r.classes, r.confusion, strict=True):
        cm.add_row(
            c,
            *[
                f"[bold]{v}[/bold]" if i == r.classes.index(c) else (str(v) if v else "[dim]0[/dim]")
                for i, v in enumerate(row)
            ],
        )
    out.print(cm)


# -- explain --demo ------------------------------------------------------------------------


def _grid(a, fmt="{:.2f}", highlight=None) -> str:
    rows = []
    for i, row in enumerate(a):
        cells = []
        for j, v in enumerate(row):
            s = fmt.format(v).rjust(6)
            cells.append(f"[bold yellow]{s}[/bold yellow]" if highlight == (i, j) else s)
        rows.append(" ".join(cells))
    return "\n".join(rows)


def print_demo(r, *, as_json: bool) -> None:
    """The worked example, laid out so each number can be checked by hand."""
    if as_json:
        write_json_line(r.to_json())
        return
    p = out.print
    p("[bold]1. Convolution[/bold]: a 3x3 kernel slides over the 4x4 patch (stride 1, no padding, bias 0).")
    p("   Each output cell is one dot product: the 9 pixels under the kernel times the 9 weights, summed.\n")
    p("patch (bright bar in rows 1-2):")
    p(_grid(r.patch))
    p("\nkernel (horizontal edge: bright middle row between darker rows):")
    p(_grid(r.kernel))
    for c in r.cells:
        terms = [f"{w:+.2f}*{x:.2f}" for w, x in zip(c["kernel"].ravel(), c["window"].ravel(), strict=True)]
        p(
            f"\n[bold]cell ({c['row']},{c['col']})[/bold]: window rows {c['row']}-{c['row'] + 2}, cols {c['col']}-{c['col'] + 2}"
        )
        p("  products: " + "  ".join(f"{v:+.3f}" for v in c["products"].ravel()))
        p("  = " + " ".join(terms[:3]) + "\n    " + " ".join(terms[3:6]) + "\n    " + " ".join(terms[6:]))
        p(f"  sum {c['sum']:+.4f} + bias {c['bias']:+.2f} = [bold]{c['out']:+.4f}[/bold]")
    p("\nfeature map:")
    p(_grid(r.feature_map, "{:+.4f}"))
    p("\n[bold]2. ReLU[/bold] max(0, x): negative evidence is dropped.")
    p(_grid(r.relu, "{:.4f}"))
    p(f"\n[bold]3. 2x2 max pooling[/bold]: the cell at {r.pool_winner} won -> {r.pooled:.4f}")
    p(_grid(r.relu, "{:.4f}", highlight=r.pool_winner))
    p("\n[bold]4. Linear classifier[/bold] W = [[1.5], [-1.2]], b = [0.1, -0.3] on the pooled value:")
    for name, w, b, z, pr in zip(("damage", "clean"), (1.5, -1.2), (0.1, -0.3), r.logits, r.probs, strict=True):
        p(f"  {name:>6}: {w:+.1f} * {r.pooled:.4f} {b:+.1f} = logit {z:+.4f}   softmax {pr:.4f}")
    p("\n[bold]5. Why pool[/bold]: shift the bar down one pixel.")
    p("shifted patch:")
    p(_grid(r.shifted_patch))
    p("feature map before -> after the shift:")
    for a, b in zip(r.feature_map, r.shifted_map, strict=True):
        p("  " + " ".join(f"{v:+.4f}" for v in a) + "    ->    " + " ".join(f"{v:+.4f}" for v in b))
    p(
        f"pooled value: {r.pooled:.4f} -> {r.shifted_pooled:.4f} (change {r.shifted_pooled - r.pooled:+.4f}): "
        "the map moved, the pooled evidence barely did."
    )
    pe = r.pool_example
    p("\n[bold]6. Max pooling on a 4x4 map[/bold] (2x2 windows, stride 2):")
    p(_grid(pe["input"], "{:.1f}"))
    for i in range(2):
        for j in range(2):
            wr, wc = pe["winners"][i][j]
            p(f"  window ({i},{j}): winner at ({wr},{wc}) = {pe['output'][i][j]:.1f}")
    p("\n[bold]7. Output size[/bold] = floor((H + 2P - K) / S) + 1")
    for o in r.output_size:
        p(f"  {o['what']}: floor(({o['H']} + 2*{o['P']} - {o['K']}) / {o['S']}) + 1 = {o['out']}")
    p("\n[bold]8. Receptive field[/bold] r = r_prev + (k - 1) * (product of earlier strides):")
    for row in r.receptive_field:
        p(f"  {row['name']}: sees {row['receptive_field']}x{row['receptive_field']} input pixels")
    pc = r.param_counts
    p("\n[bold]9. Why convolve[/bold]: parameters to look at a 224x224x3 photo")
    p(f"  dense layer, 256 units: 224*224*3*256 + 256 = {pc['dense_256_on_224x224x3']:,}")
    p(
        f"  3x3 conv, 256 filters:      3*3*3*256 + 256 = {pc['conv3x3_256_filters_on_rgb']:,}  ({pc['ratio']:,.0f}x fewer)"
    )
    if r.torch:
        t = r.torch
        table = Table(title=f"the same numbers from PyTorch {t['version']} (float64)")
        for col in ("quantity", "tinytriage (NumPy)", "PyTorch", "max |diff|"):
            table.add_column(col)
        import numpy as np

        for name, a, b in (
            ("feature map", r.feature_map, t["feature_map"]),
            ("pooled", r.pooled, t["pooled"]),
            ("logits", r.logits, t["logits"]),
            ("probabilities", r.probs, t["probs"]),
            ("pooled after shift", r.shifted_pooled, t["shifted_pooled"]),
            ("4x4 pool example", pe["output"], t["pool_example"]),
        ):
            a_, b_ = np.atleast_1d(np.asarray(a, float)), np.atleast_1d(np.asarray(b, float))
            table.add_row(
                name,
                np.array2string(a_.ravel(), precision=4),
                np.array2string(b_.ravel(), precision=4),
                f"{np.abs(a_ - b_).max():.1e}",
            )
        out.print()
        out.print(table)


# -- compare ---------------------------------------------------------------------------------


def print_compare(r, *, as_json: bool) -> None:
    if as_json:
        write_json_line(r.to_json())
        return
    a, b = r.backends
    tol = r.tolerances

    def mark(value, key):
        return "[green]ok[/green]" if value <= tol[key] else "[red]OVER[/red]"

    f = r.forward
    t = Table(title=f"forward: {a} vs {b} on {f['n']} photos ({r.model})")
    for col in ("quantity", "max |diff|", "max rel. diff", "tolerance", ""):
        t.add_column(col)
    t.add_row(
        "logits",
        f"{f['logits_max_abs']:.2e}",
        f"{f['logits_max_rel']:.2e}",
        f"rel {tol['forward_logits_rel']:.0e}",
        mark(f["logits_max_rel"], "forward_logits_rel"),
    )
    t.add_row(
        "probabilities",
        f"{f['probs_max_abs']:.2e}",
        f"{f['probs_max_rel']:.2e}",
        f"abs {tol['forward_probs_abs']:.0e}",
        mark(f["probs_max_abs"], "forward_probs_abs"),
    )
    t.add_row(
        "labels agree",
        f"{f['labels_agree']}/{f['n']}",
        "",
        "all",
        "[green]ok[/green]" if f["labels_agree"] == f["n"] else "[red]NO[/red]",
    )
    out.print(t)

    bw = r.backward
    t = Table(
        title=f"backward: loss {bw['loss'][0]:.6f} ({a}) vs {bw['loss'][1]:.6f} ({b}), rel. diff {bw['loss_rel']:.1e}"
    )
    for col in ("parameter", "max |diff|", "max rel. diff", ""):
        t.add_column(col)
    for k, d in bw["grads"].items():
        t.add_row(k, f"{d['max_abs']:.2e}", f"{d['max_rel']:.2e}", mark(d["max_rel"], "grad_rel"))
    out.print(t)

    tr = r.training
    t = Table(title=f"training: {tr['steps']} SGD steps, same weights and batches (lr {tr['lr']})")
    t.add_column("step")
    t.add_column(f"loss ({a})")
    t.add_column(f"loss ({b})")
    for i, (p, q) in enumerate(zip(tr["loss"][a], tr["loss"][b], strict=True)):
        t.add_row(str(i + 1), f"{p:.6f}", f"{q:.6f}")
    out.print(t)
    out.print(
        f"final weights: max rel. diff {tr['weight_max_rel']:.2e} ({tr['worst_weight']}) {mark(tr['weight_max_rel'], 'train_weight_rel')}"
    )

    s = r.speed
    t = Table(title=f"speed, batch {r.batch} (median of repeats)")
    for col in ("engine", "forward / batch", "train step / batch", "forward img/s", "train img/s", "cold start"):
        t.add_column(col, justify="right")
    for name in (a, b):
        d = s[name]
        cold = f"{d['cold_start_s']:.2f} s" if "cold_start_s" in d else "-"
        t.add_row(
            name,
            f"{d['forward_s'] * 1e3:.1f} ms",
            f"{d['train_step_s'] * 1e3:.1f} ms",
            f"{d['forward_images_per_s']:.0f}",
            f"{d['train_images_per_s']:.0f}",
            cold,
        )
    ra = s["ratio"]
    t.add_row(f"ratio {ra['of']}", f"{ra['forward']:.2f}x", f"{ra['train_step']:.2f}x", "", "", "")
    out.print(t)
    if r.accuracy:
        out.print("accuracy on --data: " + ", ".join(f"{k} {v:.4f}" for k, v in r.accuracy.items()))
    if r.flags:
        for fl in r.flags:
            error_line(fl)
    else:
        out.print("[green]all differences within tolerance[/green]")
