"""A picture of a comparison: every check's error relative to its tolerance,
in forward order, on a log scale, as one self-contained SVG (``compare
--plot FILE.svg``).

Points below the tolerance line agree; a point above it is wrong. The
carried error (against the reference) is drawn as a line of dots; with
``--model``, each operation's own error (recomputed from the candidate's
inputs, over its rounding bound) as squares beside it. The
blamed operation, or without a model the first over tolerance, is marked.
Hovering a point shows its key and figures.
"""

from __future__ import annotations

import math
from html import escape

from picogpt2.oracle.comparison import Check, Report

HEIGHT, TOP, BOTTOM, LEFT, RIGHT = 500, 64, 136, 72, 24
LOW, HIGH = -6.0, 3.0  # log10 of error / tolerance drawn, clipped beyond
CARRIED, ALONE, WRONG, LINE = "#2b6cb0", "#dd8a0e", "#c53030", "#4a5568"


def ratio(error: float | None, tolerance: float) -> float | None:
    """log10(error / tolerance), clipped to the drawing; None for no figure."""
    if error is None:
        return None
    if error == 0:
        return LOW
    if tolerance == 0 or math.isinf(error):
        return HIGH
    return min(max(math.log10(error / tolerance), LOW), HIGH)


def svg(c: Report, title: str) -> str:
    """The comparison ``c`` as an SVG document."""
    checks = c.checks
    step = max(6.0, min(28.0, 900 / max(len(checks), 1)))
    width = LEFT + RIGHT + step * max(len(checks), 1)
    plot_h = HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + step * (i + 0.5)

    def y(value: float) -> float:
        return TOP + plot_h * (HIGH - value) / (HIGH - LOW)

    parts = [_frame(width, title, c), *_axis(width, y), *_blocks(checks, x, y)]
    parts += _series(checks, x, y)
    parts += _marks(checks, x, y, c)
    parts.append(_legend(width, c.isolated))
    body = "\n".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{HEIGHT}" '
        f'viewBox="0 0 {width:.0f} {HEIGHT}" font-family="sans-serif" font-size="11">\n'
        f"{body}\n</svg>\n"
    )


def _frame(width: float, title: str, c: Report) -> str:
    verdict = "OK" if c.ok else "NOT OK"
    return (
        f'<rect width="{width:.0f}" height="{HEIGHT}" fill="white"/>'
        f'<text x="{LEFT}" y="22" font-size="14" font-weight="bold">{escape(title)}</text>'
        f'<text x="{LEFT}" y="40" fill="{LINE}">{escape(c.mode)}: error / tolerance per key and '
        f"layer, in forward order; {verdict}</text>"
    )


def _axis(width: float, y) -> list[str]:
    out = []
    for power in range(int(LOW), int(HIGH) + 1):
        yy = y(power)
        color, dash = (WRONG, ' stroke-dasharray="6 3"') if power == 0 else ("#e2e8f0", "")
        out.append(f'<line x1="{LEFT}" x2="{width - RIGHT:.0f}" y1="{yy:.1f}" y2="{yy:.1f}" '
                   f'stroke="{color}"{dash}/>')  # fmt: skip
        label = "tolerance" if power == 0 else f"10^{power}"
        out.append(f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end" fill="{LINE}">'
                   f"{label}</text>")  # fmt: skip
    return out


def _blocks(checks: list[Check], x, y) -> list[str]:
    """A line where each block starts (at its hidden[i]); each key's name
    under its point when there is room, else the blocks' names."""
    room = x(1) - x(0) >= 12
    if room:
        return _block_lines(checks, x, y, named=False) + [
            f'<text x="{x(i):.1f}" y="{y(LOW) + 12:.1f}" font-size="9" fill="{LINE}" '
            f'transform="rotate(60 {x(i):.1f} {y(LOW) + 12:.1f})">{escape(ch.label)}</text>'
            for i, ch in enumerate(checks)
        ]
    return _block_lines(checks, x, y, named=True)


def _block_lines(checks: list[Check], x, y, named: bool) -> list[str]:
    out = []
    for i, check in enumerate(checks):
        if check.key != "hidden" and check.key not in ("ln_f",):
            continue
        xx = x(i) - 0.5 * (x(1) - x(0))
        name = "after" if check.key == "ln_f" else f"block {check.layer}"
        if check.key == "hidden" and check.layer == 0:
            name = "embeddings"
        out.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{y(HIGH):.1f}" y2="{y(LOW):.1f}" '
                   f'stroke="#cbd5e0"/>')  # fmt: skip
        if not named:
            continue
        at = f"{xx + 3:.1f} {y(LOW) + 14:.1f}"
        out.append(f'<text x="{xx + 3:.1f}" y="{y(LOW) + 14:.1f}" fill="{LINE}" '
                   f'transform="rotate(40 {at})">{name}</text>')  # fmt: skip
    return out


def _tip(check: Check) -> str:
    text = (f"{check.label}: {check.what}; {check.max_rel:.2e} of its largest value "
            f"(tolerance {check.rtol:.0e})")  # fmt: skip
    if check.alone_margin is not None:
        text += f"; alone {check.alone_margin:.2g} of its rounding bound"
    return escape(text)


def _series(checks: list[Check], x, y) -> list[str]:
    carried = [(x(i), y(ratio(ch.max_rel, ch.rtol))) for i, ch in enumerate(checks)]
    out = [f'<polyline fill="none" stroke="{CARRIED}" stroke-width="1.5" points="'
           + " ".join(f"{a:.1f},{b:.1f}" for a, b in carried) + '"/>']  # fmt: skip
    for (cx, cy), check in zip(carried, checks, strict=True):
        fill = CARRIED if check.ok else WRONG
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.2" fill="{fill}">'
                   f"<title>{_tip(check)}</title></circle>")  # fmt: skip
        alone = ratio(check.alone_margin, 1.0)
        if alone is not None:
            fill = ALONE if check.alone_ok else WRONG
            out.append(f'<rect x="{cx - 3:.1f}" y="{y(alone) - 3:.1f}" width="6" height="6" '
                       f'fill="none" stroke="{fill}" stroke-width="1.5">'
                       f"<title>{_tip(check)}</title></rect>")  # fmt: skip
    return out


def _marks(checks: list[Check], x, y, c: Report) -> list[str]:
    """The blamed operation (or the first over tolerance), marked and named."""
    target = c.blamed or c.first_wrong
    if target is None:
        return []
    i = checks.index(target)
    what = "blamed" if c.blamed is not None else "first over tolerance"
    label = f"{what}: {target.label}, {target.what}"
    anchor = "end" if x(i) > x(len(checks) - 1) * 0.6 else "start"
    return [
        f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{y(HIGH):.1f}" y2="{y(LOW):.1f}" '
        f'stroke="{WRONG}" stroke-width="2" opacity="0.5"/>',
        f'<text x="{x(i) + (-6 if anchor == "end" else 6):.1f}" y="{y(HIGH) + 12:.1f}" '
        f'text-anchor="{anchor}" fill="{WRONG}" font-weight="bold">{escape(label)}</text>',
    ]


def _legend(width: float, isolated: bool) -> str:
    yy = HEIGHT - 18
    items = [(CARRIED, "circle", "against the reference (carried)")]
    if isolated:
        items.append((ALONE, "square", "the operation alone (recomputed from your inputs)"))
    items.append((WRONG, "circle", "over its tolerance"))
    out, xx = [], LEFT
    for color, shape, name in items:
        mark = (f'<circle cx="{xx + 4}" cy="{yy - 4}" r="3.5" fill="{color}"/>' if shape == "circle"
                else f'<rect x="{xx}" y="{yy - 8}" width="8" height="8" fill="none" '
                     f'stroke="{color}" stroke-width="1.5"/>')  # fmt: skip
        out.append(mark + f'<text x="{xx + 12}" y="{yy}" fill="{LINE}">{escape(name)}</text>')
        xx += 24 + 6.2 * len(name)
    return "".join(out)
