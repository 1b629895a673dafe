"""Pictures and reports for people: series overlays (GIF + key frame) and the demo's report folder."""
