"""Method ``d3``: distributional dataset distillation with per-class priors, a decoder, soft labels and subtasks.

After Qin, Deng & Alvarez-Melis, "Distributional Dataset Distillation with Subtask Decomposition" (2024). Classes
are split into ``subtasks`` contiguous groups (Sec. 3.3), each distilled on its own into ``priors_per_class``
diagonal Gaussian priors per class in a ``latent_dim`` space (Sec. 3.1), a decoder G trained jointly from scratch
(:class:`d3codec.nn.models.Decoder`) and soft labels, a teacher's softmax on each decoded prior mean (Sec. 3.4).
Per class, with x̃ decoded samples, x real images, A a shared DSA draw, φ a ConvNet re-drawn each iteration:

    L = w_mmd · MMD²_k(φ(A(x̃)), φ(A(x)))  +  w_mean · ‖mean φ(A(x)) − mean φ(A(x̃))‖²

the paper's MMD (Eq. 6, RBF mixture over bandwidths 1 to 16) plus DM's mean term (Zhao & Bilen 2023, Eq. 4).
Departures: random-network matching (d3codec.methods.matching) replaces the paper's trajectory matching, too costly
on a CPU (terms are a list, so one can be added); a GLO warm start (Bojanowski et al. 2018, glo.py) first fits
decoder and prior means to real images. Sections ``priors``, ``decoder``, ``prior_labels`` per group (layout.py);
config.py holds options and presets, planning.py the budget rule, group.py a group's distillation, merge.py merging.
measurements: benchmarks/method-notes.md
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from d3codec.data.real import RealData
from d3codec.encode import seeds
from d3codec.encode.checkpoint import weights_digest
from d3codec.encode.interface import (
    DatasetSpec,
    Encoded,
    MetaFor,
    Overrun,
    Subtask,
    SubtaskEncoder,
    preset_config,
)
from d3codec.encode.loop import ResumableLoop
from d3codec.format.limits import network_cost
from d3codec.methods.d3.config import PRESETS, D3Config
from d3codec.methods.d3.group import GroupDistiller
from d3codec.methods.d3.layout import (
    D3Plan,
    first_priors,
    sections_of,
    trimmed_priors,
)
from d3codec.methods.d3.merge import Part, combine_groups, rename_group
from d3codec.methods.d3.planning import label_top_k, plan_groups
from d3codec.nn.models import ConvNet
from d3codec.nn.teacher import Teacher
from d3codec.util.progress import Stage, Stages


class D3Encoder(SubtaskEncoder[D3Plan]):
    """D3 distillation. ``D3Encoder(PRESETS["fast"])`` or any :class:`D3Config`.

    Args:
        teacher: gives the soft labels and teacher features (trained per subtask if None).
        save_teacher: where to write the teacher trained here (one subtask only), for ``--teacher`` later.
        checkpoint: each subtask (group) ``i`` saves its matching state to ``STEM.g{i}.SUFFIX`` at least
            ``checkpoint_seconds`` apart and at its end (priors, decoder, the teacher it trained, Adam,
            random states; d3codec.encode.checkpoint), and resumes from it; a finished group is not distilled
            again. The files are deleted once the archive is written. None: no checkpoint.
    """

    method = "d3"
    presets = PRESETS

    def __init__(
        self,
        config: D3Config = PRESETS["fast"],
        teacher: Teacher | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_seconds: float = 300.0,
        save_teacher: str | os.PathLike | None = None,
    ):
        if save_teacher is not None and (
            teacher is not None or config.subtasks > 1 or not (config.soft_labels or config.teacher_features)
        ):
            raise ValueError(
                "`save_teacher` saves the one teacher a run trains: it needs `subtasks` 1 (each subtask "
                "trains its own on its classes), no `teacher`, and soft labels (or teacher features)"
            )
        self.config = config
        self.teacher = teacher
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_seconds = checkpoint_seconds
        self.save_teacher = Path(save_teacher) if save_teacher is not None else None

    @classmethod
    def from_options(
        cls,
        preset: str = "fast",
        teacher: Teacher | None = None,
        checkpoint=None,
        checkpoint_seconds: float = 300.0,
        save_teacher=None,
        **overrides,
    ) -> "D3Encoder":
        return cls(preset_config(PRESETS, preset, overrides), teacher, checkpoint, checkpoint_seconds, save_teacher)

    def group_checkpoint(self, index: int) -> Path | None:
        """Where group ``index`` checkpoints (None without a checkpoint)."""
        if self.checkpoint is None:
            return None
        return self.checkpoint.with_name(f"{self.checkpoint.stem}.g{index}{self.checkpoint.suffix}")

    def checkpoint_files(self) -> list[Path]:
        if self.checkpoint is None:
            return []
        stem, suffix = self.checkpoint.stem, self.checkpoint.suffix
        return sorted(
            p
            for p in self.checkpoint.parent.glob(f"{stem}.g*{suffix}")
            if p.name[len(stem) + 2 : len(p.name) - len(suffix)].isdigit()
        )

    def label_top_k(self, group_classes: int) -> int | None:
        """How many of a soft label's largest probabilities a group of ``group_classes`` stores (None:
        the whole row): ``label_top_k`` where given (0: whole rows), else the rule of :meth:`plan`."""
        return label_top_k(self.config.label_top_k, group_classes)

    def remove_checkpoints(self, groups: int) -> None:
        for index in range(groups):
            if (path := self.group_checkpoint(index)) is not None:
                path.unlink(missing_ok=True)

    def method_meta(self, groups: list[dict]) -> dict:
        return {"groups": groups, "config": asdict(self.config)}

    def plan(self, spec: DatasetSpec, budget: int, meta_for: MetaFor, real: RealData | None = None) -> D3Plan:
        """Shapes that fill ``budget`` bytes, by this rule (each step overridable by a config field;
        d3codec.methods.d3.planning.plan_groups applies it):

        1. classes split into ``subtasks`` contiguous groups;
        2. latent_dim 32 for images up to 32 pixels a side, else 64;
        3. decoder: ``uniform`` for images up to 32 pixels a side, else ``tapered`` (its channels
           halve at every upsampling: at 64 pixels a width-256 uniform decoder spends 96 % of its
           multiply-adds at full resolution); width: the largest of DECODER_WIDTHS (up to
           ``max_decoder_width``: 64 for images up to 32 pixels, else 256) whose decoders take at
           most ``decoder_share`` of the budget; the smallest width where none does;
        4. soft labels: whole rows for groups of up to LABEL_TOP_K_ABOVE classes; above, each
           row's LABEL_TOP_K largest probabilities (ImageNet's groups of 200: a twentieth of the bytes);
        5. priors per class: the most whose exact archive bound (compression off, metadata
           reserve included) fits the budget; with ``fill="compressed"``, the most whose bound,
           with the priors and soft labels at PRIOR_STORED_RATIO of their raw bytes, fits (the
           writer then drops priors until the archive fits, never below the first count).

        Raises: D3BudgetError, with the smallest workable budget, when one prior per class with
        the narrowest decoder does not fit.
        """
        return plan_groups(self.config, spec, budget, lambda groups: meta_for(self.method_meta(groups)))

    def distill(
        self, real: RealData, plan: D3Plan, *, device: torch.device, seed: int, progress: bool = True
    ) -> Encoded:
        """Distil every group in turn, in this process (d3codec.encode.federated spreads them over ranks)."""
        parts, entries = [], []
        stages = self.stages(real, plan, range(len(plan.groups)), progress)
        for index, group in enumerate(plan.groups):
            tensors, entry = self.distill_group(
                real, plan, index, device=device, seed=seed, progress=progress, stages=stages
            )
            parts.append(tensors)
            entries.append(entry)
        return self.encoded(parts, entries)

    @property
    def kept_state(self) -> Path | None:
        return self.group_checkpoint(0)

    def encoded(self, parts: list[dict], entries: list[dict]) -> Encoded:
        seconds = sum(e["stats"].get("distill_seconds", 0.0) for e in entries)
        stats = {"distill_seconds": round(seconds, 3)}
        resumed = [e["stats"]["resumed_at_iteration"] for e in entries if "resumed_at_iteration" in e["stats"]]
        if resumed:
            stats["resumed_at_iteration"] = min(resumed)
        encoded = self.prior_trimmed(parts, entries, stats)
        encoded.cleanup = lambda: self.remove_checkpoints(len(entries))
        return encoded

    def prior_trimmed(self, parts: list[dict], entries: list[dict], stats: dict) -> Encoded:
        """The archive of these groups (tensors by section, and metadata entries), whose ``trim`` drops the
        priors an :class:`Overrun` asks for (the last of each class, from the groups with the most first:
        layout.trimmed_priors). Each trimmed group's stats keep the planned count."""
        priors = [e["priors_per_class"] for e in entries]
        classes = [e["classes"][1] - e["classes"][0] for e in entries]

        def trim(overrun: Overrun) -> Encoded | None:
            units = overrun.units_to_drop(sum(p * k for p, k in zip(priors, classes)), ("priors", "prior_labels"))
            keep = trimmed_priors(priors, classes, units)
            if keep == priors:
                return None
            kept_entries = [
                e
                if n == p
                else {
                    **e,
                    "priors_per_class": n,
                    "stats": {**e["stats"], "planned_priors_per_class": e["stats"].get("planned_priors_per_class", p)},
                }
                for e, p, n in zip(entries, priors, keep)
            ]
            return self.prior_trimmed([first_priors(part, n) for part, n in zip(parts, keep)], kept_entries, stats)

        return Encoded(sections_of(parts), self.method_meta(entries), stats, trim)

    # ---- subtasks (d3codec.encode.federated): a group is a subtask ----

    def subtask_count(self, plan: D3Plan) -> int:
        return len(plan.groups)

    def distill_subtask(
        self, real: RealData, plan: D3Plan, index: int, *, device: torch.device, seed: int, progress: bool = True
    ) -> Subtask:
        """Group ``index`` as an archive of its classes alone (its tensors renamed to group 0)."""
        tensors, entry = self.distill_group(real, plan, index, device=device, seed=seed, progress=progress)
        a, b = entry["classes"]
        local = {section: rename_group(group, index, 0) for section, group in tensors.items()}
        return Subtask(
            (a, b), Encoded(sections_of([local]), self.method_meta([{**entry, "classes": [0, b - a]}]), entry["stats"])
        )

    def merge_subtasks(self, paths: list[Path], limits=None) -> Encoded:
        """The groups of the subtask archives at ``paths``, merged (merge.py); seconds summed over subtasks."""
        parts = [Part.read(path, limits) for path in paths]
        fields, groups = combine_groups(parts)
        seconds = sum(part.meta["stats"].get("distill_seconds", 0.0) for part in parts)
        return self.prior_trimmed(groups, fields["groups"], {"distill_seconds": round(seconds, 3)})

    def group_run(self, real: RealData, plan: D3Plan, index: int, seed: int, device: torch.device) -> tuple:
        """What group ``index``'s result depends on (its checkpoint's fingerprint): every option, its plan,
        the seed, the data, the device type and a given teacher's weights."""
        given = None
        if self.teacher is not None:
            given = [weights_digest(self.teacher.net.state_dict()), self.teacher.classes]
        return (
            asdict(self.config),
            asdict(plan.groups[index]),
            index,
            seed,
            real.name,
            list(real.classes),
            len(real.train_targets),
            device.type,
            given,
        )

    def distill_group(
        self,
        real: RealData,
        plan: D3Plan,
        index: int,
        *,
        device: torch.device,
        seed: int,
        progress: bool = True,
        stages: Stages | None = None,
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
        """Distil group ``index`` alone. Its result depends only on the data, the plan and (seed, index):
        its draws come from the named stream ``d3-group`` number ``index`` (d3codec.encode.seeds). ``stages``: the
        run's stages (:meth:`stages`) when the group is one of several distilled here, for the time left.

        Returns: (tensors by section, keyed g{index}.*; the group's metadata entry).
        """
        cfg, g = self.config, plan.groups[index]
        group_seed = seeds.stream_seed(seed, "d3-group", index)
        gen = torch.Generator().manual_seed(group_seed)
        torch.manual_seed(group_seed)  # network initialisations draw from the global generator
        stages = stages or self.stages(real, plan, [index], progress)
        named = self.stage_names(plan, index)
        loop = ResumableLoop(
            self.group_checkpoint(index),
            "d3-group",
            self.group_run(real, plan, index, seed, device),
            cfg.iterations,
            self.checkpoint_seconds,
        )
        if loop.resuming:  # the teacher and the warm start are in the checkpoint
            for stage in ("teacher", "warm start"):
                if named[stage] in [s.name for s in stages.stages]:
                    stages.skip(named[stage])
        return GroupDistiller(self.config, self.teacher, self.save_teacher).run(
            real, g, index, loop, stages, named, gen, seed, group_seed, device, progress
        )

    def trains_teacher(self) -> bool:
        """Whether distilling trains a teacher (one per group): one is needed and none was given."""
        return self.teacher is None and (self.config.soft_labels or self.config.teacher_features)

    def stage_names(self, plan: D3Plan, index: int) -> dict[str, str]:
        """Group ``index``'s stages by their plain names: teacher, warm start, matching, soft labels."""
        suffix = f", group {index + 1}/{len(plan.groups)}" if len(plan.groups) > 1 else ""
        return {stage: stage + suffix for stage in ("teacher", "warm start", "matching", "soft labels")}

    def stages(self, real: RealData, plan: D3Plan, groups, progress: bool = True) -> Stages:
        """The stages of distilling ``groups`` (indices): per group its teacher (where one is trained here),
        warm start, matching and soft labels (one decoded prior mean through the teacher per prior: most of
        an ImageNet subtask's time on a CPU), each weighed by its multiply-adds (forward and backward taken as
        three forwards; d3codec.format.limits.network_cost), for the run's time left (d3codec.util.progress.Stages)."""
        cfg, (c, h, w) = self.config, real.image_shape
        teacher_width = cfg.teacher_width
        if self.teacher is not None:
            first = self.teacher.net.features[0]
            assert isinstance(first, torch.nn.Conv2d), "a ConvNet-3 teacher starts with a convolution"
            teacher_width = first.out_channels

        def macs(build, *shape) -> int:
            return network_cost(build, lambda: (torch.zeros(1, *shape),), "a network of this run").macs

        out = []
        for index in groups:
            g, named = plan.groups[index], self.stage_names(plan, index)
            k, p = g.num_classes, g.priors_per_class
            decoder = macs(lambda: g.decoder(real.image_shape), g.latent_dim)
            embed = macs(lambda: ConvNet(c, k, h, width=cfg.embed_width), c, h, w)
            if self.trains_teacher():
                images = len(real.train_targets) * k / real.num_classes
                teacher = macs(lambda: ConvNet(c, k, h, width=cfg.teacher_width), c, h, w)
                out.append(Stage(named["teacher"], 3 * cfg.teacher_epochs * images * teacher))
            out.append(Stage(named["warm start"], 3 * cfg.init_iterations * min(cfg.init_batch, k * p) * decoder))
            per_class = 3 * cfg.synthetic_per_class * (decoder + embed) + cfg.real_per_class * embed
            out.append(Stage(named["matching"], cfg.iterations * k * per_class))
            if cfg.soft_labels:
                teacher = macs(lambda: ConvNet(c, k, h, width=teacher_width), c, h, w)
                out.append(Stage(named["soft labels"], k * p * (decoder + teacher)))
        return Stages("D3", out, enabled=progress)
