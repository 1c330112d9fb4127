"""``superalign report RUN_DIR``: one self-contained HTML page built from run folders alone.

The page reads nothing but the folders under ``RUN_DIR`` (``config.json``, ``summary.json``,
``metrics.jsonl`` and a few documented artifacts) and embeds everything it shows: plots are drawn
with matplotlib into base64 PNGs, a stage's own PNGs are inlined the same way, and there are no
external URLs, fonts or scripts. Each section is one small function ``(runs) -> html | None`` in
:data:`SECTIONS`, rendered only when runs of its stages exist; every run, known stage or not, is
listed in the run table and has its config and summary under "Configs".

A short inline script at the end of the page checks that every image decoded and that no script
error occurred, and records the result on ``#report-check`` (``data-images``, ``data-broken``,
``data-errors``); a broken plot is also announced on the page.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from superalign import __version__
from superalign.runs import atomic_write_text, lookup, read_metrics

# --- run folders --------------------------------------------------------------------------------


@dataclass
class RunFolder:
    """One stage run folder as the report sees it."""

    dir: Path
    stage: str
    config: dict[str, Any]
    """The run's ``config.json`` (``stage``, ``config``, ``inputs``...)."""
    summary: dict[str, Any] | None
    """``summary.json``, or None while the run is unfinished."""

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def finished(self) -> bool:
        return self.summary is not None

    @property
    def params(self) -> dict[str, Any]:
        """The stage's own config fields."""
        return self.config.get("config", {})

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.dir)

    def artifact(self, name: str) -> Any | None:
        """A JSON artifact of the run (``verdict.json``...), or None when absent or unreadable."""
        return _read_json(self.dir / name)


def load_runs(root: str | Path) -> list[RunFolder]:
    """Every run folder under ``root`` (or ``root`` itself when it is one), by stage then name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such runs folder: {root}")
    dirs = [root] if (root / "config.json").is_file() else sorted(root.iterdir())
    runs = []
    for d in dirs:
        config = (
            _read_json(d / "config.json") if d.is_dir() and not d.name.startswith(".") else None
        )
        if not isinstance(config, dict):
            continue
        stage = config.get("stage") or d.name.rsplit("-", 1)[0]
        runs.append(RunFolder(d, stage, config, _read_json(d / "summary.json")))
    return sorted(runs, key=lambda r: (r.stage, r.name))


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())  # accepts the NaN some summaries hold
    except (OSError, json.JSONDecodeError):
        return None


def of_stage(runs: Iterable[RunFolder], *stages: str) -> list[RunFolder]:
    """The finished runs of the given stages."""
    return [r for r in runs if r.stage in stages and r.finished]


# --- small html helpers -------------------------------------------------------------------------


def esc(x: Any) -> str:
    return html.escape(str(x))


def fmt(v: Any) -> str:
    """A number for a table cell: 4 significant digits, n/a for NaN, a dash for None."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if v != 0 and abs(v) < 1e-3:
            return f"{v:.2e}"
        return f"{v:.4g}"
    return esc(v)


def table(header: list[str], rows: Iterable[Iterable[Any]], cls: str = "") -> str:
    """An HTML table; cells that are not already ``Html`` are formatted with :func:`fmt`."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if isinstance(c, Html) else fmt(c)}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class Html(str):
    """A string that is already HTML (not escaped again by :func:`table`)."""


def details(title: str, body: str) -> str:
    return f"<details><summary>{esc(title)}</summary>{body}</details>"


def pre_json(obj: Any) -> str:
    return f"<pre>{esc(json.dumps(obj, indent=2, sort_keys=True, default=str))}</pre>"


def _inline_md(text: str) -> str:
    text = esc(text.strip())
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def markdown(text: str) -> str:
    """The little Markdown stages write (tables, headings, paragraphs) as HTML."""
    out: list[str] = []
    rows: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        s = line.strip()
        if s.startswith("|"):
            if not re.fullmatch(r"[|:\-\s]+", s):  # skip the |---| separator row
                rows.append([c.strip() for c in s.strip("|").split("|")])
            continue
        if rows:
            head = "".join(f"<th>{_inline_md(c)}</th>" for c in rows[0])
            body = "".join(
                "<tr>" + "".join(f"<td>{_inline_md(c)}</td>" for c in r) + "</tr>" for r in rows[1:]
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            rows = []
        if s.startswith("#"):
            out.append(f"<h4>{_inline_md(s.lstrip('#'))}</h4>")
        elif s:
            out.append(f"<p>{_inline_md(s)}</p>")
    return "\n".join(out)


# --- images -------------------------------------------------------------------------------------


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def figure(draw: Callable[[Any], None], alt: str, size: tuple[float, float] = (9, 4)) -> str:
    """Draw with ``draw(fig)`` on a fresh matplotlib Figure (Agg, no pyplot state); an <img>."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return _img(buf.getvalue(), alt)


def artifact_image(run: RunFolder, name: str | None) -> str:
    """A stage's own PNG, inlined, or "" when it has none."""
    path = run.dir / name if name else None
    if path is None or not path.is_file() or path.suffix.lower() != ".png":
        return ""
    caption = f"<figcaption>{esc(run.name)}/{esc(name)}</figcaption>"
    return f"<figure>{_img(path.read_bytes(), f'{run.name}/{name}')}{caption}</figure>"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# --- sections -----------------------------------------------------------------------------------

HEADLINES: dict[str, list[str]] = {
    "pretrain": ["eval/accuracy/d1", "eval/accuracy/d2", "loss/train_final"],
    "rl": ["reward/gold_final", "reward/proxy_final", "kl/ref_final"],
    "best_of_n": ["gold_first", "gold_peak", "gold_final", "n_at_gold_peak"],
    "gate": ["verdict", "kl/ref", "kl/ref_high"],
    "weak_to_strong": ["pgr_mean/xent", "pgr_mean/conf"],
    "easy_to_hard": ["policy.gap_recovered.value", "reward_model_pairs.gap_recovered.value"],
    "interp": ["sae.fvu", "sae.l0", "autointerp.score_mean"],
    "oversight": ["n", "difficulty"],
    "digits_debate": ["n_test_images", "ks"],
}
"""Summary keys (dotted paths into nested dicts) shown for a stage in the run table; other stages
show their first four namespaced numbers."""


def headline(run: RunFolder) -> str:
    """A few ``key value`` pairs from a finished run's summary."""
    s = run.summary or {}
    keys = HEADLINES.get(run.stage)
    if keys is None:
        scalar = [
            k for k, v in s.items() if isinstance(v, (int, float, str)) and k != "wall_seconds"
        ]
        keys = ([k for k in scalar if "/" in k] or scalar)[:4]
    parts = [(k, lookup(s, k, None)) for k in keys]
    return ", ".join(f"{k} {fmt(v)}" for k, v in parts if v is not None)


def runs_section(runs: list[RunFolder]) -> str | None:
    rows = [
        (
            r.stage,
            Html(f'<a href="#cfg-{esc(r.name)}">{esc(r.name)}</a>'),
            "yes" if r.finished else "no",
            headline(r),
            (r.summary or {}).get("wall_seconds"),
        )
        for r in runs
    ]
    return table(["stage", "folder", "finished", "headline", "wall s"], rows)


class Curve(NamedTuple):
    """One optimisation run as gold and proxy reward against KL to the reference (nats)."""

    label: str
    source: str
    kl: list[float]
    gold: list[float]
    proxy: list[float | None]


def overoptimization_curves(runs: list[RunFolder]) -> list[Curve]:
    """Curves from ``overoptimization`` summaries, then from ``rl`` metrics (``reward/gold``,
    ``reward/proxy``, ``kl/ref``) and ``best_of_n`` tables that no overoptimization run covers."""
    curves, covered = [], set()
    for run in of_stage(runs, "overoptimization"):
        for c in run.summary.get("runs", []):
            pts = c.get("points", [])
            covered.add(Path(str(c.get("dir"))).name)  # folder names hold the config hash
            kl = [p.get("kl") for p in pts]
            curves.append(
                Curve(
                    c.get("label", "?"),
                    run.name,
                    kl,
                    [p.get("gold") for p in pts],
                    [p.get("proxy") for p in pts],
                )
            )
    for run in [r for r in runs if r.stage == "rl" and r.name not in covered]:
        rows = [m for m in run.metrics() if _finite(m.get("reward/gold")) and "kl/ref" in m]
        if rows:
            over = run.params.get("overseer", "?")
            label = f"rl vs {Path(str(over)).name} ({run.name})"
            kl = [m["kl/ref"] for m in rows]
            gold = [m["reward/gold"] for m in rows]
            curves.append(Curve(label, run.name, kl, gold, [m.get("reward/proxy") for m in rows]))
    for run in [r for r in of_stage(runs, "best_of_n") if r.name not in covered]:
        rows = run.summary.get("table", [])
        kl = [m.get("kl/bound", m.get("kl/ref")) for m in rows]
        gold = [m.get("reward/gold") for m in rows]
        label = f"best-of-n vs {Path(str(run.summary.get('overseer', '?'))).name} ({run.name})"
        curves.append(Curve(label, run.name, kl, gold, [m.get("reward/proxy") for m in rows]))
    return [c for c in curves if c.kl and all(_finite(k) for k in c.kl)]


def _draw_curves(curves: list[Curve]) -> Callable[[Any], None]:
    def draw(fig: Any) -> None:
        ax_gold, ax_proxy = fig.subplots(1, 2, sharex=True)
        for i, c in enumerate(curves):
            x = [math.sqrt(max(k, 0.0)) for k in c.kl]
            color = f"C{i % 10}"
            style = "-" if i < 10 else "--"
            ax_gold.plot(x, c.gold, style, marker="o", ms=3, color=color, label=c.label)
            pairs = [(a, p) for a, p in zip(x, c.proxy) if _finite(p)]
            if pairs:
                ax_proxy.plot(*zip(*pairs), style, marker="o", ms=3, color=color)
        for ax, what in ((ax_gold, "gold reward"), (ax_proxy, "proxy reward (overseer score)")):
            ax.set_xlabel("sqrt KL(policy || reference)  [sqrt nats]")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
        fig.legend(loc="outside lower center", ncols=2, fontsize=7, frameon=False)

    return draw


def overoptimization_section(runs: list[RunFolder]) -> str | None:
    curves = overoptimization_curves(runs)
    if not curves:
        return None
    height = 4.5 + 0.16 * math.ceil(len(curves) / 2)
    rows = []
    for c in curves:
        peak = max(range(len(c.gold)), key=lambda i: c.gold[i] if _finite(c.gold[i]) else -1e9)
        proxy = [p for p in c.proxy if _finite(p)]
        rows.append(
            (
                c.label,
                len(c.kl),
                c.gold[0],
                c.gold[peak],
                math.sqrt(max(c.kl[peak], 0.0)),
                c.gold[-1],
                math.sqrt(max(c.kl[-1], 0.0)),
                proxy[0] if proxy else None,
                proxy[-1] if proxy else None,
            )
        )
    header = ["run", "points", "gold start", "gold peak", "sqrt KL at peak", "gold end"]
    header += ["sqrt KL at end", "proxy start", "proxy end"]
    intro = (
        "<p>Gold and proxy reward against the square root of KL(policy || reference), as in "
        "Gao et al. (2022): a proxy that keeps rising while gold falls is reward hacking.</p>"
    )
    return (
        intro
        + figure(_draw_curves(curves), "overoptimization curves", (10, height))
        + table(header, rows)
    )


def sandwiching_section(runs: list[RunFolder]) -> str | None:
    parts = []
    for run in of_stage(runs, "oversight"):
        s = run.summary
        text = s.get("table") if isinstance(s.get("table"), str) else None
        if text is None and (run.dir / "table.md").is_file():
            text = (run.dir / "table.md").read_text()
        sub = f"difficulty {s.get('difficulty', '?')}, {s.get('n', '?')} solutions per source"
        parts.append(f"<h3>{esc(run.name)}</h3><p>Overseer accuracy against gold ({esc(sub)}).</p>")
        parts.append(markdown(text or "") + artifact_image(run, s.get("plot")))
    for run in of_stage(runs, "digits_debate"):
        s = run.summary
        parts.append(f"<h3>{esc(run.name)}: debate on digits</h3>")
        parts.append(markdown(s.get("table_markdown", "")) + artifact_image(run, "debate.png"))
    return "\n".join(parts) or None


class Bar(NamedTuple):
    label: str
    value: float | None
    low: float | None
    high: float | None
    note: str | None = None
    """Why ``value`` is missing (a gap-recovered ratio over an unresolved gap)."""


def pgr_bars(runs: list[RunFolder]) -> list[Bar]:
    """Performance gap recovered with its 95% CI, from weak_to_strong and easy_to_hard runs."""
    bars = []
    for run in of_stage(runs, "weak_to_strong"):
        for r in run.summary.get("table", []):
            label = (
                f"w2s {r.get('dataset')}: {r.get('weak')} -> {r.get('strong')} ({r.get('loss')})"
            )
            bars.append(
                Bar(label, r.get("pgr"), r.get("pgr_low"), r.get("pgr_high"), r.get("pgr_reason"))
            )
    for run in of_stage(runs, "easy_to_hard"):
        s = run.summary
        for key, what in (
            ("policy.gap_recovered", "policy"),
            ("reward_model_pairs.gap_recovered", "reward model"),
            ("best_of_n.gap_recovered_at_max_n", "best-of-n"),
        ):
            g = lookup(s, key, None)
            if isinstance(g, dict):
                label = f"e2h {s.get('easy')} -> {s.get('hard')}: {what} ({run.name})"
                bars.append(
                    Bar(label, g.get("value"), g.get("low"), g.get("high"), g.get("reason"))
                )
    return bars


def _draw_bars(bars: list[Bar], xlabel: str, xlim: tuple[float, float] | None) -> Callable:
    def draw(fig: Any) -> None:
        ax = fig.subplots()
        ys = list(range(len(bars)))[::-1]
        for y, b in zip(ys, bars):
            if not _finite(b.value):
                text = " not reported (see the table)" if b.note else " n/a"
                ax.text(0, y, text, va="center", fontsize=8, color="gray")
                continue
            ax.barh(y, b.value, color="C0" if b.value >= 0 else "C3", height=0.6)
            if _finite(b.low) and _finite(b.high):
                err = [[max(b.value - b.low, 0)], [max(b.high - b.value, 0)]]
                ax.errorbar(b.value, y, xerr=err, color="black", capsize=3, lw=1)
        ax.set_yticks(ys, [b.label for b in bars], fontsize=8)
        ax.axvline(0, color="black", lw=0.8)
        if xlim:
            ax.set_xlim(*xlim)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)

    return draw


def pgr_section(runs: list[RunFolder]) -> str | None:
    bars = pgr_bars(runs)
    if not bars:
        return None
    values = [v for b in bars for v in (b.value, b.low, b.high) if _finite(v)]
    lo, hi = min([0.0, *values]), max([1.0, *values])
    lim = (max(lo, -3.0) - 0.1, min(hi, 3.0) + 0.1)  # very wide CIs are clipped at +-3
    fig = figure(
        _draw_bars(bars, "PGR = (student - weak) / (ceiling - weak), 95% CI", lim),
        "performance gap recovered",
        (10, 1.2 + 0.32 * len(bars)),
    )
    parts = ["<p>1 means the student recovered the whole gap to the gold ceiling; 0 none.</p>", fig]
    unreported = "".join(f"<li>{esc(b.label)}: {esc(b.note)}</li>" for b in bars if b.note)
    if unreported:
        parts.append(f"<p>Not reported (the gap is not resolved):</p><ul>{unreported}</ul>")
    rows = [(b.label, b.value, b.low, b.high, b.note or "") for b in bars]
    header = ["comparison", "PGR", "95% low", "95% high", "not reported because"]
    parts.append(details("PGR values", table(header, rows)))
    for run in of_stage(runs, "weak_to_strong"):
        md = run.dir / "pgr_table.md"
        if md.is_file():
            parts.append(f"<h3>{esc(run.name)}</h3>" + markdown(md.read_text()))
    for run in of_stage(runs, "easy_to_hard"):
        if isinstance(run.summary.get("table"), str):
            parts.append(f"<h3>{esc(run.name)}</h3>" + markdown(run.summary["table"]))
    return "\n".join(parts)


def redteam_section(runs: list[RunFolder]) -> str | None:
    parts = []
    for run in of_stage(runs, "redteam"):
        s = run.summary
        names = sorted({k.split("/")[1] for k in s if re.fullmatch(r"attack/[^/]+/asr", k)})
        if names:
            bars = [Bar(n, s[f"attack/{n}/asr"], None, None) for n in names]
            alt = f"red-team ASR {run.name}"
            label = "attack success rate (share of test cases that elicit the behaviour)"
            fig = figure(_draw_bars(bars, label, (0, 1.05)), alt, (8, 1.2 + 0.35 * len(bars)))
            parts.append(f"<h3>{esc(run.name)}: {esc(s.get('behaviour', ''))}</h3>{fig}")
        report = run.dir / str(s.get("report", "report.md"))
        if report.is_file():
            parts.append(markdown(report.read_text()))
    return "\n".join(parts) or None


def _draw_probe_layers(probes: dict[str, dict]) -> Callable:
    def draw(fig: Any) -> None:
        ax = fig.subplots()
        for name, p in probes.items():
            by_layer = p.get("auroc_by_layer") or {}
            layers = sorted(by_layer, key=int)
            ax.plot([int(k) for k in layers], [by_layer[k] for k in layers], marker="o", label=name)
        ax.axhline(0.5, color="gray", ls=":", lw=1, label="chance")
        ax.set_xlabel("layer")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("cross-validated AUROC (choosing the layer)")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    return draw


def probes_section(runs: list[RunFolder]) -> str | None:
    parts = []
    for run in of_stage(runs, "interp"):
        probes = run.summary.get("probes") or {}
        if not probes:
            continue
        rows = [
            (
                n,
                p.get("layer"),
                p.get("auroc"),
                p.get("auroc_low"),
                p.get("auroc_high"),
                p.get("n_texts"),
                p.get("n_groups"),
                p.get("n"),
            )  # fmt: skip
            for n, p in probes.items()
        ]
        parts.append(f"<h3>{esc(run.name)}</h3>")
        if any(p.get("auroc_by_layer") for p in probes.values()):
            parts.append(figure(_draw_probe_layers(probes), f"probe AUROC {run.name}", (7, 3.5)))
        header = ["probe", "layer (chosen on validation)", "held-out AUROC", "95% low"]
        header += ["95% high", "distinct texts", "groups", "held-out n"]
        parts.append(table(header, rows))
        transfer = run.summary.get("transfer") or {}
        if transfer:  # "<train>-><test>", "mass_mean/<train>-><test>", "ccs/<train>-><test>"
            rows = [
                (
                    pair.split("/")[-1],
                    pair.split("/")[0] if "/" in pair else "logistic regression",
                    t.get("layer"),
                    t.get("auroc"),
                    t.get("auroc_low"),
                    t.get("auroc_high"),
                    t.get("n"),
                )  # fmt: skip
                for pair, t in sorted(transfer.items(), key=lambda kv: kv[0].split("/")[-1])
            ]
            header = ["train -> test (not refitted)", "probe", "layer", "AUROC", "95% low"]
            parts.append(table([*header, "95% high", "n"], rows))
        sae, ai = run.summary.get("sae") or {}, run.summary.get("autointerp") or {}
        if sae or ai:
            rows = [
                ("SAE fraction of variance unexplained", sae.get("fvu")),
                ("SAE L0 (active latents per token)", sae.get("l0")),
                ("SAE dead latents", sae.get("dead_fraction")),
                ("explain-simulate score (mean)", ai.get("score_mean")),
                ("same score for a random explanation", ai.get("control_score_mean")),
            ]
            parts.append(
                table(["interpretability", "value"], [r for r in rows if r[1] is not None])
            )
    return "\n".join(parts) or None


def _cell_color(v: Any) -> str:
    """Red (0.5, chance) to green (1.0) for an AUROC / recall; grey when missing."""
    if not _finite(v):
        return "#eeeeee"
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return to_hex(colormaps["RdYlGn"](min(max(v, 0.0), 1.0)))


def _matrix_table(matrix: dict[str, Any], key: str) -> str:
    dets, orgs = matrix.get("detectors", []), matrix.get("organisms", [])
    values = matrix.get(key) or {}
    head = "".join(f"<th>{esc(o)}</th>" for o in orgs)
    body = ""
    for d in dets:
        cells = "".join(
            f'<td class="heat" style="background:{_cell_color(v)}">{fmt(v)}</td>'
            for v in ((values.get(d) or {}).get(o) for o in orgs)
        )
        body += f"<tr><th>{esc(d)}</th>{cells}</tr>"
    return (
        f'<table class="matrix"><thead><tr><th>{esc(key)}: detector \\ organism</th>{head}</tr>'
        f"</thead><tbody>{body}</tbody></table>"
    )


def audit_section(runs: list[RunFolder]) -> str | None:
    parts = []
    for run in of_stage(runs, "audit"):
        matrix = run.artifact("matrix.json")
        parts.append(f"<h3>{esc(run.name)}</h3>")
        if isinstance(matrix, dict):
            parts.append(_matrix_table(matrix, "auroc"))
            if matrix.get("recall"):
                parts.append(_matrix_table(matrix, "recall"))
            if "fpr" in matrix:
                parts.append(
                    f"<p>Recall is measured at a false-positive rate of {fmt(matrix['fpr'])} "
                    "on clean control models.</p>"
                )
        parts.append(artifact_image(run, "audit.png"))
        if (run.dir / "game.md").is_file():  # the blind auditing game, when it was played
            parts.append(markdown((run.dir / "game.md").read_text()))
    return "\n".join(parts) or None


def gate_section(runs: list[RunFolder]) -> str | None:
    parts = []
    for run in of_stage(runs, "gate"):
        v = run.artifact(run.summary.get("verdict_file", "verdict.json")) or run.summary
        verdict = str(v.get("verdict", "?"))
        kl = v.get("kl") or {}
        badge = (
            f'<span class="badge {"pass" if verdict == "pass" else "fail"}">{esc(verdict)}</span>'
        )
        cand = (v.get("candidate") or {}).get("spec", "?")
        safe = (v.get("safe") or {}).get("spec", "?")
        parts.append(f"<h3>{esc(run.name)} {badge}</h3>")
        parts.append(
            f"<p>candidate <code>{esc(cand)}</code> against safe <code>{esc(safe)}</code></p>"
        )
        if kl:
            rows = [
                (
                    kl.get("estimator"),
                    kl.get("mean"),
                    kl.get("low"),
                    kl.get("high"),
                    kl.get("budget"),
                    kl.get("rule"),
                    kl.get("passed"),
                )
            ]
            parts.append(
                table(
                    ["KL estimator", "mean", "95% low", "95% high", "budget", "rule", "passed"],
                    rows,
                )
            )
        audits = v.get("audits") or []
        if audits:
            keys = ["name", "metric", "op", "value", "observed", "safe", "tolerance", "passed"]
            parts.append(table(keys, [[a.get(k) for k in keys] for a in audits]))
        reasons = v.get("reasons") or []
        if reasons:
            parts.append("<ul>" + "".join(f"<li>{esc(r)}</li>" for r in reasons) + "</ul>")
    return "\n".join(parts) or None


def configs_section(runs: list[RunFolder]) -> str | None:
    blocks = []
    for r in runs:
        files = sorted(
            p.name + ("/" if p.is_dir() else "")
            for p in r.dir.iterdir()
            if not p.name.startswith(".")
        )
        body = f"<p>files: {esc(', '.join(files))}</p><h4>config.json</h4>{pre_json(r.config)}"
        body += (
            f"<h4>summary.json</h4>{pre_json(r.summary)}"
            if r.finished
            else "<p>unfinished: no summary.json</p>"
        )
        blocks.append(f'<div id="cfg-{esc(r.name)}">{details(f"{r.name} ({r.stage})", body)}</div>')
    return "\n".join(blocks)


def claims_section(root: str | Path) -> str | None:
    """The claims of ``root/claims.json`` (:mod:`superalign.claims`, written by ``superalign
    demo``): each finding with its 95% interval, the null it must exclude, and PASS or FAIL."""
    from superalign.claims import CLAIMS_FILE, claims_table

    claims = _read_json(Path(root) / CLAIMS_FILE)
    if not isinstance(claims, list) or not claims:
        return None
    rows = []
    for (verdict, text, interval, null, n), c in zip(claims_table(claims), claims):
        badge = Html(f'<span class="badge {verdict.lower()}">{verdict}</span>')
        how = c.get("measure", "") + (f" ({c['reason']})" if c.get("reason") else "")
        rows.append((badge, text, interval, null, n, how))
    passed = sum(bool(c.get("passed")) for c in claims)
    head = (
        f"<p>{passed} of {len(claims)} claims passed. A claim passes only when its whole 95% "
        "interval lies on its side of the null.</p>"
    )
    header = ["", "claim", "value [95% interval]", "null", "n", "measured as"]
    return head + table(header, rows)


class Section(NamedTuple):
    title: str
    anchor: str
    render: Callable[[list[RunFolder]], str | None]


SECTIONS: list[Section] = [
    Section("Runs", "runs", runs_section),
    Section("Overoptimization", "overoptimization", overoptimization_section),
    Section("Scalable oversight: sandwiching", "sandwiching", sandwiching_section),
    Section("Generalization: performance gap recovered", "pgr", pgr_section),
    Section("Red teaming", "redteam", redteam_section),
    Section("Interpretability: probes", "probes", probes_section),
    Section("Audit: detectors against model organisms", "audit", audit_section),
    Section("Deployment gate", "gate", gate_section),
    Section("Configs", "configs", configs_section),
]
"""The page, in order. A section whose function returns None (no such runs) is left out."""


# --- the page -----------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;
padding:0 24px 48px;color:#1d1d1f;line-height:1.45}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:40px}
nav a{margin-right:14px}table{border-collapse:collapse;margin:10px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
thead th{background:#f4f4f6}td.heat{text-align:center;min-width:64px}
img{max-width:100%;height:auto}figure{margin:10px 0}figcaption{font-size:12px;color:#666}
pre{background:#f7f7f9;padding:8px;overflow-x:auto;font-size:12px;max-height:480px}
details{margin:4px 0}summary{cursor:pointer}.meta{color:#666;font-size:13px}
.badge{padding:2px 10px;border-radius:10px;color:#fff;font-size:14px}.pass{background:#2e7d32}
.fail{background:#c62828}#report-check .warn{color:#c62828;font-weight:bold}
"""

CHECK_HEAD = """<script>
window.reportErrors = [];
window.addEventListener("error", function (e) { window.reportErrors.push(String(e.message)); });
</script>"""

CHECK_TAIL = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var out = document.getElementById("report-check");
  out.setAttribute("data-images", String(imgs.length));
  out.setAttribute("data-broken", broken.map(function (i) { return i.alt; }).join("|"));
  out.setAttribute("data-errors", window.reportErrors.join("|"));
  if (broken.length) {
    out.innerHTML = '<p class="warn">' + broken.length + " plot(s) failed to render</p>";
  }
  out.setAttribute("data-done", "1");
});
</script>"""


def render(runs: list[RunFolder], root: str | Path) -> str:
    """The whole page for ``runs`` (the folders under ``root``)."""
    sections = []
    claims = claims_section(root)
    if claims:
        sections.append((Section("Claims", "claims", lambda _: claims), claims))
    for s in SECTIONS:
        body = s.render(runs) if runs else None
        if body:
            sections.append((s, body))
    nav = "".join(f'<a href="#{s.anchor}">{esc(s.title.split(":")[0])}</a>' for s, _ in sections)
    body = "\n".join(
        f'<section id="{s.anchor}"><h2>{esc(s.title)}</h2>{b}</section>' for s, b in sections
    )
    done = sum(r.finished for r in runs)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    meta = f"{esc(root)}: {len(runs)} run folders ({done} finished)"
    meta += f"; built {when} by superalign {__version__}"
    if not runs:
        body = "<p>No run folders (folders with a config.json) here.</p>"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>superalign report: {esc(Path(root).name)}</title>"
        f"<style>{CSS}</style>{CHECK_HEAD}</head>"
        f'<body><h1>superalign report</h1><p class="meta">{meta}</p><nav>{nav}</nav>{body}'
        f'<div id="report-check"></div>{CHECK_TAIL}</body></html>\n'
    )


def build_report(
    root: str | Path, out: str | Path | None = None, only: Iterable[Path] | None = None
) -> Path:
    """Write the report of the runs under ``root`` to ``out`` (default ``root/report.html``);
    ``only``: just these run folders of ``root`` (e.g. one pipeline's)."""
    root = Path(root)
    runs = load_runs(root)
    if only is not None:
        keep = {Path(p).resolve() for p in only}
        runs = [r for r in runs if r.dir.resolve() in keep]
    out = Path(out) if out else root / "report.html"
    atomic_write_text(out, render(runs, root))
    return out
