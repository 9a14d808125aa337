"""The paper's workflow end to end, and the `basisrt prune` command.

    source model (dense, trained on the source task)
      → new classifier head for the target task
      → [channel pruning: train head + norms, torch-pruning with Taylor importance on target data,
         fine-tune the remaining weights]                                   (channel / double)
      → decompose → basis-scaling transfer: train only α, norms and head, with the iterative
        schedule train → Taylor importance → basis-prune → … → train         (basis / double)
      → accuracy, params and MACs against the dense model with the new head

`run_workflow` does one such run; `basisrt prune` exposes it and saves the pruned model
(`torch.save` of the whole module: load it with `torch.load(path, weights_only=False)`).
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from . import data as datasets
from . import models
from .argtypes import (
    CLIError,
    existing_file,
    fraction_list,
    int_range,
    nonnegative_int,
    positive_float,
    positive_int,
    removal_fraction,
    seed,
    writable_file,
)
from .channel_pruning import ChannelPruneReport, channel_prune
from .cost import profile
from .decomposition import decompose, why_not
from .layers import BasisLayer
from .transfer import (
    ScheduleReport,
    evaluate,
    find_head,
    first_layer,
    iterative_prune,
    recalibrate_norms,
    replace_head,
    seed_everything,
    setup_basis_transfer,
    train,
)


def small_vgg(num_classes: int = 10, in_channels: int = 1,
              widths: Sequence[int | str] = (32, "M", 64, "M", 128, 128, "M", 256, "M")) -> nn.Module:
    """A small VGG-style net for 16×16 digits: conv3×3-BN-ReLU blocks, max-pools, Linear head
    (~0.54 M parameters, ~6 M MACs per 16×16 image with the default widths)."""
    layers: list[nn.Module] = []
    c = in_channels
    for v in widths:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU()]
            c = int(v)
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c, num_classes))


MODELS = {"small_vgg": small_vgg, **models.REFERENCE_MODELS}


@dataclass
class WorkflowConfig:
    """One run of the workflow. `schedule` empty: no basis pruning; `channel_amount` 0: none."""

    channel_amount: float = 0.0
    schedule: Sequence[float] = (0.99,)
    method: str = "importance"
    rule: str = "per_batch"  # Taylor accumulation rule (basisrt.importance)
    basis: bool = True  # decompose and train α (with `schedule` empty: unpruned basis transfer)
    epochs: int = 2  # per training phase
    lr: float = 1e-2
    finetune_lr: float = 1e-3
    channel_finetune: str = "all"  # after channel pruning: "all" weights, or "norm-head" only
    min_rank: int = 1
    keep_first: bool = True  # never basis-prune the input layer: its few vectors (9 on 1×3×3) all matter
    recalibrate: bool = True  # re-estimate BatchNorm statistics right after each prune
    multiple_of: int | None = None
    round_to: int | None = None
    batch_size: int = 64
    importance_batches: int | None = None
    seed: int = 0
    progress: bool = True


@dataclass
class WorkflowResult:
    model: nn.Module
    accuracy: float
    params: int
    macs: int
    dense_params: int
    dense_macs: int
    channels: ChannelPruneReport | None = None
    schedule: ScheduleReport | None = None
    log: list[str] = field(default_factory=list)

    @property
    def params_removed(self) -> float:
        return 1 - self.params / self.dense_params

    @property
    def macs_removed(self) -> float:
        return 1 - self.macs / self.dense_macs

    def summary(self) -> str:
        return (f"accuracy {self.accuracy:.4f}; params {self.dense_params:,} -> {self.params:,} "
                f"({100 * self.params_removed:.1f}% removed); MACs {self.dense_macs:,} -> {self.macs:,} "
                f"({100 * self.macs_removed:.1f}% removed)")


def _train_head_and_norms(model: nn.Module, head: str) -> None:
    from .transfer import NORM_TYPES
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, NORM_TYPES):
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)
    for p in model.get_submodule(head).parameters():
        p.requires_grad_(True)


def run_workflow(source: nn.Module, train_set: TensorDataset, test_set: TensorDataset, num_classes: int,
                 cfg: WorkflowConfig) -> WorkflowResult:
    """Transfer `source` (not modified) to the target data and prune it as `cfg` says."""
    seed_everything(cfg.seed)
    train_loader = datasets.loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed)
    test_loader = datasets.loader(test_set, 256)
    example = test_set.tensors[0][:1]
    model = copy.deepcopy(source).eval()
    head = replace_head(model, num_classes, seed=cfg.seed)
    dense = profile(model, example)
    result = WorkflowResult(model, 0.0, 0, 0, dense.params, dense.macs)
    kw = dict(progress=cfg.progress)

    if cfg.channel_amount > 0:
        _train_head_and_norms(model, head)
        train(model, train_loader, cfg.epochs, lr=cfg.lr, desc="head+norm", **kw)
        result.channels = channel_prune(model, example, cfg.channel_amount, loader=train_loader, head=head,
                                        max_batches=cfg.importance_batches, round_to=cfg.round_to)
        if cfg.recalibrate:
            recalibrate_norms(model, train_loader)
        result.log.append(f"after channel pruning (before fine-tuning): {evaluate(model, test_loader):.4f}")
        if cfg.channel_finetune == "all":
            for p in model.parameters():
                p.requires_grad_(True)
            train(model, train_loader, cfg.epochs, lr=cfg.finetune_lr, desc="fine-tune", **kw)
        else:
            _train_head_and_norms(model, head)
            train(model, train_loader, cfg.epochs, lr=cfg.lr, desc="head+norm", **kw)
        result.log.append(f"after channel pruning and fine-tuning: {evaluate(model, test_loader):.4f}")

    if cfg.basis:
        model = decompose(model, exclude=(head,), inplace=True).model
        setup_basis_transfer(model, head)
        exclude = ()
        if cfg.keep_first:  # the input layer, when it is a basis layer (not e.g. an undecomposed depthwise conv)
            # two images: a BatchNorm without running statistics cannot normalise a batch of one
            first = first_layer(model, test_set.tensors[0][:2], (nn.Conv2d, nn.Linear, *BasisLayer))
            exclude = (first,) if isinstance(model.get_submodule(first), BasisLayer) else ()
        result.schedule = iterative_prune(
            model, train_loader, list(cfg.schedule), method=cfg.method, epochs=cfg.epochs, lr=cfg.lr,
            min_rank=cfg.min_rank, multiple_of=cfg.multiple_of, exclude=exclude,
            importance_batches=cfg.importance_batches, rule=cfg.rule, eval_loader=test_loader,
            recalibrate=cfg.recalibrate, **kw)
        result.log.append(str(result.schedule))
    elif cfg.channel_amount == 0:  # neither: plain transfer of head + norms
        _train_head_and_norms(model, head)
        train(model, train_loader, cfg.epochs, lr=cfg.lr, desc="head+norm", **kw)

    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    cost = profile(model, example)
    result.model, result.params, result.macs = model, cost.params, cost.macs
    result.accuracy = evaluate(model, test_loader)
    return result


def train_source(model: nn.Module, train_set: TensorDataset, epochs: int, *, lr: float = 1e-3,
                 batch_size: int = 64, seed: int = 0, progress: bool = True) -> nn.Module:
    """Train every weight of a dense model on the source data (in place)."""
    seed_everything(seed)
    for p in model.parameters():
        p.requires_grad_(True)
    train(model, datasets.loader(train_set, batch_size, shuffle=True, seed=seed), epochs, lr=lr,
          progress=progress, desc="source")
    return model.eval()


# ------------------------------------------------------------------------------ command line

def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prune", help="basis-scaling transfer learning with basis, channel or double pruning; saves the pruned model",
        description="Transfer a source model to a target data set with basis scaling, pruning basis vectors "
                    "(iterative Taylor schedule), channels (torch-pruning), or both, and save the pruned model.")
    p.add_argument("--model", default="small_vgg", choices=sorted(MODELS), help="architecture (random init)")
    p.add_argument("--checkpoint", type=existing_file,
                   help="a source model saved with torch.save(model); overrides --model")
    p.add_argument("--source", choices=datasets.DATASETS, help="train the source model on this data set first")
    p.add_argument("--source-epochs", type=nonnegative_int, default=3)
    p.add_argument("--target", default="digits", choices=datasets.DATASETS)
    p.add_argument("--size", type=positive_int, default=16, help="image side (inputs are size×size, 1 channel)")
    p.add_argument("--limit", type=int_range(2), help="use only this many samples of each data set (smoke runs)")
    p.add_argument("--channel-amount", type=removal_fraction, default=0.0,
                   help="fraction of channels to remove, in [0, 1) (0: none)")
    p.add_argument("--channel-finetune", choices=("all", "norm-head"), default="all")
    p.add_argument("--method", choices=("importance", "energy", "ratio"), default="importance")
    p.add_argument("--schedule", type=fraction_list, default=[0.99],
                   help="comma-separated basis pruning amounts in (0, 1], one per iterative step "
                        "(empty: no basis pruning)")
    p.add_argument("--no-basis", action="store_true", help="do not decompose (channel pruning only)")
    p.add_argument("--epochs", type=nonnegative_int, default=2, help="epochs per training phase")
    p.add_argument("--lr", type=positive_float, default=1e-2)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--min-rank", type=positive_int, default=1)
    p.add_argument("--prune-first", action="store_true",
                   help="basis-prune the input layer too (by default it keeps its full rank)")
    p.add_argument("--multiple-of", type=positive_int, help="round kept ranks up to a multiple of this (8, 16)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=writable_file, default="pruned.pt", help="where to save the pruned model")
    p.set_defaults(run=_run_cli)


def _load_checkpoint(path: str) -> nn.Module:
    try:
        source = torch.load(path, weights_only=False)
    except Exception as e:  # noqa: BLE001 - unpickling a user's file can fail in any way; all mean "not a model"
        raise CLIError(f"argument --checkpoint: cannot load {path} with torch.load: {type(e).__name__}: {e}") from e
    if not isinstance(source, nn.Module):
        what = "a state_dict" if isinstance(source, dict) else f"a {type(source).__name__}"
        raise CLIError(f"argument --checkpoint: {path} holds {what}, not a model: save the whole module with "
                       "torch.save(model, path)")
    return source


def _load_data(name: str, args: argparse.Namespace) -> tuple[TensorDataset, TensorDataset]:
    try:
        data = datasets.load(name, args.size)
    except ImportError as e:  # the data sets ship in optional packages
        raise CLIError(str(e), code=1) from e
    return datasets.split(data, 0.25, args.seed, args.limit)  # --limit >= 2 leaves at least one to train on


def _check_model(source: nn.Module, example: Tensor, args: argparse.Namespace) -> None:
    """What would otherwise fail only after training: the model must take the data's inputs, have a
    classifier head and, for basis pruning, a layer to decompose."""
    what = f"--checkpoint {args.checkpoint}" if args.checkpoint else f"--model {args.model}"
    try:
        head = find_head(source)
    except ValueError as e:
        raise CLIError(f"{what}: the model has no nn.Linear layer to replace by the target's classifier head") from e
    training = source.training
    try:
        with torch.no_grad():
            source.eval()(example)
    except Exception as e:  # noqa: BLE001 - the model's own forward on the data's input shape
        shape = "×".join(map(str, example.shape[1:]))
        raise CLIError(f"{what} does not accept the {shape} inputs of --size {args.size}: "
                       f"{type(e).__name__}: {e}") from e
    finally:
        source.train(training)
    if not args.no_basis and not any(isinstance(m, BasisLayer) or why_not(m) is None
                                     for n, m in source.named_modules() if n != head and not n.startswith(head + ".")):
        raise CLIError(f"{what} has no Conv2d or Linear layer besides the head {head!r} that basis pruning "
                       "can decompose (use --no-basis)")


def _run_cli(args: argparse.Namespace) -> int:
    seed_everything(args.seed)
    progress = not args.no_progress
    # everything that can be found wrong without training is checked first
    source = _load_checkpoint(args.checkpoint) if args.checkpoint else None
    target_train, target_test = _load_data(args.target, args)
    source_data = None
    if source is None:  # --checkpoint overrides --model (and --source)
        if args.source:
            source_data = _load_data(args.source, args)
        classes = max(int(d.tensors[1].max()) + 1 for d in source_data) if source_data else 10  # glyphs: 72
        source = MODELS[args.model](num_classes=classes, in_channels=1)
    _check_model(source, target_test.tensors[0][:1], args)
    if source_data is not None:
        src_train, src_test = source_data
        train_source(source, src_train, args.source_epochs, batch_size=args.batch_size, seed=args.seed,
                     progress=progress)
        print(f"source model on {args.source}: accuracy {evaluate(source, datasets.loader(src_test, 256)):.4f}")
    num_classes = int(target_train.tensors[1].max()) + 1
    cfg = WorkflowConfig(channel_amount=args.channel_amount, schedule=args.schedule, method=args.method,
                         basis=not args.no_basis, epochs=args.epochs, lr=args.lr,
                         channel_finetune=args.channel_finetune, min_rank=args.min_rank,
                         keep_first=not args.prune_first,
                         multiple_of=args.multiple_of, batch_size=args.batch_size, seed=args.seed, progress=progress)
    result = run_workflow(source, target_train, target_test, num_classes, cfg)
    for line in result.log:
        print(line)
    if result.channels is not None:
        print(result.channels)
    print(f"{args.target}: {result.summary()}")
    try:
        torch.save(result.model, args.out)
    except OSError as e:
        raise CLIError(f"cannot save the pruned model to {args.out}: {e}", code=1) from e
    print(f"saved the pruned model to {args.out}")
    return 0
