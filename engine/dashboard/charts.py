"""Charts drawn on the server as small inline SVG: nothing to download, works offline.

Answers get a colour per class from the Okabe–Ito palette, which colour-blind readers tell apart:
2xx bluish green, 4xx orange (amber), 5xx vermillion (red), no answer (curl errors) and anything
else reddish purple (violet); the stylesheet holds the colours, the charts only name the class.
"""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT, PAD = 480, 140, 18
#: The CSS class of each first digit of an HTTP status; anything else is :data:`UNKNOWN_CLASS`.
STATUS_CLASSES = {"2": "s2xx", "4": "s4xx", "5": "s5xx"}
UNKNOWN_CLASS = "sunknown"


def status_class(outcome: str) -> str:
    """The colour class of an answer: an HTTP status (``"503"``) or a curl error (``"curl:28"``)."""
    if len(outcome) == 3 and outcome.isdigit():
        return STATUS_CLASSES.get(outcome[0], UNKNOWN_CLASS)
    return UNKNOWN_CLASS


def bars(values: list[int], labels: list[str], title: str, classes: list[str] | None = None) -> str:
    """A bar chart of ``values`` with a label under each bar (and, if given, a CSS class per bar)."""
    top = max(values, default=0) or 1
    step = (WIDTH - 2 * PAD) / max(1, len(values))
    parts = [_open(title)]
    for index, (value, label) in enumerate(zip(values, labels, strict=True)):
        height = HEIGHT * value / top
        x = PAD + index * step
        kind = f' class="{classes[index]}"' if classes else ""
        parts.append(
            f'<rect{kind} x="{x + 1:.1f}" y="{PAD + HEIGHT - height:.1f}" width="{max(1.0, step - 2):.1f}"'
            f' height="{height:.1f}"><title>{escape(label)}: {value}</title></rect>'
        )
        if len(values) <= 12 or index % max(1, len(values) // 8) == 0:
            parts.append(_label(x + step / 2, label))
    parts.append(_close(title, top))
    return "".join(parts)


def line(values: list[float], labels: list[str], title: str) -> str:
    """A line of ``values`` over time (oldest left), with a few labels under it."""
    top = max(values, default=0) or 1
    step = (WIDTH - 2 * PAD) / max(1, len(values) - 1)
    points = " ".join(
        f"{PAD + index * step:.1f},{PAD + HEIGHT - HEIGHT * value / top:.1f}" for index, value in enumerate(values)
    )
    parts = [_open(title), f'<polyline class="line" fill="none" points="{points}"/>']
    for index, label in enumerate(labels):
        if index % max(1, len(labels) // 6) == 0:
            parts.append(_label(PAD + index * step, label))
    parts.append(_close(title, top))
    return "".join(parts)


def _open(title: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT + 2 * PAD}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>"
    )


def _label(x: float, text: str) -> str:
    return f'<text x="{x:.1f}" y="{PAD + HEIGHT + 13}" text-anchor="middle">{escape(text)}</text>'


def _close(title: str, top: float) -> str:
    return f'<text x="{PAD}" y="12">{escape(title)} (max {top:g})</text></svg>'
