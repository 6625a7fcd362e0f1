"""dev is a scientific workbench: a notebook uses pandas, SciPy, scikit-learn, matplotlib,
TensorBoard, tqdm and ipywidgets together with torch, executed by Jupyter as the dev user."""

from __future__ import annotations

import json
from pathlib import Path

NOTEBOOK_CELLS = [
    "import numpy as np, pandas as pd, scipy, sklearn, tqdm, ipywidgets, torch",
    "df = pd.DataFrame({'x': np.arange(10, dtype='float32'),\n"
    "                   'y': np.arange(10, dtype='float32') * 2 + 1})\n"
    "t = torch.tensor(df.values)\n"
    "assert t.shape == (10, 2) and t.dtype == torch.float32\n"
    "assert torch.equal(t[:, 1], t[:, 0] * 2 + 1)",
    "from scipy import stats\n"
    "from sklearn.linear_model import LinearRegression\n"
    "fit = LinearRegression().fit(df[['x']], df['y'])\n"
    "assert abs(fit.coef_[0] - 2) < 1e-5 and abs(fit.intercept_ - 1) < 1e-4\n"
    "assert stats.pearsonr(df.x, df.y)[0] > 0.999",
    "import matplotlib\n"
    "matplotlib.use('Agg')\n"
    "import matplotlib.pyplot as plt\n"
    "fig, ax = plt.subplots()\n"
    "ax.plot(df.x, df.y)\n"
    "fig.savefig('/out/plot.png')",
    "from torch.utils.tensorboard import SummaryWriter\n"
    "with SummaryWriter('/out/runs') as writer:\n"
    "    writer.add_scalar('loss', float(t.sum()), 0)",
    "total = sum(1 for _ in tqdm.tqdm(range(5)))\n"
    "slider = ipywidgets.IntSlider(value=total)\n"
    "assert slider.value == 5",
]


def _notebook() -> dict:
    cells = [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
              "outputs": [], "source": source} for i, source in enumerate(NOTEBOOK_CELLS)]
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "language": "python",
                                                        "display_name": "Python 3"}},
            "nbformat": 4, "nbformat_minor": 5}


def test_a_notebook_uses_the_workbench_with_torch(dev_image, containers, tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir(mode=0o777)
    work.chmod(0o777)
    (work / "workbench.ipynb").write_text(json.dumps(_notebook()))
    helper = containers(dev_image)
    code, out = helper.run(
        ["jupyter", "nbconvert", "--to", "notebook", "--execute", "/out/workbench.ipynb",
         "--output", "executed.ipynb", "--ExecutePreprocessor.timeout=300"],
        entrypoint=[], user="1000:1000", environment={"HOME": "/tmp"}, timeout=600,
        volumes={str(work): {"bind": "/out", "mode": "rw"}})
    assert code == 0, f"{dev_image.name}: the notebook failed:\n{out[-4000:]}"
    executed = json.loads((work / "executed.ipynb").read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    assert (work / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((work / "runs").glob("events.out.tfevents.*")), "TensorBoard wrote no events"
