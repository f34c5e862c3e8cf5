"""petloc's pictures are drawn without pyplot, so a user's session (a Jupyter notebook calling
`petloc.sweep()`) keeps its matplotlib backend and figures."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

DRAW_EVERY_PICTURE = """
import sys
from pathlib import Path
import numpy as np
import matplotlib

matplotlib.rcParams["backend"] = "svg"  # as a session on another backend than Agg
out = Path(sys.argv[1])

from petloc.training import gallery, search_plots

gallery.plot_curves({"loss": [1.0, 0.5], "val_miou": [0.2, 0.4]}, out / "curves.png")
points = [
    {"trial": "0", "miou": 0.5, "ms": 3.0, "pareto": "yes"},
    {"trial": "1", "miou": 0.4, "ms": 4.0, "pareto": "no"},
]
gallery.plot_pareto(points, out / "pareto.png", "miou", "ms")
gallery.plot_confusion(np.array([0, 1, 1]), np.array([0, 1, 0]), ["cat", "dog"], out / "c.png")
trials = [
    {"backbone": b, "learning_rate": lr, "score": s}
    for b, lr, s in [("simple", 1e-3, 0.3), ("mobilenetv2", 1e-4, 0.5), ("simple", 3e-3, 0.4)]
]
names = ["backbone", "learning_rate"]
search_plots.parallel_coordinates_png(trials, names, "score", "val mIoU", out / "pc.png")
found = search_plots.importance(trials, names, "score", "val mIoU")
search_plots.plot_importance(found, out / "importance.png")
search_plots.plot_best_so_far(
    [{"objective": 0.3, "minutes": 1.0}, {"objective": 0.5, "minutes": 2.0}],
    "val mIoU",
    out / "best.png",
)
drawn = sorted(p.name for p in out.glob("*.png"))
print(drawn, "matplotlib.pyplot" in sys.modules, matplotlib.get_backend())
"""


def test_drawing_every_picture_leaves_pyplot_and_the_backend_alone(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", DRAW_EVERY_PICTURE, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": ""},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    pictures = "['best.png', 'c.png', 'curves.png', 'importance.png', 'pareto.png', 'pc.png']"
    assert done.stdout.split("\n")[-2] == f"{pictures} False svg"
