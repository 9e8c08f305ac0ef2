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
        f"auto-routed to the right queue {r.routed_accuracy:.2%}"
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
