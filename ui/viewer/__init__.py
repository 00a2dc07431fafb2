"""The slice viewer: three orthogonal views, overlays, orientation, window/level, the paint tools."""
