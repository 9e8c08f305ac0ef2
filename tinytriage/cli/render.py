"""All terminal output lives here: rich tables on a terminal, JSON lines for scripts.

Results go to stdout; progress, warnings and errors to stderr, so `--json` output can be
piped into `jq` untouched. JSON never contains NaN or Infinity (they become null).
The consoles themselves are ``cli.consoles``, the JSON lines ``cli.lines``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from tinytriage.cli.consoles import PipeConsole, err, out
from tinytriage.cli.lines import dumps, error_line, print_prediction_lines, write_json_line  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # for the type hints alone: each command imports what it needs when it runs
    from tinytriage.explain import lesson
    from tinytriage.explain.photo import (
        ConvCell,
        DepthwiseCell,
        ExplainResult,
        FeatureMaps,
        Heatmap,
        PointwiseCell,
        PoolCell,
    )
    from tinytriage.training import events


# -- progress on long work -------------------------------------------------------------------


@contextmanager
def photo_progress(what: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr while photos are worked through, on a terminal only: into a
    file or a pipe, nothing (no animation in a log). Yields ``advance(n=1, total=None)``,
    which the library calls as photos are done (``total``: once it knows how many)."""
    if not err.is_terminal:
        yield lambda n=1, total=None: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("photos"),
        TimeRemainingColumn(), console=err, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(what, total=total)

        def advance(n: int = 1, total: int | None = None) -> None:
            if total is not None:
                bar.update(task, total=total)
            bar.advance(task, n)

        yield advance


@contextmanager
def files_progress(what: str, folder, total: int) -> Iterator[None]:
    """``photo_progress`` for work that says nothing while it runs but writes one file per
    photo (``samples``: the generator): a thread counts the photos under ``folder`` written
    since it started, twice a second."""
    import threading
    import time

    with photo_progress(what, total) as advance:
        if not err.is_terminal:
            yield
            return
        done, start = threading.Event(), time.time() - 1.0

        def written() -> int:
            n = 0
            for p in Path(folder).glob("*/*.jpg"):
                try:
                    n += p.stat().st_mtime >= start
                except OSError:  # gone since the listing
                    pass
            return n

        def count() -> None:
            seen = 0
            while not done.wait(0.5):
                now = written()
                advance(now - seen)
                seen = now

        watcher = threading.Thread(target=count, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()


# -- predict ----------------------------------------------------------------------------


def print_predictions(results: Iterable, *, as_json: bool) -> tuple[int, int]:
    """Print each result as it arrives (JSON) or as one table and a totals line (terminal).
    Returns (ok, failed)."""
    from collections import Counter

    from tinytriage.inference.predict import PhotoFailure

    if as_json:
        return print_prediction_lines(results)
    ok = failed = 0
    rows = []
    with photo_progress("predicting") as advance:
        for r in results:
            advance()
            if isinstance(r, PhotoFailure):
                failed += 1
                error_line(r.reason)
                continue
            ok += 1
            rows.append(r)
    if not rows:
        return ok, failed
    if out.is_terminal:
        out.print(prediction_table(rows, out.width))
    else:  # into a file or a pipe: every row one line, however long its path
        from rich.measure import Measurement

        table = prediction_table(rows, None)
        natural = Measurement.get(out, out.options.update_width(10**6), table).maximum
        PipeConsole(file=out.file, width=max(natural, 40), highlight=False, soft_wrap=True).print(table)
    routes = Counter(r.route for r in rows)
    reasons = Counter(r.review_reason for r in rows if r.needs_review)
    review = sum(reasons.values())
    out.print(
        f"{len(rows)} photo{'s' if len(rows) != 1 else ''}: "
        + ", ".join(f"{n} {route}" for route, n in routes.most_common())
        + f"; {review} to review"
        + (f" ({', '.join(f'{n} {why}' for why, n in reasons.most_common())})" if review else "")
        + (f"; {failed} failed" if failed else "")
    )
    return ok, failed


PHOTO_MIN = 16  # the photo column never gets narrower on a terminal (a longer path loses its start)
PHOTO_WANT = 32  # ... and before runner-up and route wrap to a second line, it gets this much


def prediction_table(rows: list, width: int | None) -> Table:
    """The predictions as a table. ``width``: the terminal's. The photo column keeps at least
    ``PHOTO_MIN`` characters and paths too long for it lose their start ("...00003.jpg");
    runner-up and route wrap at their spaces when the photo column needs the room. None:
    every row on one line, full paths (a file or a pipe)."""
    cells = []
    for r in rows:
        runner_up = f"{r.top3[1][0]} {r.top3[1][1]:.3f}" if len(r.top3) > 1 else ""
        route = f"[yellow]{r.route}[/yellow] ({r.review_reason})" if r.needs_review else f"[green]{r.route}[/green]"
        plain = f"{r.route} ({r.review_reason})" if r.needs_review else r.route
        cells.append((r.path, r.label, f"{r.confidence:.3f}", runner_up, route, plain))
    paths = [c[0] for c in cells]
    photo_width = None
    if width is not None:
        longest = max(len(p) for p in paths)
        headers = ("class", "conf.", "runner-up", "route")
        columns = [[h] + [c[i] for c in cells] for h, i in zip(headers, (1, 2, 3, 5), strict=True)]  # (route: plain)
        natural = [max(len(v) for v in col) for col in columns]
        least = [max(len(w) for v in col for w in v.split()) for col in columns]  # the longest word
        frame = 1 + 3 * (len(columns) + 1)  # the borders and one space either side of each column
        photo_width = min(longest, width - frame - sum(natural))  # runner-up and route on one line
        if photo_width < min(longest, PHOTO_WANT):  # they wrap, the photo column takes the room
            photo_width = min(longest, max(width - frame - sum(least), PHOTO_MIN))
        photo_width = max(photo_width, min(longest, PHOTO_MIN))
        paths = [p if len(p) <= photo_width else "\u2026" + p[-(photo_width - 1) :] for p in paths]
    table = Table(show_lines=False)
    table.add_column("photo", no_wrap=True, width=photo_width)
    table.add_column("class", no_wrap=True)
    table.add_column("conf.", justify="right", no_wrap=True)
    table.add_column("runner-up", no_wrap=width is None)
    table.add_column("route", no_wrap=width is None)
    for path, c in zip(paths, cells, strict=True):  # a path or a class name is never read as markup
        table.add_row(Text(path), Text(c[1]), c[2], Text(c[3]), c[4])
    return table


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
            disable=quiet or not err.is_terminal,  # into a log: the lines alone, nothing animated
        )
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def __call__(self, e: events.Event) -> None:
        from tinytriage.training import events

        match e:
            case events.Scan():
                err.print(f"{e.name}: {e.summary}")
                for path, why in e.unreadable[:20]:
                    err.print(f"  [yellow]unreadable[/yellow] {path}: {why}")
            case events.Plan():
                err.print(e.text)
            case events.Duplicates():
                err.print(
                    f"[yellow]warning:[/yellow] {len(e.pairs)} photo(s) in validation are exact copies of training photos:"
                )
                for a, b in e.pairs[:10]:
                    err.print(f"  {b} == {a}")
            case events.Unreadable():
                err.print(f"  [yellow]skipped[/yellow] {e.reason}")
            case events.Cache():
                err.print(f"decoding {e.n} photos once (cached as small uint8 arrays)...")
            case events.Init():
                err.print(f"starting from the weights of {e.path}")
            case events.Resume():
                err.print(f"resuming after epoch {e.epoch}")
            case events.DamageBoxes():
                err.print(f"damage maps: {e.n} of {e.of} training photos have a damage box")
            case events.Teacher():
                err.print(
                    f"distilling from {e.path} ({e.arch}): it gives the true class to {e.agreement:.1%} "
                    "of the training photos"
                )
            case events.Step():
                fields = dict(epoch=f"{e.epoch}/{e.epochs}", loss=e.loss, acc=e.acc, ips=e.images_per_s)
                if self.task is None:
                    self.task = self.progress.add_task("train", total=e.steps, **fields)
                self.progress.update(self.task, completed=e.step, total=e.steps, **fields)
            case events.Epoch(metrics=m):
                damage = "" if m.damage_loss is None else f"  damage-map loss {m.damage_loss:.4f}"
                self.progress.console.print(
                    f"epoch {m.epoch:>3}  train loss {m.train_loss:.4f} acc {m.train_acc:.3f}  "
                    f"val loss {m.val_loss:.4f} acc {m.val_acc:.3f}  lr {m.lr:.4f}  "
                    f"{m.images_per_s:.0f} img/s  {m.seconds:.1f}s{damage}"
                )
                if self.task is not None:
                    self.progress.reset(self.task)
            case events.Interrupted():
                where = e.checkpoint
                msg = f"interrupted after {e.completed_epochs} complete epoch(s)"
                err.print(
                    f"[yellow]{msg}[/yellow]; "
                    + (
                        f"checkpoint kept at {where}; continue with --resume --out {Path(where).parent}"
                        if where
                        else "no checkpoint yet"
                    )
                )


def print_train_result(r, *, as_json: bool) -> None:
    cal = r.calibration
    summary = {
        "model": str(r.model_path),
        "run_dir": str(r.run_dir),
        "best_epoch": r.best_epoch,
        "best_val_acc": r.best_val_acc,
        **({} if cal is None else cal.to_json()),
        "temperature": r.temperature,
        "threshold": r.threshold,
        "ece_before": r.ece_before,
        "ece_after": r.ece_after,
        "routes": r.routes,
        "train_seconds": r.train_seconds,
        "interrupted": r.interrupted,
        "duplicates": len(r.duplicates),
    }
    if as_json:
        write_json_line(summary)
        return
    out.print(
        f"saved {r.model_path} (best epoch {r.best_epoch}, val acc {r.best_val_acc:.3f}), trained in {r.train_seconds:.0f}s"
    )
    if cal is not None:
        out.print(f"calibrated on {cal.photos}:")
        print_temperature(cal.temperature, cal.fit and cal.fit.note, cal.ece_before, cal.ece_after)
        print_review_threshold(cal.review)
    out.print("routes: " + ", ".join(f"{c} -> {q}" for c, q in r.routes.items()))


def print_temperature(temperature: float, note: str | None, ece_before: float, ece_after: float) -> None:
    """The temperature used, why T = 1 was kept if it was, and the held-out calibration error."""
    if note:
        out.print(f"  temperature T=1 (kept: {note})")
    else:
        out.print(f"  temperature T={temperature:.3f}")
    out.print(
        f"  calibration error (ECE) on photos the temperature was not fitted on: {ece_before:.3f} at T=1 "
        f"-> {ece_after:.3f}"
    )


def print_review_threshold(review) -> None:
    """The review threshold, and what its auto-routed photos reached where it was picked."""
    if review is None:
        return
    t = f"  review below confidence {review.threshold:.3f}"
    target = f"{review.target_precision:.0%}"
    if review.routed == 0:
        out.print(f"{t}: [yellow]no photo reaches it[/yellow]; every photo goes to a person (target {target})")
    elif review.met:
        out.print(
            f"{t}: {review.routed} of the {review.of} photos auto-routed, {review.precision:.1%} of them right "
            f"(target {target})"
        )
    else:
        out.print(
            f"{t}: [yellow]no threshold reaches {target} precision on these {review.of} photos[/yellow]; "
            f"this one auto-routes {review.routed}, {review.precision:.1%} of them right"
        )


# -- evaluate -----------------------------------------------------------------------------


def print_calibration(c, path, *, as_json: bool) -> None:
    """What ``tinytriage calibrate`` fitted (a ``second_look.Calibration``) and where it went."""
    if as_json:
        write_json_line({**c.to_json(), "model": str(path)})
        return
    for p, why in c.failures:
        error_line(why if p in why else f"{p}: {why}")
    t = Table(title=f"second look on {c.n} validation photos (the chosen row in bold)")
    for col in ("look again below", "photos looked at again", "accuracy"):
        t.add_column(col, justify="right")
    for row in c.rows:
        style = "bold" if row["below"] == c.below else None
        t.add_row(f"{row['below']:.2f}", f"{row['looked']:.1%}", f"{row['accuracy']:.4f}", style=style)
    out.print(t)
    out.print(f"accuracy {c.accuracy_first:.4f} (first look) -> {c.accuracy:.4f} (with the second look)")
    out.print(f"calibrated on {c.n} photos:")
    print_temperature(c.temperature, c.temperature_note, c.ece_before, c.ece_after)
    print_review_threshold(c.review)
    out.print(f"wrote {path}")


def print_eval(r, *, as_json: bool, pointing=None) -> None:
    """The evaluation; ``pointing``: an ``explain.PointingResult`` from ``evaluate --explain``."""
    if as_json:
        write_json_line({**r.to_json(), **({"pointing_game": pointing.to_json()} if pointing else {})})
        return
    for path, why in r.failures:
        error_line(f"{why}" if str(path) in str(why) else f"{path}: {why}")
    out.print(f"{r.scan_summary}; evaluated {r.n} photos")
    out.print(
        f"accuracy [bold]{r.accuracy:.4f}[/bold]   ECE {r.ece:.4f}   sent to review {r.review_rate:.1%}   "
        + (
            f"auto-routed to the right queue {r.routed_accuracy:.2%}"
            if r.routed_accuracy == r.routed_accuracy
            else "nothing auto-routed"
        )
    )
    if r.open_set_review_rate is not None:
        out.print(f"non-ticket photos reaching a human: {r.open_set_review_rate:.1%}")
    t = Table(title="per class")
    for col in ("class", "precision", "recall", "F1", "support"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for c, s in r.per_class.items():
        t.add_row(c, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", str(s["support"]))
    out.print(t)
    cm = confusion_table(r.classes, r.confusion, headers=r.classes)
    if _natural_width(cm) > out.width:  # too wide with whole names: columns by number
        cm = confusion_table([f"{i} {c}" for i, c in enumerate(r.classes)], r.confusion, headers=None)
    out.print(cm)
    if pointing is not None:
        print_pointing(pointing)


def confusion_table(rows: list[str], confusion: list[list[int]], headers: list[str] | None) -> Table:
    """Rows: true class, columns: predicted, each headed by its whole class name (``headers``)
    or, where those do not fit, by the class's number, which the row labels give."""
    cm = Table(title="confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for name in headers or [str(i) for i in range(len(rows))]:
        cm.add_column(Text(name), justify="right", no_wrap=True)
    for i, (name, row) in enumerate(zip(rows, confusion, strict=True)):
        cells = [f"[bold]{v}[/bold]" if j == i else (str(v) if v else "[dim]0[/dim]") for j, v in enumerate(row)]
        cm.add_row(Text(name), *cells)
    return cm


def _natural_width(renderable) -> int:
    """Columns ``renderable`` takes when nothing limits it."""
    from rich.measure import Measurement

    return Measurement.get(out, out.options.update_width(10**6), renderable).maximum


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
    p("patch (a bright line in row 1):")
    p(_grid(r.patch))
    p("\nkernel (horizontal line: a bright middle row between darker rows):")
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
    clipped = [f"{v:+.4f}" for v in r.feature_map.ravel() if v < 0]
    p(
        "\n[bold]2. ReLU[/bold] max(0, x): negative evidence is dropped"
        + (f" ({', '.join(clipped)} -> 0)." if clipped else ".")
    )
    p(_grid(r.relu, "{:.4f}"))
    p(f"\n[bold]3. 2x2 max pooling[/bold]: the cell at {r.pool_winner} won -> {r.pooled:.4f}")
    p(_grid(r.relu, "{:.4f}", highlight=r.pool_winner))
    p("\n[bold]4. Linear classifier[/bold] W = [[1.5], [-1.2]], b = [0.1, -0.3] on the pooled value:")
    for name, w, b, z, pr in zip(("damage", "clean"), (1.5, -1.2), (0.1, -0.3), r.logits, r.probs, strict=True):
        p(f"  {name:>6}: {w:+.1f} * {r.pooled:.4f} {b:+.1f} = logit {z:+.4f}   softmax {pr:.4f}")
    p("\n[bold]5. Why pool[/bold]: shift the line down one pixel (paper enters at the top).")
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
    conv2 = r.receptive_field_pooled[-1]["receptive_field"]
    p(
        f"  with a 2x2 max pool (stride 2) between them, as in the triage CNN, conv2 sees {conv2}x{conv2}: "
        "after the pool each step of conv2 moves 2 input pixels (explain's receptive field column counts so)"
    )
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


# -- explain PHOTO ---------------------------------------------------------------------------

HALF_BLOCK = "\u2580"  # upper half block: foreground = upper pixel, background = lower pixel


def _half_blocks(rgb) -> list:
    """(H, W, 3) uint8 -> rich Text lines, two pixel rows per line (a last odd row on black)."""
    from rich.color import Color
    from rich.style import Style
    from rich.text import Text

    lines = []
    for r in range(0, rgb.shape[0], 2):
        line = Text()
        for c in range(rgb.shape[1]):
            top = Color.from_rgb(*(int(v) for v in rgb[r, c]))
            bottom = Color.from_rgb(*(int(v) for v in rgb[r + 1, c])) if r + 1 < rgb.shape[0] else None
            line.append(HALF_BLOCK, Style(color=top, bgcolor=bottom))
        lines.append(line)
    return lines


def _shrink(m, max_side: int):
    """Block-average a (h, w) map by the smallest integer factor that fits ``max_side``."""
    import numpy as np

    f = max(1, min(math.ceil(max(m.shape) / max_side), min(m.shape)))
    if f == 1:
        return m
    h, w = (m.shape[0] // f) * f, (m.shape[1] // f) * f
    return np.asarray(m[:h, :w], dtype=float).reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def _legend(vmin: float, vmax: float, width: int = 24):
    """'vmin ████ vmax' in the colormap's colours."""
    import numpy as np
    from rich.color import Color
    from rich.style import Style
    from rich.text import Text

    from tinytriage.plots import colormap

    t = Text(f"{vmin:.3g} ")
    for rgb in colormap(np.linspace(0, 1, width)):
        t.append(" ", Style(bgcolor=Color.from_rgb(*(int(v) for v in rgb))))
    t.append(f" {vmax:.3g}")
    return t


def _feature_tiles(f) -> None:
    """The chosen maps side by side in one shared colour range, labelled by channel."""
    import numpy as np
    from rich.text import Text

    from tinytriage.plots import colormap

    side = 64 if len(f.channels) == 1 else 24
    span = f.vmax - f.vmin
    tiles = [
        colormap((_shrink(m, side) - f.vmin) / span if span > 0 else np.zeros_like(_shrink(m, side))) for m in f.maps
    ]
    tw = tiles[0].shape[1]
    per_row = max(1, (out.width + 1) // (tw + 1))
    for start in range(0, len(tiles), per_row):
        group = list(zip(f.channels[start : start + per_row], tiles[start : start + per_row], strict=True))
        out.print("  ".join(f"ch {k}".ljust(tw - 1) for k, _ in group))
        blocks = [_half_blocks(t) for _, t in group]
        for i in range(len(blocks[0])):
            line = Text()
            for j, b in enumerate(blocks):
                if j:
                    line.append(" ")
                line.append_text(b[i])
            out.print(line)


def _n(v: float) -> str:
    """A number for a written-out formula: negatives in brackets, so '- (-0.5)' reads right."""
    return f"({v:.6f})" if v < 0 else f"{v:.6f}"


def print_explain(r: ExplainResult, *, as_json: bool) -> None:
    """The explanation of one photo, section by section, numbers checkable by hand."""
    if as_json:
        write_json_line(r.to_json())
        return
    draw = out.color_system is not None  # pictures need a colour terminal
    _explain_network(r)
    if r.features is not None:
        _explain_feature_maps(r.features, draw=draw)
    if r.cell is not None:
        _explain_cell(r.cell, backend=r.backend)
        _explain_pool(r.pool, r.cell, note=r.pool_note)
    if r.depthwise is not None:
        _explain_depthwise(r.depthwise, backend=r.backend)
        _explain_pointwise(r.pointwise, backend=r.backend)
    _explain_heatmap(r.heatmap, draw=draw)
    _explain_decision(r)


def _explain_network(r: ExplainResult) -> None:
    """The photo's way into the model, then 1: the layer table with receptive fields."""
    p = out.print
    g = r.geometry
    p(
        f"[bold]{r.photo}[/bold]: {r.photo_size[0]}x{r.photo_size[1]} photo -> {r.input_size}x{r.input_size} input "
        f"(scale {g.scale:.4g}, padding x {g.pad_x:g} y {g.pad_y:g}); model {r.model} ({r.arch}), engine {r.backend}"
    )

    s = r.summary
    t = Table(title=f"1. The network: {s.total_params:,} trained parameters (from its config)")
    for col in ("layer", "tensors", "output", "params", "receptive field", "jump"):
        t.add_column(col, justify="right" if col in ("params", "receptive field", "jump") else "left")
    for row in s.rows:
        rf = f"{row.receptive_field}" + (" (all)" if row.receptive_field >= s.input_size else "")
        t.add_row(row.name, row.tensors, "x".join(map(str, row.output_shape)), f"{row.params:,}", rf, str(row.jump))
    out.print(t)
    p("   receptive field r = r_prev + (k - 1) * jump_prev, jump = product of strides so far (input pixels)")


def _explain_feature_maps(f: FeatureMaps, *, draw: bool) -> None:
    """2: the maps of ``--layer``, as pictures on a colour terminal, else their range."""
    p = out.print
    C, h, w = f.shape
    which = f"channel {f.channels[0]}" if len(f.channels) == 1 else f"all {C} channels"
    p(f"\n[bold]2. Feature maps[/bold] of {f.layer}: {which}, {h}x{w} each")
    if draw:
        _feature_tiles(f)
        out.print(_legend(f.vmin, f.vmax))
    else:
        p(f"   values {f.vmin:.4g} .. {f.vmax:.4g} (pictures need a colour terminal; --save DIR writes a PNG)")


def _explain_cell(c: ConvCell, *, backend: str) -> None:
    """3: one cell of the conv block by hand (window * kernel per input channel, their sum,
    BatchNorm, ReLU), checked against what the engine computed there."""
    p = out.print
    x0, y0, x1, y1 = c.input_box
    px0, py0, px1, py1 = c.photo_box
    p(
        f"\n[bold]3. One cell by hand[/bold]: {c.conv} channel {c.channel}, cell (row {c.row}, col {c.col}). "
        f"It sees {c.receptive_field}x{c.receptive_field} input pixels: x {x0}-{x1 - 1}, y {y0}-{y1 - 1} "
        f"of the input, x {px0}-{px1 - 1}, y {py0}-{py1 - 1} of the photo."
    )
    source = "the normalised photo" if c.source == "input" else c.source
    n_in = c.window.shape[0]
    full = min(n_in, 3)
    names = ("R", "G", "B") if c.source == "input" and n_in == 3 else None
    p(f"   {c.conv} reads {source} ({n_in} channels); per input channel: window, kernel, window * kernel")
    for k in range(full):
        label = f"{k} ({names[k]})" if names else str(k)
        p(f"\n   input channel {label}: products sum to {c.channel_sums[k]:+.5f}")
        rows = zip(_grid(c.window[k], "{:+.3f}").split("\n"), _grid(c.kernel[k], "{:+.3f}").split("\n"),
                   _grid(c.products[k], "{:+.4f}").split("\n"), strict=True)  # fmt: skip
        for a, b, d in rows:
            p(f"   {a}   |{b}   |{d}")
    if n_in > full:
        rest = ", ".join(f"{k}: {v:+.4f}" for k, v in enumerate(c.channel_sums) if k >= full)
        n_k = c.kernel.shape[1] * c.kernel.shape[2]
        p(f"\n   input channels {full}-{n_in - 1} (sums of their {n_k} products): {rest}")
    p(
        f"\n   conv: sum of all {c.products.size} products = [bold]{c.conv_sum:+.6f}[/bold] "
        "(no bias: the conv has bias=False, BatchNorm's beta adds it)"
    )
    p(
        f"   {c.bn} (eval, running statistics): x_hat = (s - mean) / sqrt(var + eps) = "
        f"({_n(c.conv_sum)} - {_n(c.bn_mean)}) / sqrt({_n(c.bn_var)} + {c.bn_eps:g}) = {_n(c.bn_x_hat)}"
    )
    p(
        f"   {' ' * len(c.bn)}  y = x_hat * gamma + beta = {_n(c.bn_x_hat)} * {_n(c.bn_gamma)} + {_n(c.bn_beta)} "
        f"= [bold]{c.bn_out:.6f}[/bold]"
    )
    p(f"   {c.relu}: max({_n(c.bn_out)}, 0) = [bold]{c.relu_out:.6f}[/bold]")
    mark = "[green]agree[/green]" if c.agrees else "[red]DISAGREE[/red]"
    e = c.engine
    p(
        f"   the {backend} engine at this cell: conv {e['conv']:+.6f}, bn {e['bn']:+.6f}, relu {e['relu']:.6f}; "
        f"max |diff| {c.max_abs_diff:.1e}: {mark}"
    )


def _explain_pool(pc: PoolCell | None, c: ConvCell, *, note: str | None) -> None:
    """3, continued: the pooling window the hand-computed cell falls in, and its winner
    (``note`` says why there is none to show)."""
    p = out.print
    if pc is None:
        if note:
            p(f"\n   {note}")
        return
    k = pc.window.shape[0]
    at = (pc.winner[0] - pc.origin[0], pc.winner[1] - pc.origin[1])
    p(
        f"\n   {pc.pool}: window rows {pc.origin[0]}-{pc.origin[0] + k - 1}, cols {pc.origin[1]}-{pc.origin[1] + k - 1} "
        f"of {c.relu} channel {c.channel} -> {pc.pool} cell ({pc.row}, {pc.col})"
    )
    for line in _grid(pc.window, "{:.4f}", highlight=at).split("\n"):
        p(f"   {line}")
    who = "the hand-computed cell won" if pc.cell_won else f"cell {pc.winner} won, not ({c.row}, {c.col})"
    p(f"   winner {pc.winner} = {pc.value:.6f} (engine {pc.engine_value:.6f}): {who}")


_BLOCKS = {"ds": "depthwise separable", "ir": "inverted residual"}


def _explain_depthwise(c: DepthwiseCell, *, backend: str) -> None:
    """3 for mobile blocks: one cell of the block's depthwise convolution by hand (ONE
    channel's window times its kernel, summed, BatchNorm, ReLU6), checked against the engine."""
    p = out.print
    x0, y0, x1, y1 = c.input_box
    px0, py0, px1, py1 = c.photo_box
    (pt, pb), (pl, pr) = c.pads
    p(
        f"\n[bold]3. One cell by hand[/bold], in {c.block} ({_BLOCKS.get(c.block_kind, c.block_kind)}): "
        f"{c.conv} channel {c.channel}, cell (row {c.row}, col {c.col}). It sees {c.receptive_field}x"
        f"{c.receptive_field} input pixels: x {x0}-{x1 - 1}, y {y0}-{y1 - 1} of the input, "
        f"x {px0}-{px1 - 1}, y {py0}-{py1 - 1} of the photo."
    )
    k = c.kernel_size
    p(
        f"   depthwise {k}x{k}, stride {c.stride}: channel {c.channel} of {c.source} alone, times its own kernel "
        f'("same" padding: {pt} row(s) above, {pb} below, {pl} column(s) left, {pr} right)'
    )
    p("   window, kernel, window * kernel")
    rows = zip(_grid(c.window, "{:+.3f}").split("\n"), _grid(c.kernel, "{:+.3f}").split("\n"),
               _grid(c.products, "{:+.4f}").split("\n"), strict=True)  # fmt: skip
    for a, b, d in rows:
        p(f"   {a}   |{b}   |{d}")
    p(
        f"\n   conv: sum of the {c.products.size} products = [bold]{c.conv_sum:+.6f}[/bold] "
        "(no bias: the conv has bias=False, BatchNorm's beta adds it)"
    )
    _explain_bn(c.bn, c.conv_sum, c)
    p(f"   {c.act}: ReLU6 = min(max({_n(c.bn_out)}, 0), 6) = [bold]{c.act_out:.6f}[/bold]")
    mark = "[green]agree[/green]" if c.agrees else "[red]DISAGREE[/red]"
    e = c.engine
    p(
        f"   the {backend} engine at this cell: conv {e['conv']:+.6f}, bn {e['bn']:+.6f}, act {e['act']:.6f}; "
        f"max |diff| {c.max_abs_diff:.1e}: {mark}"
    )


def _explain_bn(name: str, s: float, c) -> None:
    """BatchNorm in eval mode, written out with the running statistics."""
    out.print(
        f"   {name} (eval, running statistics): x_hat = (s - mean) / sqrt(var + eps) = "
        f"({_n(s)} - {_n(c.bn_mean)}) / sqrt({_n(c.bn_var)} + {c.bn_eps:g}) = {_n(c.bn_x_hat)}"
    )
    out.print(
        f"   {' ' * len(name)}  y = x_hat * gamma + beta = {_n(c.bn_x_hat)} * {_n(c.bn_gamma)} + {_n(c.bn_beta)} "
        f"= [bold]{c.bn_out:.6f}[/bold]"
    )


POINTWISE_TERMS = 6  # the dot product's largest terms shown (the JSON has them all)


def _explain_pointwise(c: PointwiseCell, *, backend: str) -> None:
    """3, continued: at the same pixel, one output of the 1x1 convolution after the
    depthwise one (a dot product over channels, BatchNorm, the residual), checked."""
    import numpy as np

    p = out.print
    n = len(c.inputs)
    p(
        f"\n   pointwise 1x1: {c.conv} output channel {c.channel} at (row {c.row}, col {c.col}): a dot product "
        f"over the {n} channels of {c.source} at this one pixel"
    )
    top = [int(i) for i in np.argsort(-np.abs(c.products))[:POINTWISE_TERMS]]
    if c.depthwise_channel not in top:
        top.append(c.depthwise_channel)
    for i in top:
        mine = "   <- the depthwise cell above" if i == c.depthwise_channel else ""
        p(f"   channel {i:>4}: {c.inputs[i]:+.6f} * {c.weights[i]:+.6f} = {c.products[i]:+.6f}{mine}")
    if n > len(top):
        p(f"   ... and {n - len(top)} more terms")
    p(f"   conv: sum of all {n} products = [bold]{c.conv_sum:+.6f}[/bold] (no bias)")
    _explain_bn(c.bn, c.conv_sum, c)
    if c.residual is None:
        p("   no activation after it (the linear bottleneck) and no residual: this is the block's output")
    else:
        p(
            f"   no activation (the linear bottleneck); the residual adds the block's input: "
            f"{_n(c.bn_out)} + {_n(c.residual)} = [bold]{c.block_out:.6f}[/bold]"
        )
    mark = "[green]agree[/green]" if c.agrees else "[red]DISAGREE[/red]"
    e = c.engine
    p(
        f"   the {backend} engine at this cell: conv {e['conv']:+.6f}, bn {e['bn']:+.6f}, block {e['block']:+.6f}; "
        f"max |diff| {c.max_abs_diff:.1e}: {mark}"
    )


def _explain_heatmap(hm: Heatmap, *, draw: bool) -> None:
    """4: where the model looked: Grad-CAM (conv nets) or attention rollout (the ViT)."""
    import numpy as np

    p = out.print
    wh = hm.where
    if hm.method == "grad-cam":
        K = len(hm.alpha)
        p(
            f"\n[bold]4. Grad-CAM[/bold] for [bold]{hm.class_name}[/bold] (logit {hm.score:+.4f}) on {hm.layer}, "
            f"{K} channels of {hm.cam.shape[0]}x{hm.cam.shape[1]}: alpha_k = mean of d y_c / d A_k, map = ReLU(sum alpha_k A_k)"
        )
        top = np.argsort(-np.asarray(hm.alpha))[:5]
        p("   channels that count most: " + ", ".join(f"{int(k)} ({hm.alpha[k]:+.2e})" for k in top))
    else:
        p(
            f"\n[bold]4. Attention rollout[/bold] over {hm.layer} (class-agnostic): the class token's share "
            f"from each of the {hm.cam.shape[0]}x{hm.cam.shape[1]} patches"
        )
    if draw:
        for line in _half_blocks(hm.preview):
            out.print(line)
    if wh.peak is not None:  # (an empty map is explained in the notes)
        (x, y), (u, v) = wh.peak, wh.peak_input
        p(f"   peak: photo pixel (x {x}, y {y}), model-input pixel (x {u}, y {v})")


DECISION_ROWS = 10  # classes listed in the decision, most probable first


def _explain_decision(r: ExplainResult) -> None:
    """5: the probabilities and the route; then the notes and the files written."""
    p = out.print
    d = r.decision
    p(f"\n[bold]5. Decision[/bold]: {d.label} ({d.confidence:.3f})")
    ranked = sorted(d.probabilities.items(), key=lambda kv: -kv[1])
    for name, prob in ranked[:DECISION_ROWS]:
        bar = "#" * round(prob * 30)
        p(f"   {name:>14} {prob:.4f} {bar}")
    if len(ranked) > DECISION_ROWS:  # an ImageNet model: 1000 classes
        rest = ranked[DECISION_ROWS:]
        p(f"   ... and {len(rest)} more classes, {sum(q for _, q in rest):.4f} in all")
    route = f"[yellow]{d.route}[/yellow] ({d.review_reason})" if d.needs_review else f"[green]{d.route}[/green]"
    p(f"   route: {route}")
    for n in r.notes:
        p(f"[yellow]note:[/yellow] {n}")
    for path in r.saved:
        p(f"saved {path}")


def print_pointing(pg) -> None:
    """The pointing game's score, with its baselines."""
    if pg.total == 0:
        out.print(f"pointing game: no {pg.class_name} photo with a damage box ({len(pg.skipped)} skipped)")
        return
    out.print(
        f"pointing game ({pg.method} for {pg.class_name}, peak must lie inside the damage box, no tolerance): "
        f"[bold]{pg.hits}/{pg.total} = {pg.rate:.1%}[/bold];  photo centre {pg.center_hits}/{pg.total} = "
        f"{pg.center_rate:.1%};  a random point {pg.box_fraction:.1%}"
        + (f";  {len(pg.skipped)} photo(s) without a box skipped" if pg.skipped else "")
    )


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
        title=f"backward: loss {bw['loss'][0]:.6f} ({a}) vs {bw['loss'][1]:.6f} ({b}), rel. diff {bw['loss_rel']:.1e} "
        f"(tolerance {tol['loss_rel']:.0e}) {mark(bw['loss_rel'], 'loss_rel')}"
    )
    for col in ("parameter", "max |diff|", "max rel. diff", "tolerance", ""):
        t.add_column(col)
    for k, d in bw["grads"].items():
        t.add_row(
            k,
            f"{d['max_abs']:.2e}",
            f"{d['max_rel']:.2e}",
            f"rel {tol['grad_rel']:.0e}",
            mark(d["max_rel"], "grad_rel"),
        )
    out.print(t)

    tr = r.training
    t = Table(title=f"training: {tr['steps']} SGD steps, same weights and batches (lr {tr['lr']})")
    for col in ("step", f"loss ({a})", f"loss ({b})", "rel. diff", "tolerance", ""):
        t.add_column(col)
    for i, (p, q) in enumerate(zip(tr["loss"][a], tr["loss"][b], strict=True)):
        rel = abs(p - q) / max(abs(q), 1e-12)
        t.add_row(
            str(i + 1), f"{p:.6f}", f"{q:.6f}", f"{rel:.2e}", f"rel {tol['train_loss_rel']:.0e}",
            mark(rel, "train_loss_rel"),
        )  # fmt: skip
    out.print(t)
    out.print(
        f"final weights: max rel. diff {tr['weight_max_rel']:.2e} ({tr['worst_weight']}), tolerance "
        f"{tol['train_weight_rel']:.0e} {mark(tr['weight_max_rel'], 'train_weight_rel')}"
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


# -- lesson ------------------------------------------------------------------------------------


class LessonProgress:
    """One line per generated set and per trained model, and a step bar for the current run."""

    def __init__(self, quiet: bool = False) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps  loss {task.fields[loss]:.3f}"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=quiet or not err.is_terminal,  # into a log: the lines alone, nothing animated
        )
        self.quiet = quiet
        self.task = None
        self.run: lesson.RunStart | None = None  # the run now training

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def _print(self, text: str) -> None:
        if not self.quiet:
            self.progress.console.print(text)

    def __call__(self, e: lesson.LessonEvent) -> None:
        from tinytriage.explain import lesson
        from tinytriage.training import events

        match e:
            case lesson.Generate():
                self._print(f"generating {e.per_class} photos per class ({e.classes} classes) into {e.folder} ...")
            case lesson.Generated():
                self._print(f"  {e.n_photos} photos in {e.seconds:.0f} s")
            case lesson.RunStart():
                self.run = e
                desc = f"[{e.index}/{e.total}] {lesson.MODELS[e.model].label} on {e.per_class}/class"
                if self.task is None:
                    self.task = self.progress.add_task(desc, total=e.steps, loss=float("nan"))
                self.progress.reset(self.task, total=e.steps, description=desc, loss=float("nan"))
            case events.Step() if self.task is not None:
                done = (e.epoch - 1) * e.steps + e.step
                self.progress.update(self.task, completed=done, loss=e.loss)
            case lesson.RunDone(run=r):
                index, total = (self.run.index, self.run.total) if self.run else ("?", "?")
                self._print(
                    f"[{index}/{total}] {lesson.MODELS[r.model].label:>17} on "
                    f"{r.per_class:>5}/class: test acc {r.test_acc:.3f}  ({r.steps} steps, "
                    f"{r.epochs} epochs, {r.train_seconds:.0f} s)"
                )
            case lesson.Resumed():
                self._print(f"continuing the lesson in {e.folder}: {e.runs} run(s) finished before are kept")
            case lesson.TranslationStart():
                self._print("translation test ...")


_ARCH_NAMES = {"cnn": "CNN", "vit": "ViT"}


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f}"


def print_lesson(r, *, as_json: bool) -> None:
    """The size sweep as one table (rows: training-set sizes; the models side by side, test
    accuracy and training time), the models' sizes, then the translation test."""
    from tinytriage.explain.lesson import MODELS

    if as_json:
        write_json_line(r.to_json())
        return
    runs = {(x.model, x.per_class): x for x in r.runs}
    names = [m for m in MODELS if any(x.model == m for x in r.runs)]
    budget = f"{r.config.epochs} epoch(s)" if r.budget == "epochs" else f"about {r.config.steps} steps"
    t = Table(
        title=f"test accuracy on {r.n_test} photos (training time): {r.config.backend} engine, "
        f"{budget} of {r.config.batch_size} photos per run"
    )
    t.add_column("photos/class", justify="right")
    t.add_column("steps", justify="right")
    for name in names:
        t.add_column(MODELS[name].label, justify="right")
    for n in sorted({x.per_class for x in r.runs}):
        row = [runs.get((name, n)) for name in names]
        best = max((x.test_acc for x in row if x is not None), default=math.nan)
        cells = [
            "-"
            if x is None
            else (f"[bold]{x.test_acc:.3f}[/bold]" if x.test_acc == best else f"{x.test_acc:.3f}")
            + ("" if x is None else f" ({x.train_seconds:.0f} s)")
            for x in row
        ]
        steps = next((str(x.steps) for x in row if x is not None), "-")
        t.add_row(str(n), steps, *cells)
    out.print(t)
    for name in names:
        x = next(x for x in r.runs if x.model == name)
        out.print(f"{MODELS[name].label}: {_si(x.params)} parameters, {_si(x.macs)} multiply-adds per photo")
    if r.plot_path:
        out.print(f"plot: {r.plot_path}   report: {r.report_path}")
    if r.translation is not None:
        out.print()
        print_translation(r.translation, as_json=False)


def print_translation(r, *, as_json: bool) -> None:
    """Equivariance error per layer and shift: ~0 means the map simply moved with the photo."""
    if as_json:
        write_json_line(r.to_json())
        return
    t = Table(title=f"translation test: shift {r.n_photos} photos right by k pixels; does each layer's map just shift?")
    for col, justify in (("model", "left"), ("layer", "left"), ("stride", "right"), ("k px", "right"),
                         ("k / stride", "right"), ("shift compared", "right"), ("rel. error", "right"), ("cells", "right")):  # fmt: skip
        t.add_column(col, justify=justify)
    last_k = None
    for row in r.rows:
        if last_k is not None and row.shift_px != last_k and row.arch == "cnn":
            t.add_section()
        last_k = row.shift_px
        err_ = "-" if row.rel_error != row.rel_error else f"{row.rel_error:.1e}"
        colour = "green" if row.exact and row.rel_error < 1e-4 else "yellow" if row.rel_error < 0.1 else "red"
        t.add_row(
            _ARCH_NAMES[row.arch], row.layer, str(row.stride), str(row.shift_px),
            f"{row.shift_cells:.3g}" + ("" if row.exact else " (not whole)"),
            (f"{row.compared_shift} cell" + ("s" if row.compared_shift != 1 else "")) if row.cells else "-",
            f"[{colour}]{err_}[/{colour}]", str(row.cells),
        )  # fmt: skip
    out.print(t)
    out.print(
        "rel. error = ||F(shifted photo) - shifted F(photo)|| / ||shifted F(photo)|| over cells clear of every "
        "border; 0 = equivariant; '-' = no cell clear of the borders. Models: "
        + ", ".join(f"{_ARCH_NAMES[k]} {v}" for k, v in r.models.items())
    )
