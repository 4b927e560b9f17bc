"""Interactive views that still show something where widgets cannot render.

A notebook output may carry several representations of one thing; each front end shows the richest it can.
:class:`WithStaticFallback` puts a widget's view and a PNG of the same picture in one output: JupyterLab with
its widget manager shows the live widget, while a front end without one (a static viewer, an HTML export,
JupyterLab without the widgets extension) shows the picture instead of a line of text.
"""

from __future__ import annotations

import base64
from typing import Any, Dict, Optional


class WithStaticFallback:
    """Display ``widget`` where widgets render, else ``png`` (bytes of the same view at its first state)."""

    def __init__(self, widget: Any, png: bytes, text: str = ""):
        if not png:
            raise ValueError("the static fallback needs the PNG bytes of the view; got none")
        self.widget = widget
        self.png = png
        self.text = text

    def _repr_mimebundle_(self, include: Optional[Any] = None, exclude: Optional[Any] = None) -> Dict[str, Any]:
        bundle = dict(self.widget._repr_mimebundle_() or {})
        bundle["image/png"] = base64.b64encode(self.png).decode("ascii")
        if self.text:
            bundle["text/plain"] = self.text
        return bundle
