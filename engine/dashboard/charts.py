"""Charts drawn on the server as small inline SVG: nothing to download, works offline."""

from __future__ import annotations

from html import escape

WIDTH, HEIGHT, PAD = 480, 140, 18


def bars(values: list[int], labels: list[str], title: str) -> str:
    """A bar chart of ``values`` with a label under each bar."""
    top = max(values, default=0) or 1
    step = (WIDTH - 2 * PAD) / max(1, len(values))
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT + 2 * PAD}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for index, (value, label) in enumerate(zip(values, labels, strict=True)):
        height = HEIGHT * value / top
        x = PAD + index * step
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{PAD + HEIGHT - height:.1f}" width="{max(1.0, step - 2):.1f}"'
            f' height="{height:.1f}"><title>{escape(label)}: {value}</title></rect>'
        )
        if len(values) <= 12 or index % max(1, len(values) // 8) == 0:
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{PAD + HEIGHT + 13}" text-anchor="middle">{escape(label)}</text>'
            )
    parts.append(f'<text x="{PAD}" y="12">{escape(title)} (max {top})</text></svg>')
    return "".join(parts)
