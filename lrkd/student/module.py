"""StudentModule: the LightningModule that trains the served student
(:class:`lrkd.student.model.RelevanceStudent`: encoder, extractor, classifier) with a loss, metrics,
an optimizer and a decision rule; training-only heads (the latent projection P_k) live here.

Built from plain config dicts (so a checkpoint's hyper-parameters load with ``weights_only=True``):

    encoder:   conf/student/*.yaml   (name_or_path | config, tokenizer, pooling, dropout,
               gradient_checkpointing, ...)
    extractor: conf/extractor/*.yaml (``_target_`` of a LatentExtractor and its sizes)
    loss:      conf/loss/*.yaml      (``_target_: lrkd.losses.WeightedLoss`` with named terms)
    optimizer: conf/optimizer/*.yaml (a partial optimizer, ``_target_`` + its arguments, plus
               ``head_lr``; or the older plain {lr, head_lr, weight_decay, warmup_ratio, betas, eps})
    scheduler: conf/scheduler/*.yaml (a partial called with (optimizer, total_steps)); None: a
               linear warm-up over 10 % of the steps (lrkd.lightning.optim)
    data_spec: DataSpec.to_dict() of the data module (grades, perspectives, latent dim, ...), plus
               ``train_class_counts`` [C] (gold label counts of the train split, for
               ``class_weight: balanced`` loss terms), ``max_length`` and ``text_fields``
    decision:  conf/decision/*.yaml   (``kind: argmax`` (default) | ``thresholds``; lrkd.evaluation.decision)

With ``decision.kind: thresholds`` the module keeps the labelled val probabilities of each
validation epoch, fits the rule on them at the epoch end and logs ``val/tuned/<metric>`` (accuracy,
macro_f1, micro_f1, f1/<grade>, qwk under the fitted rule), so a checkpoint can be selected on
``val/tuned/qwk``. The fitted rule is saved in the checkpoint (key ``lrkd_decision``) and restored
with it; test applies the restored rule without refitting (``test/tuned/<metric>``, next to the
argmax ``test/<metric>``). Val is never test.
"""
from __future__ import annotations

import logging

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MeanMetric

from lrkd.data.batch import AUG_PREFIX, INPUT_KEYS
from lrkd.evaluation.decision import ArgmaxRule, rule_from_dict
from lrkd.evaluation.metrics import PredictionStore, RelevanceMetrics, decision_metrics
from lrkd.losses import NonFiniteLossError
from lrkd.lightning.optim import configure, total_training_steps
from lrkd.student.checkpoint import DECISION_CHECKPOINT_KEY, upgrade_state_dict, upgrade_targets
from lrkd.student.encoder import count_parameters
from lrkd.student.model import RelevanceStudent
from lrkd.utils import plain

log = logging.getLogger(__name__)



def _upgrade_legacy_keys(module, state_dict, prefix, *args) -> None:
    upgrade_state_dict(state_dict, prefix)


class PerspectiveProjection(nn.Module):
    """P_k: one linear map per perspective from the extractor's z_k [Dz] to the teacher's latent
    space [D]. Training-only (used by the ``latent`` loss term); not part of the served student."""

    def __init__(self, num_perspectives: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_perspectives, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(num_perspectives, out_dim))
        for k in range(num_perspectives):
            nn.init.xavier_uniform_(self.weight.data[k])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, K, Dz] -> [B, K, D]."""
        return torch.einsum("bki,kio->bko", z, self.weight) + self.bias


class StudentModule(L.LightningModule):
    """Trains a :class:`~lrkd.student.model.RelevanceStudent` (``self.student``, see the module
    docstring). ``forward(batch)`` returns the dict of docs/ARCHITECTURE.md "Student outputs";
    ``predict_logits`` is the student's."""

    def __init__(self, encoder: dict, extractor: dict, loss: dict, optimizer: dict, data_spec: dict,
                 decision: dict | None = None, scheduler: dict | None = None):
        super().__init__()
        # plain containers; dotted paths of moved modules (an older checkpoint's) under their new names
        encoder, extractor, loss, optimizer, data_spec, decision, scheduler = (
            upgrade_targets(plain(x)) for x in (encoder, extractor, loss, optimizer, data_spec, decision, scheduler))
        hparams = {"encoder": encoder, "extractor": extractor, "loss": loss, "optimizer": optimizer,
                   "data_spec": data_spec}
        if decision is not None:
            hparams["decision"] = decision
        if scheduler is not None:
            hparams["scheduler"] = scheduler
        self.save_hyperparameters(hparams)
        self.student = RelevanceStudent(encoder, extractor, data_spec["label_set"], data_spec["perspectives"])
        # checkpoints of the layout before the RelevanceStudent hold encoder.* / extractor.* / classifier.*
        self.register_load_state_dict_pre_hook(_upgrade_legacy_keys)
        self.label_set = self.student.label_set
        self.perspectives = self.student.perspectives
        self.loss_fn = instantiate(loss)
        if hasattr(self.loss_fn, "set_class_counts"):  # class_weight: balanced terms resolve here
            self.loss_fn.set_class_counts(data_spec.get("train_class_counts"), self.label_set.num_classes)
        if hasattr(self.loss_fn, "set_label_set"):  # rank_kd scores by the data's gains
            self.loss_fn.set_label_set(self.label_set.gains, self.label_set.relevant_up_to)

        latent_dim = int(data_spec.get("latent_dim") or 0)
        wants_latent = "latent" in getattr(self.loss_fn, "active_terms", ())
        z_width = int(self.student.extractor.output_dim)
        self.latent_projection = None
        if wants_latent and latent_dim > 0 and z_width > 0:
            k = len(self.perspectives)
            self.latent_projection = PerspectiveProjection(k, z_width // k, latent_dim)

        has_relevance = bool(data_spec.get("has_relevance", False))
        self.val_metrics = RelevanceMetrics(self.label_set, prefix="val/", has_relevance=has_relevance)
        self.test_metrics = RelevanceMetrics(self.label_set, prefix="test/", has_relevance=has_relevance)
        # the eval loss as a torchmetrics mean: exact over DDP ranks that hold different row counts
        # (self.log(..., sync_dist=True) averages the ranks' integer row counts with an integer division)
        self.eval_loss = nn.ModuleDict({"val": MeanMetric(), "test": MeanMetric()})
        # the decision rule (lrkd.evaluation.decision): argmax keeps no state; a tuned rule stores the eval rows
        self._decision = rule_from_dict(decision, self.label_set)
        self.eval_store = None
        if not isinstance(self._decision, ArgmaxRule):
            c = self.label_set.num_classes
            self.eval_store = nn.ModuleDict({"val": PredictionStore(c), "test": PredictionStore(c)})
        # from_pretrained returns modules in eval mode, and Lightning keeps each module's mode:
        # without this, the encoder's dropout would be off during training.
        self.train()

    # ----------------------------------------------------------------------------------- model
    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part; ``inference`` is what the served student holds (no training heads)."""
        counts = self.student.parameter_counts()
        counts["latent_projection"] = count_parameters(self.latent_projection) if self.latent_projection else 0
        return counts

    def predict_logits(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """Inference path: class logits [B, C] of the standard view (the student's)."""
        return self.student.predict_logits(input_ids, attention_mask, token_type_ids)

    def forward(self, batch: dict, with_augmented_view: bool = False) -> dict:
        h, z, logits = self.student.features(*(batch.get(k) for k in INPUT_KEYS))
        out = {"logits": logits, "pooled": h}
        if z is not None:
            out["latents"] = z
            if self.latent_projection is not None:
                out["latent_pred"] = self.latent_projection(z)
        if with_augmented_view:
            if AUG_PREFIX + "input_ids" not in batch:
                raise KeyError("a loss term needs the reasoning-augmented view, but the batch has none: "
                               "attach a teacher artefact with data.annotations=<dir>")
            out["aug_pooled"], out["aug_logits"] = self._augmented_features(batch, h, logits)
        return out

    def _augmented_features(self, batch: dict, h: torch.Tensor, logits: torch.Tensor):
        """(h⁺ [B, H], logits⁺ [B, C]) of the reasoning-augmented view, encoded for the rows with a
        rationale only (``batch["has_rationale"]``, else ``batch["annotated"]``; every row when both are
        absent) and trimmed to their longest sequence. Rows without a rationale get zeros: every loss
        term that reads the view masks them out."""
        inputs = [batch.get(AUG_PREFIX + k) for k in INPUT_KEYS]
        annotated = batch.get("has_rationale", batch.get("annotated"))
        if annotated is None or bool(annotated.all()):
            aug_h, _, aug_logits = self.student.features(*inputs)
            return aug_h, aug_logits
        rows = annotated.to(torch.bool).nonzero(as_tuple=True)[0]
        aug_h, aug_logits = h.new_zeros(h.shape), logits.new_zeros(logits.shape)
        if rows.numel() == 0:
            return aug_h, aug_logits
        width = int(inputs[1][rows].sum(dim=1).max())  # attention masks are right-padded
        sub_h, _, sub_logits = self.student.features(*(None if t is None else t[rows, :width] for t in inputs))
        return aug_h.index_put((rows,), sub_h), aug_logits.index_put((rows,), sub_logits)

    # -------------------------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self(batch, with_augmented_view=self.loss_fn.needs_augmented_view)
        total, logs = self.loss_fn(out, batch)
        if not torch.isfinite(total):
            parts = ", ".join(f"{k}={float(v):.4g}" for k, v in logs.items())
            raise NonFiniteLossError(f"non-finite training loss {float(total)} at global step {self.global_step}, "
                                     f"epoch {self.current_epoch}, batch {batch_idx} "
                                     f"(pair rows {batch['pair_index'][:8].tolist()}...): {parts}")
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=bs)
        return total

    def _eval_step(self, batch: dict, metrics: RelevanceMetrics, prefix: str) -> None:
        logits = self.predict_logits(*(batch.get(k) for k in INPUT_KEYS))
        labelled = batch["labels"] >= 0
        if labelled.any():
            loss = nn.functional.cross_entropy(logits[labelled], batch["labels"][labelled])
            mean = self.eval_loss[prefix.rstrip("/")]
            mean.update(loss, weight=int(labelled.sum()))
            self.log(f"{prefix}loss", mean, batch_size=int(labelled.sum()))
        probs = logits.softmax(-1)
        metrics.update(probs, batch["labels"], batch["query_index"], batch.get("relevance"))
        if self.eval_store is not None:
            self.eval_store[prefix.rstrip("/")].update(probs, batch["labels"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val/")

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=False)
        self.val_metrics.reset()
        if self.eval_store is not None:
            store = self.eval_store["val"]
            probs, labels = store.compute()
            store.reset()
            if self.trainer.sanity_checking or labels.numel() == 0:
                return
            self._decision = self._decision.fit(probs.cpu().numpy(), labels.cpu().numpy())
            self.log_dict(self._tuned_metrics(probs, labels, "val/tuned/"))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test/")

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_confusion = self.test_metrics.confusion()
        self.test_metrics.reset()
        if self.eval_store is not None:
            store = self.eval_store["test"]
            probs, labels = store.compute()
            store.reset()
            if not self._decision.fitted:
                log.warning("the %s decision rule was never fitted on val: testing it unfitted", self._decision.kind)
            if labels.numel():
                self.log_dict(self._tuned_metrics(probs, labels, "test/tuned/"))

    # ------------------------------------------------------------------------------- decision
    def decision_rule(self):
        """The current decision rule (lrkd.evaluation.decision): ArgmaxRule, or a ThresholdRule (fitted on the
        last validation epoch, or restored from a checkpoint)."""
        return self._decision

    def set_decision_rule(self, rule) -> None:
        """Replace the rule by one of the same kind (e.g. restored from a serving config)."""
        if rule.kind != self._decision.kind:
            raise ValueError(f"this student decides by {self._decision.kind}, not {rule.kind}")
        self._decision = rule

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """probs [B, C] -> grades [B] long, by the current rule."""
        return torch.from_numpy(self._decision.decide(probs.detach().float().cpu().numpy())).to(probs.device)

    def _tuned_metrics(self, probs: torch.Tensor, labels: torch.Tensor, prefix: str) -> dict:
        preds = torch.from_numpy(self._decision.decide(probs.cpu().numpy()))
        out = decision_metrics(preds, labels.cpu(), self.label_set, prefix)
        return {k: v.to(self.device) for k, v in out.items()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if not isinstance(self._decision, ArgmaxRule):
            checkpoint[DECISION_CHECKPOINT_KEY] = self._decision.to_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get(DECISION_CHECKPOINT_KEY)
        if saved is not None and not isinstance(self._decision, ArgmaxRule):
            self._decision = rule_from_dict({**(self.hparams.get("decision") or {}), **saved}, self.label_set)

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.predict_logits(*(batch.get(k) for k in INPUT_KEYS)).softmax(-1)

    # ------------------------------------------------------------------------------- optimizer
    def _total_training_steps(self) -> int:
        """Optimizer steps of the whole fit, for the LR schedule (:func:`lrkd.lightning.optim.total_training_steps`)."""
        return total_training_steps(self.trainer)

    def configure_optimizers(self):
        """The ``optimizer`` partial over parameter groups (the encoder at ``lr``, the heads at
        ``head_lr``; lrkd.lightning.optim) and the ``scheduler`` partial, stepped every optimizer step."""
        def lr_of(name: str, extra: dict) -> float | None:
            return None if name.startswith("student.encoder.") else extra.get("head_lr")

        return configure(self, self.named_parameters(), self.hparams.optimizer, self.hparams.get("scheduler"),
                         self._total_training_steps(), lr_of)
