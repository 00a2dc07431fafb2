"""Colours of the slice viewer: label defaults, the confusion overlay, crosshair and brush cursor.

Confusion colours follow the Okabe & Ito (2008) palette, chosen to stay distinguishable with the common
colour-vision deficiencies (deuteranopia, protanopia, tritanopia) and on a grey CT/MR background, and kept
away from the label colours (the demo's and the first defaults: a missed region must not read as "left
kidney"): true positive = bluish green ``#009E73`` (filled), false positive = vermillion ``#D55E00``
(hatched "/"), false negative = purple ``#AA3377`` (Paul Tol; hatched "\\"). The hatching tells FP from FN
and both from any label's fill without colour.

Each kind of label layer has its own look, whatever its colours (:data:`LAYER_LOOKS`): what the person
paints is filled, a prediction is a solid contour, a reference is a dashed contour.
"""

from __future__ import annotations

from sd_fsmis.core.io.labelmap import default_colour

RGB = tuple[int, int, int]
RGBA = tuple[int, int, int, int]

#: Values of a confusion (disagreement) array: 0 none, 1 true positive, 2 false positive, 3 false negative.
CONFUSION_NONE, CONFUSION_TP, CONFUSION_FP, CONFUSION_FN = 0, 1, 2, 3

TRUE_POSITIVE: RGB = (0, 158, 115)  # Okabe-Ito bluish green
FALSE_POSITIVE: RGB = (213, 94, 0)  # Okabe-Ito vermillion
FALSE_NEGATIVE: RGB = (170, 51, 119)  # Paul Tol's purple
CONFUSION_COLORS: dict[int, RGB] = {
    CONFUSION_TP: TRUE_POSITIVE,
    CONFUSION_FP: FALSE_POSITIVE,
    CONFUSION_FN: FALSE_NEGATIVE,
}
CONFUSION_HATCHES: dict[int, str] = {CONFUSION_FP: "/", CONFUSION_FN: "\\"}

#: how a label layer of each kind is drawn: "fill", "outline" (solid contour) or "dashed" (contour)
LAYER_LOOKS: dict[str, str] = {"manual": "fill", "prediction": "outline", "reference": "dashed"}

CROSSHAIR_COLOR: RGBA = (255, 215, 0, 190)  # gold, like 3D Slicer's yellow crosshair
BRUSH_COLOR: RGBA = (255, 255, 255, 230)
MARKER_COLOR = "#e8e8a0"  # orientation letters (R, L, A, P, S, I) at the view's edges
BACKGROUND = "#000000"


def label_color(value: int, colors: dict[int, RGB] | None = None) -> RGB:
    """The colour of label ``value``: the caller's when given, else core's default (ITK-SNAP's order)."""
    if colors and value in colors:
        r, g, b = colors[value][:3]
        return (int(r), int(g), int(b))
    return default_colour(value)
