"""Test accuracy of image classifiers alone and as an ensemble (mean of their softmax outputs).

    python benchmarks/vision_ensemble.py --ckpt runs/bench/a/checkpoints/last.ckpt \\
        --ckpt runs/bench/b/checkpoints/last.ckpt [--config experiments/vision/mnist_vit.yaml]

Each checkpoint is read with :func:`tx_suite.tasks.classification.load_classifier`
(``weights_only=True``) and evaluated with its inference (EMA) weights in float32 on the test
split of ``--config``'s data module. The ensemble averages the members' class probabilities,
the usual way to combine independently trained networks (e.g. Lakshminarayanan et al. 2017, §2.4).
Nothing is selected on the test set: every checkpoint given is a member. Prints JSON (also
``--out``) and a table.

To tell errors an ensemble can fix from those it cannot, the JSON also counts how the members'
mistakes overlap: ``wrong_by_members[k]`` is the number of test images that exactly ``k`` of the
members misclassify (``k = 0 .. len(members)``), and ``wrong_by_all`` lists the test indices
every member gets wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import ROOT, build, git_commit, machine

sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tx_suite.tasks.classification import load_classifier  # noqa: E402
from tx_suite.utils.config import load_config  # noqa: E402


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probs (N, num_classes), labels (N,))`` of ``model`` over ``loader``."""
    probs, labels = [], []
    for x, y in loader:
        probs.append(model(x).float().softmax(-1))
        labels.append(y)
    return torch.cat(probs), torch.cat(labels)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt", action="append", required=True, type=Path, help="a member (repeat for each)")
    p.add_argument("--config", type=Path, default=ROOT / "experiments" / "vision" / "mnist_vit.yaml",
                   help="experiment config whose data module gives the test split")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    for path in args.ckpt:
        if not path.is_file():
            p.error(f"--ckpt: no file at {path}")
    if args.out and not args.out.parent.is_dir():
        p.error(f"--out: no directory {args.out.parent}")

    datamodule = build(load_config(args.config)["data"])
    datamodule.prepare_data()
    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    # Every member is loaded and checked before any is evaluated, so that a bad one stops the run
    # with one line before minutes of evaluation, not after.
    models = []
    for path in args.ckpt:
        try:
            model = load_classifier(path).eval()
        except ValueError as e:  # CheckpointError included: corrupt, unsafe or not a classifier
            p.error(f"--ckpt {path}: {e}")
        hp, dm = model.hparams, datamodule
        if (hp.num_classes, hp.in_chans, hp.img_size) != (dm.num_classes, dm.in_chans, dm.img_size):
            p.error(f"{path} classifies {hp.num_classes} classes of {hp.in_chans}x{hp.img_size}x{hp.img_size} "
                    f"images, {args.config}'s data has {dm.num_classes} of {dm.in_chans}x{dm.img_size}x{dm.img_size}")
        models.append(model)
    members, total, wrong = [], None, None
    for path, model in zip(args.ckpt, models):
        probs, labels = predict_probabilities(model, loader)
        total = probs if total is None else total + probs
        miss = (probs.argmax(-1) != labels).long()  # (N,) 1 where this member is wrong
        wrong = miss if wrong is None else wrong + miss  # (N,) members wrong on each test image
        members.append({"ckpt": str(path), "test_acc": 1.0 - miss.float().mean().item()})
    ensemble_acc = (total.argmax(-1) == labels).float().mean().item()
    result = {"config": str(args.config), "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": machine(), "test_images": len(labels), "members": members,
              "ensemble_test_acc": ensemble_acc,
              "wrong_by_members": torch.bincount(wrong, minlength=len(members) + 1).tolist(),
              "wrong_by_all": torch.nonzero(wrong == len(members)).flatten().tolist()}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print("\n| model | test acc |\n|---|---|")
    for m in members:
        print(f"| {m['ckpt']} | {m['test_acc']:.4f} |")
    print(f"| ensemble of {len(members)} (mean softmax) | {ensemble_acc:.4f} |")
    print("\n| members wrong | " + " | ".join(map(str, range(1, len(members) + 1))) + " |")
    print("|---" * (len(members) + 1) + "|")
    print("| test images | " + " | ".join(map(str, result["wrong_by_members"][1:])) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
