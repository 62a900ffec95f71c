"""capojax.plots writes real PNGs from the metric results (headless Agg canvas)."""

import numpy as np
from matplotlib.image import imread

from capojax import metrics, plots


def test_reliability_and_precision_coverage_pngs(tmp_path):
    rng = np.random.default_rng(0)
    conf = rng.random(200).astype(np.float32)
    correct = rng.random(200) < conf  # calibrated by construction
    stated = np.where(rng.random(200) < 0.2, np.nan, np.clip(conf + 0.2, 0, 1)).astype(np.float32)
    rel = plots.save_reliability_diagram(
        metrics.reliability_diagram(conf, correct), tmp_path / "sub" / "rel.png", title="t",
        ece=float(metrics.ece(conf, correct)),
    )
    pc = plots.save_precision_coverage(
        {"exp(lpm)": metrics.precision_coverage(conf, correct),
         "stated": metrics.precision_coverage(stated, correct),
         "empty": metrics.precision_coverage(conf, correct, np.zeros(200, bool))},  # skipped, no crash
        tmp_path / "pc.png",
    )
    for path in (rel, pc):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 0.05  # something was drawn, not a blank canvas
